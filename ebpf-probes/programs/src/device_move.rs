//! Devices crossing namespaces, two ways.
//!
//! Where fentry or kprobes work, the kernel functions themselves:
//! `__dev_change_net_namespace` (every move, whoever asks: rtnetlink, the
//! cleanup worker returning devices; with fentry the move is reported at
//! `netdev_change_owner`, which it calls once the device has moved) and, for veth pairs created across
//! namespaces, `register_netdevice` inside `rtnl_newlink`.
//!
//! Elsewhere the agent listens for rtnetlink link notifications of every
//! namespace (NETLINK_LISTEN_ALL_NSID); a socket filter, attached to that
//! one listener, runs synchronously in the task that made the kernel
//! broadcast the notification, so it can say who moved or created a
//! device. It never drops anything: it only records.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::map, maps::LruHashMap, programs::SkBuffContext};
use nstrail_abi::{
    device::{DeviceMoveEvent, LinkNotifyEvent, VethCreateEvent, VethEndRecord, IFNAME_LEN, LINK_KIND_LEN},
    event_kind, NetnsRef,
};

use crate::{
    kernel::{current_actor, header, layout, layout_ready, netns_ref, read_at, read_bytes, read_str, ReadFailed},
    maps::{emit, emit_to, CLEANUP_STATE, DEVICE_ACTORS},
};

// ---- moves: __dev_change_net_namespace ------------------------------------

/// A move in progress, keyed by pid_tgid: what the device was before.
#[repr(C)]
#[derive(Clone, Copy)]
struct MoveStart {
    dev: u64,
    to_net: u64,
    from: NetnsRef,
    ifindex: u32,
    _pad: u32,
    name: [u8; IFNAME_LEN],
}

#[map]
static MOVES_IN_PROGRESS: LruHashMap<u64, MoveStart> = LruHashMap::with_max_entries(4096, 0);

/// At the entry of `__dev_change_net_namespace(dev, net, ...)`.
pub fn on_move_start(dev: u64, to_net: u64) {
    if !layout_ready() || layout!(netdev_net) == u32::MAX {
        return;
    }
    let Ok(from_net) = read_at::<u64>(dev, layout!(netdev_net)) else { return };
    let Ok(from) = netns_ref(from_net) else { return };
    let start = MoveStart {
        dev,
        to_net,
        from,
        ifindex: read_at(dev, layout!(netdev_ifindex)).unwrap_or(0),
        _pad: 0,
        name: read_bytes(dev, layout!(netdev_name)),
    };
    let _ = MOVES_IN_PROGRESS.insert(bpf_get_current_pid_tgid(), start, 0);
}

/// At the entry of `netdev_change_owner(dev, net_old, net_new)`, which
/// `__dev_change_net_namespace` calls once the device is in its destination
/// (new namespace, ifindex and name set). The move is reported here rather
/// than at the fexit: when another program is attached to or detached from
/// `__dev_change_net_namespace` while a move sleeps in it (it waits in
/// `rcu_barrier` and `synchronize_net`), the kernel retires the old
/// trampoline with its fexit programs skipped, and the move would go unseen.
pub fn on_moved(dev: u64) {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { MOVES_IN_PROGRESS.get(key) }).copied() else { return };
    if start.dev != dev {
        return;
    }
    let _ = MOVES_IN_PROGRESS.remove(key);
    let _ = try_move_end(&start);
}

/// At its return: the device is in its destination if the move worked.
/// Where `on_moved` ran, the entry is gone and this does nothing; the
/// kprobe backend reports moves here (kretprobes are not retired that way).
pub fn on_move_end() {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { MOVES_IN_PROGRESS.get(key) }).copied() else { return };
    let _ = MOVES_IN_PROGRESS.remove(key);
    let _ = try_move_end(&start);
}

fn try_move_end(start: &MoveStart) -> Result<(), ReadFailed> {
    let now_net: u64 = read_at(start.dev, layout!(netdev_net))?;
    if now_net != start.to_net {
        return Ok(()); // refused (a name clash, a device that cannot move)
    }
    emit(
        event_kind::DEVICE_MOVE,
        DeviceMoveEvent {
            header: header(event_kind::DEVICE_MOVE),
            actor: current_actor(),
            from_netns: start.from,
            to_netns: netns_ref(now_net)?,
            ifindex_before: start.ifindex,
            ifindex_after: read_at(start.dev, layout!(netdev_ifindex))?,
            name_before: start.name,
            name_after: read_bytes(start.dev, layout!(netdev_name)),
            kind: link_kind(start.dev),
        },
    );
    Ok(())
}

