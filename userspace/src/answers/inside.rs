//! What a namespace holds, read from inside it by the calling thread: it
//! steps in with `sys::nsfs::run_inside` and back, holding the namespace's
//! fd only for that while. The agent does this on a worker thread (its own
//! threads' entries are not events); `--offline` the CLI does it itself.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::Path,
    sync::{Arc, OnceLock},
};

use serde::{Deserialize, Serialize};

use crate::{
    sensors::sysctl_write::value_text::{dotted_name, value_text},
    sys::{nsfs, proc, rtnetlink::dumps, sysctl},
};

/// A device with its state and addresses, as `ip addr` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub name: String,
    pub ifindex: u32,
    /// Link kind (`veth`, `bridge`, ...); absent for `lo` and physical NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Operational state: `UP`, `DOWN`, `LOWERLAYERDOWN`, `UNKNOWN` (`lo`), ...
    pub state: String,
    /// `UP`, `LOWER_UP`, `NO-CARRIER`, `BROADCAST`, ... as `ip link` prints them.
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `10.0.0.1/24`, `fe80::1/64`, ...
    pub addresses: Vec<String>,
}

/// Routes of the main table (what `ip route` and `ip -6 route` list).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounts {
    pub ipv4: u32,
    pub ipv6: u32,
}

/// TCP sockets in LISTEN (`ss -lt`); an absent family's table could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenCounts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp6: Option<u32>,
}

/// Sysctl name (dotted, as sysctl(8) prints it) → value (trimmed).
pub type Sysctls = BTreeMap<String, String>;

/// What was read inside.
#[derive(Debug, Clone, Default)]
pub struct Inside {
    pub devices: Vec<DeviceState>,
    pub routes: Option<RouteCounts>,
    pub listening: ListenCounts,
    pub sysctls: Sysctls,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// What to read.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// Devices, addresses, routes, listening sockets.
    pub details: bool,
    pub sysctls: bool,
}

/// Steps into the namespace at `path` (checked to be namespace `id`, as
/// paths lead elsewhere once pids and mounts change), reads, steps back.
pub fn look(path: &Path, id: u64, want: Want) -> Result<Inside, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match nsfs::ns_id_of(&file) {
        Ok(found) if found == id => {}
        Ok(_) => return Err(format!("{} leads to another namespace now", path.display())),
        Err(e) => return Err(format!("cannot read the id of {}: {e}", path.display())),
    }
    let inside = nsfs::run_inside(&file, || read_here(want)).map_err(|e| format!("cannot step into it: {e}"))?;
    drop(file);
    Ok(inside)
}

/// Reads in the calling thread's namespace.
pub fn read_here(want: Want) -> Inside {
    let mut inside = Inside::default();
    if want.details {
        match dumps::links() {
            Ok(links) => {
                let addresses = dumps::addresses().unwrap_or_else(|e| {
                    inside.problems.push(format!("addresses: {e}"));
                    Vec::new()
                });
                inside.devices = links
                    .into_iter()
                    .map(|l| DeviceState {
                        ifindex: l.link.ifindex as u32,
                        state: l.state().to_owned(),
                        flags: l.flag_names().into_iter().map(str::to_owned).collect(),
                        mtu: l.mtu,
                        mac: l.mac.clone(),
                        addresses: addresses
                            .iter()
                            .filter(|a| a.ifindex == l.link.ifindex as u32)
                            .map(|a| a.text())
                            .collect(),
                        name: l.link.name,
                        kind: l.link.kind,
                    })
                    .collect();
            }
            Err(e) => inside.problems.push(format!("devices: {e}")),
        }
        match dumps::routes() {
            Ok(routes) => {
                let main = |family: i32| {
                    routes
                        .iter()
                        .filter(|r| r.family as i32 == family && r.table == dumps::RT_TABLE_MAIN && !r.cloned)
                        .count() as u32
                };
                inside.routes = Some(RouteCounts { ipv4: main(libc::AF_INET), ipv6: main(libc::AF_INET6) });
            }
            Err(e) => inside.problems.push(format!("routes: {e}")),
        }
        let (tcp, tcp6) = proc::tcp_listening_here();
        inside.listening = ListenCounts { tcp, tcp6 };
    }
    if want.sysctls {
        inside.sysctls = sysctl_values(sysctl::read_tree(Path::new(sysctl::NET_ROOT)));
    }
    inside
}

