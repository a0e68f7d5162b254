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

use crate::rtnetlink::{self, Link, NLMSG_DONE, NLMSG_ERROR, RTM_GETLINK, RTM_NEWLINK};

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
    let mut devices = Vec::new();
    // The socket is made by this thread, so in the namespace it entered.
    rtnetlink::Requests::open()?.dump(RTM_GETLINK, &[0; 16], |data| parse_messages(data, &mut devices))?;
    Ok(devices)
}

/// Parses one recv() worth of messages; true at the end of the dump.
pub fn parse_messages(data: &[u8], devices: &mut Vec<Device>) -> std::io::Result<bool> {
    for message in rtnetlink::messages(data) {
        let message = message?;
        match message.kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => return Err(std::io::Error::from_raw_os_error(rtnetlink::error_of(&message))),
            RTM_NEWLINK => {
                if let Some(link) = Link::parse(message.payload) {
                    devices.push(Device { name: link.name, ifindex: link.ifindex as u32, kind: link.kind });
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rtnetlink::tests::link_message;

    fn link(ifindex: u32, name: &str, kind: Option<&str>) -> Vec<u8> {
        link_message(RTM_NEWLINK, ifindex as i32, 0, name, &[], kind)
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(body);
        out
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
