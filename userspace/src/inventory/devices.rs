//! The network devices of a namespace, listed with an rtnetlink dump made
//! from a short-lived thread that enters the namespace. The agent filters
//! its own threads' entries out of the event stream.

use std::{os::fd::AsRawFd, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    pub ifindex: u32,
    /// Link kind (`veth`, `bridge`, ...); absent for devices without one (`lo`, physical NICs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// Devices of the namespace behind an nsfs path.
pub fn list(ns_path: &Path) -> std::io::Result<Vec<Device>> {
    let ns = std::fs::File::open(ns_path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: only this short-lived thread changes namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                dump_links()
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("device listing thread panicked")))
    })
}

fn dump_links() -> std::io::Result<Vec<Device>> {
    // SAFETY: plain socket call; the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd we own.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let mut request = [0u8; 32];
    request[0..4].copy_from_slice(&32u32.to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    request[16] = libc::AF_UNSPEC as u8;
    // SAFETY: sending our buffer on our socket.
    if unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut devices = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into our buffer.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if parse_messages(&buf[..n as usize], &mut devices)? {
            return Ok(devices);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parses one recv() worth of messages; true at the end of the dump.
pub fn parse_messages(mut data: &[u8], devices: &mut Vec<Device>) -> std::io::Result<bool> {
    while data.len() >= 16 {
        let len = u32_at(data, 0) as usize;
        let kind = u16_at(data, 4);
        if len < 16 || len > data.len() {
            return Err(std::io::Error::other("truncated netlink message"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= 20 { -(u32_at(data, 16) as i32) } else { 0 };
                return Err(std::io::Error::from_raw_os_error(errno));
            }
            RTM_NEWLINK if len >= 32 => devices.push(parse_link(&data[16..len])),
            _ => {}
        }
        data = &data[align4(len).min(data.len())..];
    }
    Ok(false)
}

/// An ifinfomsg and its attributes.
fn parse_link(msg: &[u8]) -> Device {
    let ifindex = u32_at(msg, 4);
    let mut device = Device { name: String::new(), ifindex, kind: None };
    for (kind, value) in attributes(&msg[16..]) {
        match kind {
            IFLA_IFNAME => device.name = c_string(value),
            IFLA_LINKINFO => {
                device.kind = attributes(value).find(|(k, _)| *k == IFLA_INFO_KIND).map(|(_, v)| c_string(v));
            }
            _ => {}
        }
    }
    device
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16_at(data, 0) as usize;
        if len < 4 || len > data.len() {
            return None;
        }
        let item = (u16_at(data, 2) & NLA_TYPE_MASK, &data[4..len]);
        data = &data[align4(len).min(data.len())..];
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
    }

    fn link(ifindex: u32, name: &str, kind: Option<&str>) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, format!("{name}\0").as_bytes()));
        if let Some(kind) = kind {
            body.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, kind.as_bytes())));
        }
        message(RTM_NEWLINK, &body)
    }

    #[test]
    fn parses_a_link_dump() {
        let mut data = link(1, "lo", None);
        data.extend(link(7, "veth-a", Some("veth")));
        let mut devices = Vec::new();
        assert!(!parse_messages(&data, &mut devices).unwrap());
        assert!(parse_messages(&message(NLMSG_DONE, &[0; 4]), &mut devices).unwrap());
        assert_eq!(
            devices,
            [
                Device { name: "lo".into(), ifindex: 1, kind: None },
                Device { name: "veth-a".into(), ifindex: 7, kind: Some("veth".into()) },
            ]
        );
    }

    #[test]
    fn reports_netlink_errors_and_truncation() {
        let mut devices = Vec::new();
        let err = parse_messages(&message(NLMSG_ERROR, &(-1i32 as u32).to_ne_bytes()), &mut devices).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(1));
        let mut short = link(1, "lo", None);
        short.truncate(20);
        assert!(parse_messages(&short, &mut devices).is_err());
    }

    #[test]
    fn lists_the_devices_of_our_own_namespace() {
        let devices = list(Path::new("/proc/self/ns/net")).unwrap();
        assert!(devices.iter().any(|d| d.name == "lo" && d.ifindex == 1));
    }
}
