//! Network devices crossing namespaces: the kernel side records who caused
//! each link notification the agent's rtnetlink listener receives.

use crate::{Actor, EventHeader};

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

/// Bytes of `LinkNotifyEvent::ifname`, as the kernel's IFNAMSIZ.
pub const IFNAME_LEN: usize = 16;

const _: () = assert!(core::mem::size_of::<LinkNotifyEvent>() == 96);