/// `dev->rtnl_link_ops->kind`, all zero for devices without link ops.
fn link_kind(dev: u64) -> [u8; LINK_KIND_LEN] {
    if layout!(netdev_link_ops) == u32::MAX || layout!(link_ops_kind) == u32::MAX {
        return [0; LINK_KIND_LEN];
    }
    let ops: u64 = read_at(dev, layout!(netdev_link_ops)).unwrap_or(0);
    if ops == 0 {
        return [0; LINK_KIND_LEN];
    }
    read_str(read_at::<u64>(ops, layout!(link_ops_kind)).unwrap_or(0))
}

// ---- veth pairs across namespaces: register_netdevice in rtnl_newlink ----

/// Devices registered by one rtnetlink request so far, keyed by pid_tgid.
#[repr(C)]
#[derive(Clone, Copy)]
struct NewLinks {
    count: u32,
    _pad: u32,
    devs: [u64; 2],
}

#[map]
static NEW_LINKS: LruHashMap<u64, NewLinks> = LruHashMap::with_max_entries(4096, 0);

/// The device a kprobe saw entering `register_netdevice`, for its kretprobe.
#[map]
static REGISTERING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// At the entry of `rtnl_newlink`: start collecting its devices.
pub fn on_newlink_start() {
    let _ = NEW_LINKS.insert(bpf_get_current_pid_tgid(), NewLinks { count: 0, _pad: 0, devs: [0; 2] }, 0);
}

/// At the entry of `register_netdevice(dev)` (kprobe backend only).
pub fn on_register_start(dev: u64) {
    let _ = REGISTERING.insert(bpf_get_current_pid_tgid(), dev, 0);
}

/// At the return of `register_netdevice(dev)` (with `dev` 0: the one its
/// kprobe saw).
pub fn on_registered(dev: u64, ret: i64) {
    let key = bpf_get_current_pid_tgid();
    let dev = if dev != 0 {
        dev
    } else {
        // SAFETY: copied out before the entry is removed.
        let Some(dev) = (unsafe { REGISTERING.get(key) }).copied() else { return };
        let _ = REGISTERING.remove(key);
        dev
    };
    if ret != 0 {
        return;
    }
    let Some(links) = NEW_LINKS.get_ptr_mut(key) else { return };
    // SAFETY: map value pointer of this thread's entry.
    unsafe {
        let n = (*links).count as usize;
        if n < 2 {
            (*links).devs[n] = dev;
        }
        (*links).count += 1;
    }
}

/// At the return of `rtnl_newlink`: two veth devices registered by it are
/// a pair; reported when their ends are in different namespaces.
pub fn on_newlink_end() {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the entry is removed.
    let Some(links) = (unsafe { NEW_LINKS.get(key) }).copied() else { return };
    let _ = NEW_LINKS.remove(key);
    if links.count != 2 || !layout_ready() {
        return;
    }
    let _ = try_veth_pair(links.devs[0], links.devs[1]);
}

fn try_veth_pair(peer: u64, device: u64) -> Result<(), ReadFailed> {
    const VETH: [u8; 5] = *b"veth\0";
    for dev in [peer, device] {
        if link_kind(dev)[..5] != VETH {
            return Ok(());
        }
    }
    let end = |dev: u64| -> Result<VethEndRecord, ReadFailed> {
        Ok(VethEndRecord {
            netns: netns_ref(read_at::<u64>(dev, layout!(netdev_net))?)?,
            ifindex: read_at(dev, layout!(netdev_ifindex))?,
            _pad: 0,
            name: read_bytes(dev, layout!(netdev_name)),
        })
    };
    let (peer, device) = (end(peer)?, end(device)?);
    if peer.netns.cookie == device.netns.cookie {
        return Ok(());
    }
    emit(
        event_kind::VETH_CREATE,
        VethCreateEvent { header: header(event_kind::VETH_CREATE), actor: current_actor(), device, peer },
    );
    Ok(())
}

// ---- the rtnetlink listener's socket filter ---------------------------------

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
    emit_to(
        &DEVICE_ACTORS,
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
