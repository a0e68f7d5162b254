use super::*;
use crate::sys::rtnetlink::{tests::link_message, IFLA_LINK, IFLA_LINK_NETNSID, IFLA_NEW_IFINDEX, IFLA_NEW_NETNSID};
use nstrail_abi::{event_kind, EventHeader};

const HOST: u64 = 3;

fn moves() -> Pairing {
    let mut nsids = NsidMap::new(Netns::new(4026531833, HOST), Default::default()).expect("rtnetlink socket");
    // Numbers no real namespace of this test machine uses.
    nsids.insert(9001, Netns::new(4026532001, 101));
    nsids.insert(9002, Netns::new(4026532002, 102));
    Pairing::new(nsids)
}

/// A notification as the listener reads it, with its actor recorded first.
fn notify(moves: &mut Pairing, nsid: Option<i32>, message: Vec<u8>, pid: u32, out: &mut Vec<Draft>) {
    let len = u32::from_ne_bytes(message[0..4].try_into().unwrap());
    let kind = u16::from_ne_bytes(message[4..6].try_into().unwrap());
    let ifindex = i32::from_ne_bytes(message[20..24].try_into().unwrap());
    let mut record = LinkNotifyEvent {
        header: EventHeader { kind: event_kind::LINK_NOTIFY, cpu: 0, boot_ns: 77 },
        nlmsg_len: len,
        nlmsg_type: kind,
        ifindex,
        ..Default::default()
    };
    record.actor.pid = pid;
    record.actor.tid = pid;
    record.actor.comm[..2].copy_from_slice(b"ip");
    moves.actor_seen(record);
    moves.datagram(nsid, &message, out).unwrap();
}

#[test]
fn pairs_a_move_between_two_namespaces() {
    let mut moves = moves();
    let mut out = Vec::new();
    // Leaves 9001 for "nsid 5 of the source", arrives in 9002 as ifindex 12, renamed.
    let out_of_a = link_message(
        RTM_DELLINK,
        7,
        IFI_CHANGE_ALL,
        "eth9",
        &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 12)],
        Some("veth"),
    );
    notify(&mut moves, Some(9001), out_of_a, 40, &mut out);
    assert!(out.is_empty(), "waits for the arrival");
    let into_b =
        link_message(RTM_NEWLINK, 12, IFI_CHANGE_ALL, "eth0", &[(IFLA_LINK, 3), (IFLA_LINK_NETNSID, 0)], Some("veth"));
    notify(&mut moves, Some(9002), into_b, 40, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let EventBody::DeviceMove { device, from_netns, to_netns, actor } = &out[0].body else { panic!("{out:?}") };
    assert_eq!(
        *device,
        MovedDevice {
            name: "eth9".into(),
            kind: Some("veth".into()),
            ifindex_before: 7,
            ifindex_after: 12,
            name_after: "eth0".into()
        }
    );
    assert_eq!((from_netns.as_ref().unwrap().id, to_netns.as_ref().unwrap().id), (101, 102));
    assert_eq!(actor.as_ref().map(|a| (a.pid, a.comm.as_str())), Some((40, "ip")));
    assert_eq!(out[0].boot_ns, 77);
    assert_eq!(moves.take_unmatched(), 0);
    assert_eq!(moves.next_deadline(), None);
}

