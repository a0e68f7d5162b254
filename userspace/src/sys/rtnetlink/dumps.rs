//! What a namespace holds, dumped over a request socket made by the
//! calling thread (so in that thread's namespace): links with their flags
//! and operational state, addresses, routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    attributes, error_of, messages, u32_at, Link, Requests, NLMSG_DONE, NLMSG_ERROR, RTM_GETLINK, RTM_NEWLINK,
};

pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_OPERSTATE: u16 = 16;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_TABLE: u16 = 15;
/// The table `ip route` shows.
pub const RT_TABLE_MAIN: u32 = 254;
const RTM_F_CLONED: u32 = 0x200;

/// `ifi_flags` bits with the names iproute2 prints, in its order.
const FLAG_NAMES: &[(u32, &str)] = &[
    (0x8, "LOOPBACK"),
    (0x2, "BROADCAST"),
    (0x10, "POINTOPOINT"),
    (0x1000, "MULTICAST"),
    (0x80, "NOARP"),
    (0x200, "ALLMULTI"),
    (0x100, "PROMISC"),
    (0x20, "NOTRAILERS"),
    (0x4, "DEBUG"),
    (0x8000, "DYNAMIC"),
    (0x4000, "AUTOMEDIA"),
    (0x2000, "PORTSEL"),
    (0x400, "MASTER"),
    (0x800, "SLAVE"),
    (0x1, "UP"),
    (0x10000, "LOWER_UP"),
    (0x20000, "DORMANT"),
    (0x40000, "ECHO"),
];
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;

/// A link with what `ip link` shows of its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDetails {
    pub link: Link,
    /// `ifi_flags` (IFF_*).
    pub flags: u32,
    /// IFLA_OPERSTATE (RFC 2863), 0 (unknown) when absent.
    pub operstate: u8,
    pub mtu: Option<u32>,
    /// IFLA_ADDRESS as `aa:bb:...`, when the device has one.
    pub mac: Option<String>,
}

impl LinkDetails {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let link = Link::parse(payload)?;
        let mut details = Self { link, flags: u32_at(payload, 8), operstate: 0, mtu: None, mac: None };
        for (kind, value) in attributes(&payload[16..]) {
            match kind {
                IFLA_OPERSTATE if !value.is_empty() => details.operstate = value[0],
                IFLA_MTU if value.len() >= 4 => details.mtu = Some(u32_at(value, 0)),
                IFLA_ADDRESS if !value.is_empty() => {
                    details.mac = Some(value.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"));
                }
                _ => {}
            }
        }
        Some(details)
    }

    /// The operational state as `ip link` names it.
    pub fn state(&self) -> &'static str {
        match self.operstate {
            1 => "NOTPRESENT",
            2 => "DOWN",
            3 => "LOWERLAYERDOWN",
            4 => "TESTING",
            5 => "DORMANT",
            6 => "UP",
            _ => "UNKNOWN",
        }
    }

    /// The flags as `ip link` prints them: NO-CARRIER for a device that is
    /// up without carrier, then each set flag (RUNNING is not shown).
    pub fn flag_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.flags & IFF_UP != 0 && self.flags & IFF_RUNNING == 0 {
            names.push("NO-CARRIER");
        }
        names.extend(FLAG_NAMES.iter().filter(|(bit, _)| self.flags & bit != 0).map(|(_, name)| *name));
        names
    }
}

/// One address of a device (RTM_NEWADDR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Address {
    /// An ifaddrmsg and its attributes: the local address where there is
    /// one (IPv4; on point-to-point links IFA_ADDRESS is the peer), else IFA_ADDRESS.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 8 {
            return None;
        }
        let (family, prefix_len, ifindex) = (payload[0], payload[1], u32_at(payload, 4));
        let ip = |value: &[u8]| -> Option<IpAddr> {
            match (family as i32, value.len()) {
                (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(value[0], value[1], value[2], value[3]))),
                (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?))),
                _ => None,
            }
        };
        let (mut local, mut address) = (None, None);
        for (kind, value) in attributes(&payload[8..]) {
            match kind {
                IFA_LOCAL => local = ip(value),
                IFA_ADDRESS => address = ip(value),
                _ => {}
            }
        }
        Some(Self { ifindex, address: local.or(address)?, prefix_len })
    }

    /// `10.0.0.1/24`, as `ip addr` shows it.
    pub fn text(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

/// One route (RTM_NEWROUTE): what counting them needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub family: u8,
    pub table: u32,
    /// A cached clone (`ip route show` leaves them out).
    pub cloned: bool,
}

