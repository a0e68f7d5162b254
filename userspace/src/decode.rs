//! Turns ring-buffer records into typed kernel events: one decoder per event
//! type, each checking the record's length before copying it out.

use nstrail_abi::{
    device::LinkNotifyEvent,
    event_kind,
    netns::{NetnsCreateEvent, NetnsDestroyEvent, NetnsEnterEvent},
    sysctl::SysctlWriteEvent,
    EventHeader,
};

/// A record of the kernel side, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    NetnsCreate(NetnsCreateEvent),
    NetnsEnter(NetnsEnterEvent),
    NetnsDestroy(NetnsDestroyEvent),
    SysctlWrite(Box<SysctlWriteEvent>),
    /// Who caused a link notification: joined with the rtnetlink message
    /// by the device tracker, never an event of its own.
    LinkNotify(LinkNotifyEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what}")]
    Short { what: &'static str, len: usize, need: usize },
    #[error("record has unknown event kind {0}")]
    UnknownKind(u32),
}

/// Copies a `T` out of the front of `bytes`.
fn read_record<T: aya::Pod>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = std::mem::size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { what, len: bytes.len(), need });
    }
    // SAFETY: T is Pod (any bit pattern is valid) and `bytes` holds at least
    // size_of::<T>() bytes; read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read_record(bytes, "event header")?;
    match header.kind {
        event_kind::NETNS_CREATE => read_record(bytes, "netns_create event").map(KernelEvent::NetnsCreate),
        event_kind::NETNS_ENTER => read_record(bytes, "netns_enter event").map(KernelEvent::NetnsEnter),
        event_kind::NETNS_DESTROY => read_record(bytes, "netns_destroy event").map(KernelEvent::NetnsDestroy),
        event_kind::SYSCTL_WRITE => {
            read_record(bytes, "sysctl_write event").map(|e| KernelEvent::SysctlWrite(Box::new(e)))
        }
        event_kind::LINK_NOTIFY => read_record(bytes, "link_notify record").map(KernelEvent::LinkNotify),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// The `type` name of an event kind, for lost-event records and metrics.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        event_kind::NETNS_CREATE => "netns_create",
        event_kind::NETNS_ENTER => "netns_enter",
        event_kind::NETNS_DESTROY => "netns_destroy",
        event_kind::SYSCTL_WRITE => "sysctl_write",
        // A lost actor record: the device event still comes, without its actor.
        event_kind::LINK_NOTIFY => "device_actor",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nstrail_abi::{Actor, NetnsRef};

    fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: Pod values are plain bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }.to_vec()
    }

    fn enter_event() -> NetnsEnterEvent {
        NetnsEnterEvent {
            header: EventHeader { kind: event_kind::NETNS_ENTER, cpu: 1, boot_ns: 42 },
            actor: Actor { pid: 10, tid: 11, ppid: 1, uid: 0, gid: 0, _pad: 0, cgroup_id: 7, comm: *b"nsenter\0\0\0\0\0\0\0\0\0" },
            netns: NetnsRef { inode: 4026532177, _pad: 0, cookie: 9 },
            from_netns: NetnsRef { inode: 4026531840, _pad: 0, cookie: 1 },
        }
    }

    #[test]
    fn decodes_each_kind() {
        let enter = enter_event();
        assert_eq!(decode(&bytes_of(&enter)), Ok(KernelEvent::NetnsEnter(enter)));

        let create = NetnsCreateEvent {
            header: EventHeader { kind: event_kind::NETNS_CREATE, ..enter.header },
            actor: enter.actor,
            netns: enter.netns,
            parent_netns: enter.from_netns,
            via: 1,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&create)), Ok(KernelEvent::NetnsCreate(create)));

        let destroy = NetnsDestroyEvent {
            header: EventHeader { kind: event_kind::NETNS_DESTROY, ..enter.header },
            actor: enter.actor,
            netns: enter.netns,
            seen_at: 1,
            _pad: 0,
        };
        assert_eq!(decode(&bytes_of(&destroy)), Ok(KernelEvent::NetnsDestroy(destroy)));

        let mut sysctl = SysctlWriteEvent::zeroed();
        sysctl.header = EventHeader { kind: event_kind::SYSCTL_WRITE, ..enter.header };
        sysctl.name[..19].copy_from_slice(b"net/ipv4/ip_forward");
        sysctl.name_len = 19;
        assert_eq!(decode(&bytes_of(&sysctl)), Ok(KernelEvent::SysctlWrite(Box::new(sysctl))));

        let notify = LinkNotifyEvent {
            header: EventHeader { kind: event_kind::LINK_NOTIFY, ..enter.header },
            actor: enter.actor,
            nlmsg_len: 1500,
            nlmsg_type: 16,
            ifindex: 9,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&notify)), Ok(KernelEvent::LinkNotify(notify)));
    }

    #[test]
    fn decodes_from_unaligned_buffers() {
        let mut buf = vec![0u8];
        buf.extend(bytes_of(&enter_event()));
        assert_eq!(decode(&buf[1..]), Ok(KernelEvent::NetnsEnter(enter_event())));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let bytes = bytes_of(&enter_event());
        assert_eq!(
            decode(&bytes[..40]),
            Err(DecodeError::Short { what: "netns_enter event", len: 40, need: bytes.len() })
        );
        assert_eq!(decode(&bytes[..8]), Err(DecodeError::Short { what: "event header", len: 8, need: 16 }));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }
}
