use super::*;

pub fn link_message(
    kind: u16,
    ifindex: i32,
    change: u32,
    name: &str,
    extra: &[(u16, i32)],
    link_kind: Option<&str>,
) -> Vec<u8> {
    let mut body = vec![0u8; 16];
    body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    body[12..16].copy_from_slice(&change.to_ne_bytes());
    attr(&mut body, IFLA_IFNAME, format!("{name}\0").as_bytes());
    for (k, v) in extra {
        attr(&mut body, *k, &v.to_ne_bytes());
    }
    if let Some(link_kind) = link_kind {
        let mut info = Vec::new();
        attr(&mut info, IFLA_INFO_KIND, link_kind.as_bytes());
        attr(&mut body, IFLA_LINKINFO, &info);
    }
    request(kind, 0, 0, &body)
}

#[test]
fn parses_a_move_out_notification() {
    let data = link_message(
        RTM_DELLINK,
        9,
        IFI_CHANGE_ALL,
        "xa",
        &[(IFLA_LINK, 8), (IFLA_NEW_NETNSID, 1), (IFLA_NEW_IFINDEX, 12)],
        Some("veth"),
    );
    let message = messages(&data).next().unwrap().unwrap();
    assert_eq!((message.kind, message.len as usize), (RTM_DELLINK, data.len()));
    let link = Link::parse(message.payload).unwrap();
    assert_eq!(
        link,
        Link {
            ifindex: 9,
            change: IFI_CHANGE_ALL,
            name: "xa".into(),
            kind: Some("veth".into()),
            link: Some(8),
            link_netnsid: None,
            new_netnsid: Some(1),
            new_ifindex: Some(12),
        }
    );
}

#[test]
fn reports_truncated_messages() {
    let mut data = link_message(RTM_NEWLINK, 1, 0, "lo", &[], None);
    data.truncate(20);
    assert!(messages(&data).next().unwrap().is_err());
}

#[test]
fn asks_the_kernel_for_an_nsid() {
    // The agent's own namespace has no nsid for itself unless assigned;
    // the request must succeed either way.
    let mut requests = Requests::open().unwrap();
    let own = std::fs::File::open("/proc/self/ns/net").unwrap();
    requests.nsid_of_fd(own.as_raw_fd()).unwrap();
}
