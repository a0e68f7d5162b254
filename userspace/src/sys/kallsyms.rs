//! /proc/kallsyms: addresses of kernel functions.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KallsymsError {
    #[error("cannot read /proc/kallsyms: {0}")]
    Read(String),
    #[error("/proc/kallsyms has no symbol {0}")]
    Missing(&'static str),
    #[error("/proc/kallsyms hides addresses (kernel.kptr_restrict); run as root with kptr_restrict <= 1")]
    Hidden,
}

/// The running kernel's symbol table, as text.
pub fn read() -> Result<String, KallsymsError> {
    std::fs::read_to_string("/proc/kallsyms").map_err(|e| KallsymsError::Read(e.to_string()))
}

/// Address of a text symbol of the kernel proper (not of a module) in
/// kallsyms-formatted text.
pub fn find_text_symbol(kallsyms: &str, name: &'static str) -> Result<u64, KallsymsError> {
    for line in kallsyms.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // A module symbol has a 4th field ("[module]").
        if sym != name || !matches!(kind, "t" | "T") || fields.next().is_some() {
            continue;
        }
        let addr = u64::from_str_radix(addr, 16).map_err(|_| KallsymsError::Missing(name))?;
        return if addr == 0 { Err(KallsymsError::Hidden) } else { Ok(addr) };
    }
    Err(KallsymsError::Missing(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cleanup_net() {
        let text =
            "ffffffff81e4f000 T something\nffffffff81e4fa40 t cleanup_net\nffffffffc0000000 t cleanup_net\t[mod]\n";
        assert_eq!(find_text_symbol(text, "cleanup_net"), Ok(0xffffffff81e4fa40));
        assert_eq!(find_text_symbol(text, "other"), Err(KallsymsError::Missing("other")));
        assert_eq!(find_text_symbol("0000000000000000 t cleanup_net\n", "cleanup_net"), Err(KallsymsError::Hidden));
    }
}