#[test]
fn state_changes_and_deletions_are_not_events() {
    let mut moves = moves();
    let mut out = Vec::new();
    notify(&mut moves, None, link_message(RTM_NEWLINK, 4, 1, "eth0", &[], None), 1, &mut out);
    notify(&mut moves, None, link_message(RTM_DELLINK, 4, IFI_CHANGE_ALL, "eth0", &[], None), 1, &mut out);
    // A new device with its peer in the same namespace.
    notify(
        &mut moves,
        None,
        link_message(RTM_NEWLINK, 5, IFI_CHANGE_ALL, "v0", &[(IFLA_LINK, 6)], Some("veth")),
        1,
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(moves.next_deadline(), None);
}

#[test]
fn pairs_the_two_ends_of_a_veth_made_across_namespaces() {
    let mut moves = moves();
    let mut out = Vec::new();
    // The peer registers first (its peer not set yet), then the device, pointing at it.
    notify(
        &mut moves,
        Some(9002),
        link_message(RTM_NEWLINK, 2, IFI_CHANGE_ALL, "c2", &[(IFLA_LINK, 0)], Some("veth")),
        50,
        &mut out,
    );
    let device =
        link_message(RTM_NEWLINK, 5, IFI_CHANGE_ALL, "c1", &[(IFLA_LINK, 2), (IFLA_LINK_NETNSID, 1)], Some("veth"));
    notify(&mut moves, Some(9001), device, 50, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let EventBody::VethCreate { device, peer, .. } = &out[0].body else { panic!("{out:?}") };
    assert_eq!((device.name.as_str(), device.ifindex, device.netns.as_ref().unwrap().id), ("c1", 5, 101));
    assert_eq!((peer.name.as_str(), peer.ifindex, peer.netns.as_ref().unwrap().id), ("c2", 2, 102));
}

#[test]
fn a_move_whose_arrival_never_comes_is_reported_when_it_expires() {
    let mut moves = moves();
    let mut out = Vec::new();
    let out_of_a = link_message(
        RTM_DELLINK,
        7,
        IFI_CHANGE_ALL,
        "eth9",
        &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 12)],
        Some("veth"),
    );
    notify(&mut moves, Some(9001), out_of_a, 40, &mut out);
    let deadline = moves.next_deadline().expect("waiting");
    moves.expire(deadline, &mut out);
    assert_eq!(out.len(), 1);
    let EventBody::DeviceMove { device, from_netns, to_netns, .. } = &out[0].body else { panic!("{out:?}") };
    assert_eq!((device.ifindex_after, device.name_after.as_str()), (12, "eth9"));
    assert_eq!(from_netns.as_ref().unwrap().id, 101);
    assert_eq!(*to_netns, None, "no namespace has that device");
}

#[test]
fn a_reused_nsid_names_its_new_holder_only_after_the_old_one_is_deleted() {
    let mut moves = moves();
    let mut out = Vec::new();
    // The kernel freed 9001 and gave it to a new namespace; the agent
    // learned that before reading the old holder's last messages.
    moves.nsids().insert(9001, Netns::new(4026532003, 103));
    let out_of_old = link_message(
        RTM_DELLINK,
        7,
        IFI_CHANGE_ALL,
        "eth9",
        &[(IFLA_NEW_NETNSID, 5), (IFLA_NEW_IFINDEX, 7)],
        Some("veth"),
    );
    notify(&mut moves, Some(9001), out_of_old, 40, &mut out);
    notify(
        &mut moves,
        Some(9002),
        link_message(RTM_NEWLINK, 7, IFI_CHANGE_ALL, "eth9", &[], Some("veth")),
        40,
        &mut out,
    );
    let EventBody::DeviceMove { from_netns, .. } = &out[0].body else { panic!("{out:?}") };
    assert_eq!(from_netns.as_ref().unwrap().id, 101, "the old holder");
    let mut delnsid = vec![0u8; 4];
    delnsid.extend_from_slice(&8u16.to_ne_bytes());
    delnsid.extend_from_slice(&1u16.to_ne_bytes());
    delnsid.extend_from_slice(&9001i32.to_ne_bytes());
    let mut message = Vec::new();
    message.extend_from_slice(&((16 + delnsid.len()) as u32).to_ne_bytes());
    message.extend_from_slice(&RTM_DELNSID.to_ne_bytes());
    message.extend_from_slice(&[0; 10]);
    message.extend_from_slice(&delnsid);
    moves.datagram(None, &message, &mut out).unwrap();
    assert_eq!(moves.nsids().get(Some(9001)).map(|n| n.id), Some(103), "the new holder");
}

#[test]
fn actors_are_told_apart_by_device_name() {
    let mut moves = moves();
    let mut out = Vec::new();
    // Two namespaces, each with a new device of ifindex 2 and the same message length.
    let second =
        link_message(RTM_NEWLINK, 2, IFI_CHANGE_ALL, "bbbb", &[(IFLA_LINK, 9), (IFLA_LINK_NETNSID, 0)], Some("veth"));
    for (pid, name) in [(61, "aaaa"), (62, "bbbb")] {
        let mut record = LinkNotifyEvent {
            nlmsg_type: RTM_NEWLINK,
            ifindex: 2,
            nlmsg_len: second.len() as u32,
            ..Default::default()
        };
        record.actor.pid = pid;
        record.ifname[..4].copy_from_slice(name.as_bytes());
        moves.actor_seen(record);
    }
    moves.datagram(Some(9002), &second, &mut out).unwrap();
    let EventBody::VethCreate { actor, .. } = &out[0].body else { panic!("{out:?}") };
    assert_eq!(actor.as_ref().map(|a| a.pid), Some(62));
    assert_eq!(moves.actors.len(), 1);
    assert_eq!(moves.actors[0].1.actor.pid, 61);
}

