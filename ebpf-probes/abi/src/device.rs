//! Network devices crossing namespaces: the kernel side records who caused
//! each link notification the agent's rtnetlink listener receives.

use crate::{Actor, EventHeader, NetnsRef};

/// The task in whose context the kernel broadcast one rtnetlink link
/// notification (RTM_NEWLINK / RTM_DELLINK) to the agent's listener. The
/// agent pairs it with the message it then reads from the socket by
/// (`nlmsg_type`, `ifindex`, `ifname`, `nlmsg_len`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkNotifyEvent {
    pub header: EventHeader,
    /// The task that made the change (`ip`, a CNI plugin, a kworker
    /// returning devices of a dying namespace).
    pub actor: Actor,
    /// `nlmsghdr.nlmsg_len` of the notification.
    pub nlmsg_len: u32,
    /// `nlmsghdr.nlmsg_type`: RTM_NEWLINK (16) or RTM_DELLINK (17).
    pub nlmsg_type: u16,
    pub _pad: u16,
    /// `ifinfomsg.ifi_index` of the device.
    pub ifindex: i32,
    /// Non-zero when the kernel's `cleanup_net` work was running.
    pub in_netns_cleanup: u32,
    /// The device name (IFLA_IFNAME, the first attribute the kernel writes),
    /// NUL terminated; may carry bytes of the next attribute after the NUL;
    /// all zero when the message did not start with it.
    pub ifname: [u8; IFNAME_LEN],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for LinkNotifyEvent {}

/// Bytes of `LinkNotifyEvent::ifname`, as the kernel's IFNAMSIZ.
pub const IFNAME_LEN: usize = 16;
/// Bytes kept of a link kind (`rtnl_link_ops->kind`: "veth", "macvlan").
pub const LINK_KIND_LEN: usize = 16;

/// A device moved between namespaces (`__dev_change_net_namespace`
/// returned with the device in its destination).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceMoveEvent {
    pub header: EventHeader,
    /// The task that asked (or the kernel worker returning devices of a
    /// namespace it destroys).
    pub actor: Actor,
    pub from_netns: NetnsRef,
    pub to_netns: NetnsRef,
    pub ifindex_before: u32,
    pub ifindex_after: u32,
    /// NUL terminated unless 16 bytes long.
    pub name_before: [u8; IFNAME_LEN],
    pub name_after: [u8; IFNAME_LEN],
    /// All zero for devices without rtnl link ops (physical NICs).
    pub kind: [u8; LINK_KIND_LEN],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for DeviceMoveEvent {}

/// One end of a veth pair as registered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethEndRecord {
    pub netns: NetnsRef,
    pub ifindex: u32,
    pub _pad: u32,
    pub name: [u8; IFNAME_LEN],
}

/// A veth pair whose two ends were registered, in different namespaces,
/// by one rtnetlink request (`rtnl_newlink`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VethCreateEvent {
    pub header: EventHeader,
    pub actor: Actor,
    /// The end named first (`ip link add NAME type veth ...`), registered second.
    pub device: VethEndRecord,
    /// The `peer name` end, registered first.
    pub peer: VethEndRecord,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)], integers and integer arrays only, no implicit padding (size asserted below).
unsafe impl aya::Pod for VethCreateEvent {}

const _: () = assert!(core::mem::size_of::<DeviceMoveEvent>() == 16 + 48 + 32 + 8 + 48);
const _: () = assert!(core::mem::size_of::<VethEndRecord>() == 40);
const _: () = assert!(core::mem::size_of::<VethCreateEvent>() == 16 + 48 + 80);

const _: () = assert!(core::mem::size_of::<LinkNotifyEvent>() == 96);
