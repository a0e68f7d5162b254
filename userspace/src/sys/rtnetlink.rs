//! Just enough rtnetlink for nstrail: parsing link and nsid messages, a
//! request socket (nsid look-ups and assignment, link look-ups), and the
//! listener that hears link notifications of every namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub mod dumps;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWNSID: u16 = 88;
pub const RTM_DELNSID: u16 = 89;
pub const RTM_GETNSID: u16 = 90;

const IFLA_IFNAME: u16 = 3;
pub const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_TARGET_NETNSID: u16 = 46;
const IFLA_EXT_MASK: u16 = 29;
/// `RTEXT_FILTER_SKIP_STATS`: no counters in link dumps (the largest part
/// of each message, and what the kernel works hardest to fill in).
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
pub const IFLA_NEW_NETNSID: u16 = 45;
pub const IFLA_NEW_IFINDEX: u16 = 49;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_LISTEN_ALL_NSID: libc::c_int = 8;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NSID: u32 = 28;
/// Change mask of the notification the kernel sends when a device appears
/// in a namespace (registered, or arrived by a move).
pub const IFI_CHANGE_ALL: u32 = u32::MAX;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_of(value: &[u8]) -> Option<i32> {
    (value.len() >= 4).then(|| u32_at(value, 0) as i32)
}

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message: its header fields and payload.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub kind: u16,
    /// `nlmsg_len`, header included.
    pub len: u32,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The messages of one datagram; an error for a length that runs past it.
pub fn messages(mut data: &[u8]) -> impl Iterator<Item = std::io::Result<Message<'_>>> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32_at(data, 0) as usize;
        if len < 16 || len > data.len() {
            data = &[];
            return Some(Err(std::io::Error::other("truncated netlink message")));
        }
        let message = Message { kind: u16_at(data, 4), len: len as u32, seq: u32_at(data, 8), payload: &data[16..len] };
        data = &data[align4(len).min(data.len())..];
        Some(Ok(message))
    })
}

/// The errno of an NLMSG_ERROR message (0 for an acknowledgement).
pub fn error_of(message: &Message<'_>) -> i32 {
    if message.payload.len() >= 4 {
        -(u32_at(message.payload, 0) as i32)
    } else {
        0
    }
}

/// Netlink attributes (type without flags, value).
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// An RTM_NEWLINK / RTM_DELLINK message: an ifinfomsg and the attributes
/// nstrail uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub ifindex: i32,
    /// `ifi_change`: [`IFI_CHANGE_ALL`] when the device just appeared.
    pub change: u32,
    pub name: String,
    /// `veth`, `bridge`, ...; absent for `lo` and physical devices.
    pub kind: Option<String>,
    /// IFLA_LINK: the peer's ifindex (veth), the lower device's.
    pub link: Option<i32>,
    /// IFLA_LINK_NETNSID: the namespace of `link`, as an nsid of the
    /// message's namespace.
    pub link_netnsid: Option<i32>,
    /// IFLA_NEW_NETNSID of a move's RTM_DELLINK: the destination, as an
    /// nsid of the source namespace.
    pub new_netnsid: Option<i32>,
    /// IFLA_NEW_IFINDEX of a move's RTM_DELLINK.
    pub new_ifindex: Option<i32>,
}

impl Link {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 16 {
            return None;
        }
        let mut link = Link { ifindex: u32_at(payload, 4) as i32, change: u32_at(payload, 12), ..Default::default() };
        for (kind, value) in attributes(&payload[16..]) {
            match kind {
                IFLA_IFNAME => link.name = c_string(value),
                IFLA_LINKINFO => {
                    link.kind = attributes(value).find(|(k, _)| *k == IFLA_INFO_KIND).map(|(_, v)| c_string(v));
                }
                IFLA_LINK => link.link = i32_of(value),
                IFLA_LINK_NETNSID => link.link_netnsid = i32_of(value),
                IFLA_NEW_NETNSID => link.new_netnsid = i32_of(value),
                IFLA_NEW_IFINDEX => link.new_ifindex = i32_of(value),
                _ => {}
            }
        }
        Some(link)
    }
}