#[test]
fn a_device_the_cleanup_worker_brings_home_moved_from_the_dying_namespace() {
    let mut moves = moves();
    let mut out = Vec::new();
    let dying = Netns::new(4026532009, 109);
    moves.netns_destroyed(35, &dying, &mut out);
    let home = link_message(RTM_NEWLINK, 3, IFI_CHANGE_ALL, "eth1", &[], None);
    let mut record = LinkNotifyEvent {
        header: EventHeader { kind: event_kind::LINK_NOTIFY, cpu: 0, boot_ns: boot_ns() },
        nlmsg_len: home.len() as u32,
        nlmsg_type: RTM_NEWLINK,
        ifindex: 3,
        in_netns_cleanup: 1,
        ..Default::default()
    };
    record.actor.tid = 35;
    record.actor.comm[..7].copy_from_slice(b"kworker");
    moves.actor_seen(record);
    moves.datagram(None, &home, &mut out).unwrap();
    let EventBody::DeviceMove { device, from_netns, to_netns, actor } = &out[0].body else { panic!("{out:?}") };
    assert_eq!(
        (device.name.as_str(), device.kind.as_deref(), device.ifindex_before, device.ifindex_after),
        ("eth1", None, 0, 3)
    );
    assert_eq!((from_netns.clone(), to_netns.as_ref().map(|n| n.id)), (Some(dying), Some(HOST)));
    assert_eq!(actor.as_ref().map(|a| a.comm.as_str()), Some("kworker"));

    // Another task registering a device while a cleanup runs is no move.
    let mut out = Vec::new();
    let new_device = link_message(RTM_NEWLINK, 4, IFI_CHANGE_ALL, "eth2", &[], None);
    record.nlmsg_len = new_device.len() as u32;
    record.ifindex = 4;
    record.actor.tid = 36;
    moves.actor_seen(record);
    moves.datagram(None, &new_device, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    let deadline = moves.next_deadline().expect("waits for a destroy report of its worker");
    moves.expire(deadline, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(moves.next_deadline(), None);
}

#[test]
fn a_device_brought_home_before_its_destroy_report_waits_for_it() {
    let mut moves = moves();
    let mut out = Vec::new();
    let home = link_message(RTM_NEWLINK, 3, IFI_CHANGE_ALL, "eth1", &[], None);
    let mut record = LinkNotifyEvent {
        header: EventHeader { kind: event_kind::LINK_NOTIFY, cpu: 0, boot_ns: boot_ns() },
        nlmsg_len: home.len() as u32,
        nlmsg_type: RTM_NEWLINK,
        ifindex: 3,
        in_netns_cleanup: 1,
        ..Default::default()
    };
    record.actor.tid = 35;
    moves.actor_seen(record);
    moves.datagram(None, &home, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    let dying = Netns::new(4026532009, 109);
    moves.netns_destroyed(35, &dying, &mut out);
    let EventBody::DeviceMove { device, from_netns, .. } = &out[0].body else { panic!("{out:?}") };
    assert_eq!((device.name.as_str(), from_netns.clone()), ("eth1", Some(dying)));
    assert_eq!(moves.next_deadline(), None);
}

#[test]
fn counts_actor_records_whose_message_never_came() {
    let mut moves = moves();
    let mut record = LinkNotifyEvent { nlmsg_type: RTM_NEWLINK, ifindex: 99, nlmsg_len: 1, ..Default::default() };
    record.actor.pid = 1;
    moves.actors.push_back((Instant::now() - ACTOR_KEEP - Duration::from_secs(1), record));
    let mut out = Vec::new();
    notify(&mut moves, None, link_message(RTM_NEWLINK, 4, 1, "eth0", &[], None), 1, &mut out);
    assert_eq!(moves.take_unmatched(), 0, "counted only once the socket is read empty");
    moves.drained();
    assert_eq!(moves.take_unmatched(), 1);
    assert!(moves.actors.is_empty());
}