impl Route {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 12 {
            return None;
        }
        let mut route =
            Self { family: payload[0], table: payload[4] as u32, cloned: u32_at(payload, 8) & RTM_F_CLONED != 0 };
        for (kind, value) in attributes(&payload[12..]) {
            if kind == RTA_TABLE && value.len() >= 4 {
                route.table = u32_at(value, 0);
            }
        }
        Some(route)
    }
}

/// Dumps `kind` and parses every answer of type `want`.
fn dump<T>(kind: u16, body: &[u8], want: u16, parse: impl Fn(&[u8]) -> Option<T>) -> std::io::Result<Vec<T>> {
    let mut out = Vec::new();
    Requests::open()?.dump(kind, body, |data| {
        for message in messages(data) {
            let message = message?;
            match message.kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => return Err(std::io::Error::from_raw_os_error(error_of(&message))),
                k if k == want => out.extend(parse(message.payload)),
                _ => {}
            }
        }
        Ok(false)
    })?;
    Ok(out)
}

/// Every link of the calling thread's namespace.
pub fn links() -> std::io::Result<Vec<LinkDetails>> {
    dump(RTM_GETLINK, &[0; 16], RTM_NEWLINK, LinkDetails::parse)
}

/// Every address (IPv4 and IPv6) of the calling thread's namespace.
pub fn addresses() -> std::io::Result<Vec<Address>> {
    dump(RTM_GETADDR, &[0; 8], RTM_NEWADDR, Address::parse)
}

/// Every route of every table and family of the calling thread's namespace.
pub fn routes() -> std::io::Result<Vec<Route>> {
    dump(RTM_GETROUTE, &[0; 12], RTM_NEWROUTE, Route::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        super::super::attr(out, kind, value);
    }

    #[test]
    fn parses_link_state_and_flags() {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&7i32.to_ne_bytes());
        body[8..12].copy_from_slice(&(0x1u32 | 0x2 | 0x1000).to_ne_bytes());
        attr(&mut body, 3, b"veth0\0");
        attr(&mut body, IFLA_OPERSTATE, &[3]);
        attr(&mut body, IFLA_MTU, &1500u32.to_ne_bytes());
        attr(&mut body, IFLA_ADDRESS, &[0x02, 0, 0, 0, 0, 0xab]);
        let details = LinkDetails::parse(&body).unwrap();
        assert_eq!((details.link.ifindex, details.link.name.as_str()), (7, "veth0"));
        assert_eq!(details.state(), "LOWERLAYERDOWN");
        assert_eq!(details.flag_names(), ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"]);
        assert_eq!((details.mtu, details.mac.as_deref()), (Some(1500), Some("02:00:00:00:00:ab")));
        let lo = LinkDetails { flags: 0x8 | 0x1 | 0x40 | 0x10000, operstate: 0, ..details };
        assert_eq!((lo.state(), lo.flag_names()), ("UNKNOWN", vec!["LOOPBACK", "UP", "LOWER_UP"]));
    }

    #[test]
    fn parses_addresses_and_routes() {
        let mut v4 = vec![libc::AF_INET as u8, 24, 0, 0];
        v4.extend_from_slice(&3u32.to_ne_bytes());
        attr(&mut v4, IFA_ADDRESS, &[10, 0, 0, 9]);
        attr(&mut v4, IFA_LOCAL, &[10, 0, 0, 1]);
        let address = Address::parse(&v4).unwrap();
        assert_eq!((address.ifindex, address.text()), (3, "10.0.0.1/24".to_owned()));
        let mut v6 = vec![libc::AF_INET6 as u8, 128, 0, 0];
        v6.extend_from_slice(&1u32.to_ne_bytes());
        attr(&mut v6, IFA_ADDRESS, &Ipv6Addr::LOCALHOST.octets());
        assert_eq!(Address::parse(&v6).unwrap().text(), "::1/128");

        let mut route = vec![libc::AF_INET6 as u8, 64, 0, 0, 252, 2, 0, 1];
        route.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut route, RTA_TABLE, &RT_TABLE_MAIN.to_ne_bytes());
        assert_eq!(Route::parse(&route).unwrap(), Route { family: libc::AF_INET6 as u8, table: 254, cloned: false });
    }

    #[test]
    fn dumps_its_own_namespace() {
        let links = links().unwrap();
        let lo = links.iter().find(|l| l.link.ifindex == 1).expect("lo");
        assert!(lo.flag_names().contains(&"LOOPBACK"));
        let addresses = addresses().unwrap();
        if lo.flags & IFF_UP != 0 {
            assert!(addresses.iter().any(|a| a.ifindex == 1 && a.text() == "127.0.0.1/8"), "{addresses:?}");
        }
        assert!(!routes().unwrap().is_empty());
    }
}
