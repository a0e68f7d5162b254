//! What an attacker with root can do to an audit log without the sealing key.

/// The hash chain recomputed over `lines` with plain SHA-256, as anyone can.
pub fn rechain(lines: &[String]) -> Vec<String> {
    let mut prev = nstrail::audit::GENESIS.to_owned();
    lines
        .iter()
        .map(|line| {
            let (json, _, _) = nstrail::audit::split_line(line).expect("chained line");
            let (line, hash) = nstrail::audit::chained_line(&prev, &json);
            prev = hash;
            line.trim_end().to_owned()
        })
        .collect()
}