/// The NETNSA_NSID of an RTM_NEWNSID / RTM_DELNSID message.
pub fn nsid_of(payload: &[u8]) -> Option<i32> {
    // struct rtgenmsg is padded to 4 bytes.
    attributes(payload.get(4..)?).find(|(k, _)| *k == NETNSA_NSID).and_then(|(_, v)| i32_of(v))
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

fn request(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | libc::NLM_F_REQUEST as u16).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

fn netlink_socket(nonblocking: bool) -> std::io::Result<OwnedFd> {
    let flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket call; the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, flags, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn set_int_option(fd: RawFd, level: libc::c_int, option: libc::c_int, value: u32) -> std::io::Result<()> {
    // SAFETY: passing a pointer to a local u32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Longest wait for the kernel's answer to one request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// A blocking rtnetlink socket for requests, in the agent's namespace.
pub struct Requests {
    socket: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Requests {
    pub fn open() -> std::io::Result<Self> {
        let socket = netlink_socket(false)?;
        // Answers come at once; a lost one must not block the agent. (`as _`:
        // libc deprecates naming suseconds_t on musl, whose width will change.)
        let timeout = libc::timeval { tv_sec: 0, tv_usec: REQUEST_TIMEOUT.as_micros() as _ };
        // SAFETY: a timeval by pointer and size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let _ = set_int_option(socket.as_raw_fd(), SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1);
        Ok(Self { socket, seq: 0, buf: vec![0; 64 * 1024] })
    }

    /// Sends one request and returns the payload of the answer of `want`
    /// type (None for a plain acknowledgement), waiting at most
    /// [`REQUEST_TIMEOUT`] in all.
    fn ask(&mut self, kind: u16, flags: u16, body: &[u8], want: u16) -> std::io::Result<Option<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        // Without NLM_F_ACK a successful change gets no answer at all.
        let flags = if want == NLMSG_ERROR { flags | libc::NLM_F_ACK as u16 } else { flags };
        let message = request(kind, flags, seq, body);
        // SAFETY: sending our buffer on our socket.
        if unsafe { libc::send(self.socket.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            // SAFETY: receiving into our buffer.
            let n = unsafe { libc::recv(self.socket.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted && std::time::Instant::now() < deadline {
                    continue;
                }
                return Err(err);
            }
            for message in messages(&self.buf[..n as usize]) {
                let message = message?;
                if message.seq != seq {
                    continue; // a late answer to an earlier, timed-out request
                }
                if message.kind == NLMSG_ERROR {
                    return match error_of(&message) {
                        0 => Ok(None),
                        errno => Err(std::io::Error::from_raw_os_error(errno)),
                    };
                }
                if message.kind == want {
                    return Ok(Some(message.payload.to_vec()));
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
            }
        }
    }

    /// A dump request: hands every datagram of the answer to `take` until
    /// it returns true (the end of the dump).
    pub fn dump(
        &mut self,
        kind: u16,
        body: &[u8],
        mut take: impl FnMut(&[u8]) -> std::io::Result<bool>,
    ) -> std::io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let message = request(kind, libc::NLM_F_DUMP as u16, self.seq, body);
        // SAFETY: sending our buffer on our socket.
        if unsafe { libc::send(self.socket.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            // SAFETY: receiving into our buffer.
            let n = unsafe { libc::recv(self.socket.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if take(&self.buf[..n as usize])? {
                return Ok(());
            }
        }
    }

    /// The nsid the agent's namespace has for the namespace behind `ns`
    /// (an nsfs fd), if any.
    pub fn nsid_of_fd(&mut self, ns: RawFd) -> std::io::Result<Option<i32>> {
        let mut body = vec![0u8; 4];
        attr(&mut body, NETNSA_FD, &(ns as u32).to_ne_bytes());
        let answer = self.ask(RTM_GETNSID, 0, &body, RTM_NEWNSID)?;
        Ok(answer.as_deref().and_then(nsid_of).filter(|id| *id >= 0))
    }

    /// Gives the namespace behind `ns` an nsid in the agent's namespace (the
    /// kernel picks it) unless it has one; returns it.
    pub fn ensure_nsid(&mut self, ns: RawFd) -> std::io::Result<i32> {
        if let Some(id) = self.nsid_of_fd(ns)? {
            return Ok(id);
        }
        let mut body = vec![0u8; 4];
        attr(&mut body, NETNSA_FD, &(ns as u32).to_ne_bytes());
        attr(&mut body, NETNSA_NSID, &(-1i32).to_ne_bytes());
        // EEXIST: someone else (the kernel, for a move) assigned one meanwhile.
        // Any other failure may still have assigned one (a late answer).
        let asked = self.ask(RTM_NEWNSID, 0, &body, NLMSG_ERROR);
        match self.nsid_of_fd(ns)? {
            Some(id) => Ok(id),
            None => Err(asked.err().unwrap_or_else(|| std::io::Error::other("the kernel assigned no nsid"))),
        }
    }

    /// Gives the namespace behind `ns` (an nsfs fd) the nsid `nsid` here.
    /// EEXIST when it has one already or `nsid` is taken.
    pub fn new_nsid(&mut self, ns: RawFd, nsid: i32) -> std::io::Result<()> {
        let mut body = vec![0u8; 4];
        attr(&mut body, NETNSA_FD, &(ns as u32).to_ne_bytes());
        attr(&mut body, NETNSA_NSID, &nsid.to_ne_bytes());
        self.ask(RTM_NEWNSID, 0, &body, NLMSG_ERROR).map(|_| ())
    }

    /// Dumps the devices of the namespace with `nsid` (an nsid of this
    /// socket's namespace), handing each datagram to `take` as [`dump`] does.
    ///
    /// [`dump`]: Self::dump
    pub fn dump_links_in(
        &mut self,
        nsid: i32,
        take: impl FnMut(&[u8]) -> std::io::Result<bool>,
    ) -> std::io::Result<()> {
        let mut body = vec![0u8; 16];
        attr(&mut body, IFLA_TARGET_NETNSID, &nsid.to_ne_bytes());
        attr(&mut body, IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
        self.dump(RTM_GETLINK, &body, take)
    }

    /// Dumps the devices of the socket's own namespace, without counters.
    pub fn dump_links(&mut self, take: impl FnMut(&[u8]) -> std::io::Result<bool>) -> std::io::Result<()> {
        let mut body = vec![0u8; 16];
        attr(&mut body, IFLA_EXT_MASK, &RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
        self.dump(RTM_GETLINK, &body, take)
    }

    /// One device of the namespace with `nsid` (an nsid of the agent's namespace).
    pub fn link_in(&mut self, nsid: i32, ifindex: i32) -> std::io::Result<Option<Link>> {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        attr(&mut body, IFLA_TARGET_NETNSID, &nsid.to_ne_bytes());
        match self.ask(RTM_GETLINK, 0, &body, RTM_NEWLINK) {
            Ok(answer) => Ok(answer.as_deref().and_then(Link::parse)),
            Err(err) if err.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// One datagram read from the [`Listener`].
pub struct Datagram<'a> {
    /// The nsid (in the listener's namespace) of the namespace the
    /// notifications are about; None for the listener's own.
    pub nsid: Option<i32>,
    pub data: &'a [u8],
    /// The datagram or its control data did not fit the buffers.
    pub truncated: bool,
}

/// A non-blocking rtnetlink socket in the agent's namespace that receives
/// link and nsid notifications of every namespace with an nsid there.
pub struct Listener {
    socket: OwnedFd,
    buf: Vec<u8>,
    /// Control messages; u64 elements keep `cmsghdr` aligned.
    control: Vec<u64>,
}

impl Listener {
    /// `buffer_bytes`: the socket's receive buffer, room for bursts of
    /// notifications (each about 2 KiB of it).
    pub fn open(buffer_bytes: u32) -> std::io::Result<Self> {
        let socket = netlink_socket(true)?;
        let fd = socket.as_raw_fd();
        // SAFETY: a zeroed sockaddr_nl: the kernel picks our port id.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: binding our socket to a local address struct.
        if unsafe {
            libc::bind(fd, (&addr as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, buffer_bytes).is_err() {
            set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, buffer_bytes)?;
        }
        set_int_option(fd, SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)?;
        set_int_option(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)?;
        set_int_option(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NSID)?;
        Ok(Self { socket, buf: vec![0; 256 * 1024], control: vec![0; 32] })
    }

    /// Reads one datagram; Ok(None) when none is waiting. ENOBUFS means
    /// notifications were dropped because the socket buffer was full.
    pub fn recv(&mut self) -> std::io::Result<Option<Datagram<'_>>> {
        let mut iov = libc::iovec { iov_base: self.buf.as_mut_ptr().cast(), iov_len: self.buf.len() };
        // SAFETY: a zeroed msghdr pointing at our buffers.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = self.control.as_mut_ptr().cast();
        // `as _`: socklen_t on musl, size_t on glibc.
        header.msg_controllen = std::mem::size_of_val(self.control.as_slice()) as _;
        // SAFETY: recvmsg into the buffers described above.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut header, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            return if err.kind() == std::io::ErrorKind::WouldBlock { Ok(None) } else { Err(err) };
        }
        let truncated = header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        let mut nsid = None;
        // SAFETY: walking the control messages the kernel wrote into
        // `control` (8-byte aligned), checking each one's length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&header);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == SOL_NETLINK
                    && (*cmsg).cmsg_type == NETLINK_LISTEN_ALL_NSID
                    && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
                {
                    nsid = Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>()));
                }
                cmsg = libc::CMSG_NXTHDR(&header, cmsg);
            }
        }
        Ok(Some(Datagram { nsid, data: &self.buf[..n as usize], truncated }))
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl std::os::fd::AsFd for Listener {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests;
