//! Reading sysctl files as they are: /proc/sys/net shows the network
//! namespace of the thread that opens it, so a thread that stepped into a
//! namespace reads that namespace's values. Reads are not events.

use std::path::{Path, PathBuf};

/// Whether two sysctl values are the same as the kernel prints them back:
/// words separated by any white space, numbers in any form a handler
/// accepts (`010` and `10`).
pub fn same_value(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split_whitespace().collect(), b.split_whitespace().collect());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x == y || matches!((x.parse::<i64>(), y.parse::<i64>()), (Ok(p), Ok(q)) if p == q))
}

/// Where the network sysctls live.
pub const NET_ROOT: &str = "/proc/sys/net";

/// Every readable file under `root` (recursively), as (path relative to
/// /proc/sys, or to `root` elsewhere; raw contents). Files that refuse reading (write-only ones
/// such as `net/ipv4/route/flush`, unset secrets) are left out.
pub fn read_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => {
                    if let Ok(value) = std::fs::read(&path) {
                        let relative = path.strip_prefix("/proc/sys").or_else(|_| path.strip_prefix(root));
                        out.push((relative.unwrap_or(&path).to_path_buf(), value));
                    }
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_network_sysctls_of_its_namespace() {
        let tree = read_tree(Path::new(NET_ROOT));
        let forward = tree.iter().find(|(p, _)| p == Path::new("net/ipv4/ip_forward")).expect("ip_forward");
        assert_eq!(forward.1, std::fs::read("/proc/sys/net/ipv4/ip_forward").unwrap());
        assert!(tree.iter().all(|(p, _)| p.starts_with("net")), "paths relative to /proc/sys");
        assert!(!tree.iter().any(|(p, _)| p == Path::new("net/ipv4/route/flush")), "write-only files are left out");
    }
}