/// The tree's files as sysctl(8) names and trimmed values.
pub fn sysctl_values(tree: Vec<(std::path::PathBuf, Vec<u8>)>) -> Sysctls {
    use std::os::unix::ffi::OsStrExt;
    tree.into_iter().map(|(path, value)| (dotted_name(path.as_os_str().as_bytes()), value_text(&value))).collect()
}

/// The host's network sysctls: those of pid 1's namespace (the calling
/// thread's own when pid 1's cannot be opened, or is the same).
pub fn host_sysctls() -> Sysctls {
    let read = || sysctl_values(sysctl::read_tree(Path::new(sysctl::NET_ROOT)));
    let inode = |p: &str| std::fs::metadata(p).ok().map(|m| m.ino());
    match std::fs::File::open("/proc/1/ns/net") {
        Ok(file) if inode("/proc/1/ns/net") != inode("/proc/thread-self/ns/net") => {
            nsfs::run_inside(&file, read).unwrap_or_else(|_| read())
        }
        _ => read(),
    }
}

/// What a new namespace gets on this kernel: learned once, from a
/// namespace made for it on a short-lived thread (the lifecycle sensor
/// does not report the agent's own creates, nor their destroys), then kept.
pub fn new_namespace_defaults() -> Result<Arc<Sysctls>, String> {
    static DEFAULTS: OnceLock<Result<Arc<Sysctls>, String>> = OnceLock::new();
    DEFAULTS
        .get_or_init(|| {
            nsfs::run_in_new(|| sysctl_values(sysctl::read_tree(Path::new(sysctl::NET_ROOT))))
                .map(Arc::new)
                .map_err(|e| format!("cannot make a namespace to learn the defaults: {e}"))
        })
        .clone()
}

/// The default a new namespace has for `name`: the entry itself, or for a
/// device's entry (`net.ipv4.conf.veth0.rp_filter`) the namespace's
/// `default` one, from which new devices take their values.
pub fn default_for<'a>(defaults: &'a Sysctls, name: &str) -> Option<&'a str> {
    if let Some(value) = defaults.get(name) {
        return Some(value);
    }
    let parts: Vec<&str> = name.splitn(5, '.').collect();
    match parts.as_slice() {
        ["net", "ipv4" | "ipv6", "conf" | "neigh", _device, key] => {
            defaults.get(&format!("{}.{}.{}.default.{key}", parts[0], parts[1], parts[2])).map(String::as_str)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_namespace_differs_from_ours_in_what_it_holds() {
        let defaults = new_namespace_defaults().unwrap();
        assert!(defaults.contains_key("net.ipv4.ip_forward"));
        assert!(Arc::ptr_eq(&defaults, &new_namespace_defaults().unwrap()), "learned once");
        let fresh = nsfs::run_in_new(|| read_here(Want { details: true, sysctls: false })).unwrap();
        let names: Vec<_> = fresh.devices.iter().map(|d| (d.name.as_str(), d.state.as_str())).collect();
        assert_eq!(names, [("lo", "DOWN")], "a new namespace has a loopback device, down");
        assert_eq!(fresh.routes, Some(RouteCounts { ipv4: 0, ipv6: 0 }));
        assert_eq!(fresh.listening, ListenCounts { tcp: Some(0), tcp6: Some(0) });
        assert!(fresh.problems.is_empty(), "{:?}", fresh.problems);
    }

    #[test]
    fn devices_take_the_defaults_of_the_default_entry() {
        let defaults: Sysctls = [("net.ipv4.conf.default.rp_filter".to_owned(), "2".to_owned())].into_iter().collect();
        assert_eq!(default_for(&defaults, "net.ipv4.conf.veth0.rp_filter"), Some("2"));
        assert_eq!(default_for(&defaults, "net.ipv4.conf.default.rp_filter"), Some("2"));
        assert_eq!(default_for(&defaults, "net.core.somaxconn"), None);
    }
}
