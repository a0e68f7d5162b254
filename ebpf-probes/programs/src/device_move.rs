//! Devices crossing namespaces. The agent listens for rtnetlink link
//! notifications of every namespace (NETLINK_LISTEN_ALL_NSID); this socket
//! filter, attached to that one listener, runs synchronously in the task
//! that made the kernel broadcast the notification, so it can say who
//! moved or created a device. It never drops anything: it only records.

use aya_ebpf::programs::SkBuffContext;
use nstrail_abi::{
    device::{IFNAME_LEN, LinkNotifyEvent},
    event_kind,
};

use crate::{
    kernel::{current_actor, header, layout_ready},
    maps::{CLEANUP_STATE, emit},
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// `nlmsghdr` (16 bytes), then `ifinfomsg` whose `ifi_index` is at +4.
const NLMSG_TYPE_AT: usize = 4;
const IFI_INDEX_AT: usize = 16 + 4;
/// The first attribute's header follows the 16-byte ifinfomsg.
const FIRST_ATTR_TYPE_AT: usize = 32 + 2;
const FIRST_ATTR_VALUE_AT: usize = 32 + 4;
const IFLA_IFNAME: u16 = 3;

/// Records the actor of one link notification; returns the length to keep
/// (all of it: the listener gets every message).
pub fn on_link_notification(ctx: &SkBuffContext) -> i64 {
    let keep = ctx.len() as i64;
    let Ok(nlmsg_type) = ctx.load::<u16>(NLMSG_TYPE_AT) else {
        return keep;
    };
    if nlmsg_type != RTM_NEWLINK && nlmsg_type != RTM_DELLINK {
        return keep;
    }
    if !layout_ready() {
        return keep;
    }
    let nlmsg_len = ctx.load::<u32>(0).unwrap_or(0);
    let ifindex = ctx.load::<i32>(IFI_INDEX_AT).unwrap_or(0);
    let in_netns_cleanup = CLEANUP_STATE.get(0).map(|s| (s.work != 0) as u32).unwrap_or(0);
    let ifname = if ctx.load::<u16>(FIRST_ATTR_TYPE_AT).is_ok_and(|t| t & 0x3fff == IFLA_IFNAME) {
        // A constant-size load; a message shorter than that leaves it empty.
        ctx.load::<[u8; IFNAME_LEN]>(FIRST_ATTR_VALUE_AT).unwrap_or([0; IFNAME_LEN])
    } else {
        [0; IFNAME_LEN]
    };
    emit(
        event_kind::LINK_NOTIFY,
        LinkNotifyEvent {
            header: header(event_kind::LINK_NOTIFY),
            actor: current_actor(),
            nlmsg_len,
            nlmsg_type,
            _pad: 0,
            ifindex,
            in_netns_cleanup,
            ifname,
        },
    );
    keep
}
