//! Sysctl writes, end to end: real writes in real namespaces, the exact
//! `sysctl_write` events, and the policy denying and allowing for real.

use std::{
    io::{BufRead, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use nstrail::{
    config::Config,
    event::{Actor, Event, EventBody, Netns, SysctlResult},
    sensors::SensorOptions,
};
use nstrail_tests::{field, run, run_ok, NamedNetns, NetnsIdentity, TestAgent};

const WAIT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(500);

fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_netns-helper")
}

/// The fields of a sysctl_write event, for compact assertions.
#[derive(Debug, PartialEq, Eq)]
struct Write {
    sysctl: String,
    old: Option<String>,
    new: String,
    truncated: bool,
    result: SysctlResult,
    errno: Option<u32>,
    rule: Option<u32>,
    netns: Netns,
}

fn write_of(event: &Event) -> (Write, Actor, Option<u64>) {
    let EventBody::SysctlWrite { sysctl, old, new, truncated, result, errno, rule, netns, actor, tcp_sockets_in_use } =
        &event.body
    else {
        panic!("not a sysctl_write: {event:?}")
    };
    (
        Write {
            sysctl: sysctl.clone(),
            old: old.clone(),
            new: new.clone(),
            truncated: *truncated,
            result: *result,
            errno: *errno,
            rule: *rule,
            netns: netns.clone(),
        },
        actor.clone(),
        *tcp_sockets_in_use,
    )
}

fn netns(identity: NetnsIdentity) -> Netns {
    Netns::new(identity.inode, identity.id)
}

/// Waits for, and returns, the only sysctl_write by `pid`.
fn only_write_by(agent: &mut TestAgent, pid: u32) -> (Write, Actor, Option<u64>) {
    agent
        .wait_until(WAIT, &format!("sysctl_write by {pid}"), |log| !log.by_pid_of_type(pid, "sysctl_write").is_empty());
    agent.settle(SETTLE);
    let writes = agent.log.by_pid_of_type(pid, "sysctl_write");
    assert_eq!(writes.len(), 1, "one sysctl_write by {pid}:\n{}", agent.log.dump());
    write_of(writes[0])
}

fn write_in(sysctl: &str, old: &str, new: &str, result: SysctlResult, ns: NetnsIdentity) -> Write {
    Write {
        sysctl: sysctl.into(),
        old: Some(old.into()),
        new: new.into(),
        truncated: false,
        result,
        errno: None,
        rule: None,
        netns: netns(ns),
    }
}

fn read_in(ns: &NamedNetns, file: &str) -> String {
    run_ok("ip", &["netns", "exec", &ns.name, "cat", file]).stdout.trim().to_owned()
}

/// Puts a host sysctl back the way it was, also when the test fails.
struct RestoreSysctl {
    path: &'static str,
    value: String,
}

impl Drop for RestoreSysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.value);
    }
}

#[test]
fn sysctl_w_in_the_host_namespace() {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_keepalive_intvl";
    let before = std::fs::read_to_string(PATH).expect("read sysctl").trim().to_owned();
    let _restore = RestoreSysctl { path: PATH, value: before.clone() };
    let changed = (before.parse::<u32>().expect("number") + 1).to_string();
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();

    let ran = run_ok("sysctl", &["-w", &format!("net.ipv4.tcp_keepalive_intvl={changed}")]);
    let (write, actor, _) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write, write_in("net.ipv4.tcp_keepalive_intvl", &before, &changed, SysctlResult::Applied, host));
    assert_eq!((actor.comm.as_str(), actor.tid, actor.uid), ("sysctl", ran.pid, 0));
}

#[test]
fn ip_netns_exec_sysctl_w_acts_on_that_namespace() {
    let (ns, _) = NamedNetns::add("sysctl");
    // A new namespace's IPv4 forwarding is the host's (0, or 1 on a router
    // or Docker host).
    let before = read_in(&ns, "/proc/sys/net/ipv4/ip_forward");
    let mut agent = TestAgent::start();
    let ran = run_ok("ip", &["netns", "exec", &ns.name, "sysctl", "-w", "net.ipv4.ip_forward=1"]);
    let (write, actor, _) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write, write_in("net.ipv4.ip_forward", &before, "1", SysctlResult::Applied, ns.identity()));
    assert_eq!(actor.comm, "sysctl");
    assert_eq!(read_in(&ns, "/proc/sys/net/ipv4/ip_forward"), "1");
}

#[test]
fn a_shell_redirect_into_proc_sys() {
    let (ns, _) = NamedNetns::add("redirect");
    let mut agent = TestAgent::start();
    let ran =
        run_ok("ip", &["netns", "exec", &ns.name, "sh", "-c", "echo 600 > /proc/sys/net/ipv4/tcp_keepalive_time"]);
    let (write, actor, _) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write, write_in("net.ipv4.tcp_keepalive_time", "7200", "600", SysctlResult::Applied, ns.identity()));
    assert_eq!(actor.comm, "sh");
}

#[test]
fn a_write_acts_on_the_namespace_its_file_was_opened_in() {
    // The file is opened inside the namespace, the write made from the host's.
    let (ns, _) = NamedNetns::add("opened-in");
    let mut agent = TestAgent::start();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap();
    let path = ns.path();
    let ran = run_ok(helper(), &["write-from-outside", path.to_str().unwrap(), "net/ipv4/tcp_keepalive_time", "601"]);
    assert_eq!(field(&ran.stdout, "errno"), 0);
    let (write, _, _) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write, write_in("net.ipv4.tcp_keepalive_time", "7200", "601", SysctlResult::Applied, ns.identity()));
    assert_eq!(read_in(&ns, "/proc/sys/net/ipv4/tcp_keepalive_time"), "601");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time").unwrap(), host_before);
}

#[test]
fn an_invalid_value_is_rejected_by_the_kernel() {
    let (ns, _) = NamedNetns::add("invalid");
    let before = read_in(&ns, "/proc/sys/net/ipv4/ip_forward");
    let mut agent = TestAgent::start();
    let ran = run("ip", &["netns", "exec", &ns.name, "sh", "-c", "echo abc > /proc/sys/net/ipv4/ip_forward"]);
    assert!(!ran.success, "the write fails for the writer");
    let (write, _, _) = only_write_by(&mut agent, ran.pid);
    let expected = Write {
        errno: agent.sysctl_errno_known().then_some(libc::EINVAL as u32),
        ..write_in("net.ipv4.ip_forward", &before, "abc", SysctlResult::Rejected, ns.identity())
    };
    assert_eq!(write, expected);
    assert_eq!(read_in(&ns, "/proc/sys/net/ipv4/ip_forward"), before);
}

#[test]
fn runc_like_sequence_writes_before_the_app_starts() {
    // Like runc: a new netns, the container's sysctl written into it, then
    // /proc/sys made read-only and the application exec'd, which cannot write.
    let script = "echo 600 > /proc/sys/net/ipv4/tcp_keepalive_time \
        && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys \
        && exec sh -c 'echo 700 > /proc/sys/net/ipv4/tcp_keepalive_time'";
    let mut agent = TestAgent::start();
    let ran = run("unshare", &["-n", "-m", "sh", "-c", script]);
    assert!(!ran.success, "the application finds /proc/sys read-only");
    agent.wait_until(WAIT, "create and sysctl_write", |log| {
        log.by_pid_of_type(ran.pid, "netns_create").len() == 1
            && !log.by_pid_of_type(ran.pid, "sysctl_write").is_empty()
    });
    let created = agent.log.by_pid_of_type(ran.pid, "netns_create")[0].body.netns().cloned().expect("netns");
    let (write, actor, tcp) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write.netns, created, "the write acts on the new namespace");
    assert_eq!(
        (write.sysctl.as_str(), write.new.as_str(), write.result),
        ("net.ipv4.tcp_keepalive_time", "600", SysctlResult::Applied)
    );
    assert_eq!(actor.comm, "sh");
    assert!(matches!(tcp, None | Some(0)), "a fresh namespace has no TCP sockets: {tcp:?}");
}

#[test]
fn net_writes_record_tcp_sockets_in_use() {
    let (ns, _) = NamedNetns::add("tcp");
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &ns.name, helper(), "tcp-listen"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start listener");
    let mut line = String::new();
    BufReader::new(listener.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("listener ready");
    assert!(line.starts_with("listening"), "{line}");

    let mut agent = TestAgent::start();
    // The writer lingers a moment, as shells and runtimes do, so the agent
    // can count the namespace's sockets through it.
    let ran = run_ok(
        "ip",
        &["netns", "exec", &ns.name, "sh", "-c", "echo 300 > /proc/sys/net/ipv4/tcp_keepalive_time; sleep 1"],
    );
    let (write, _, tcp) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write.new, "300");
    assert_eq!(tcp, Some(1), "one listening TCP socket in the namespace");

    let _ = listener.stdin.take().expect("stdin").write_all(b"\n");
    let _ = listener.wait();
}

#[test]
fn values_with_odd_bytes_are_escaped_not_dropped() {
    // A UTS namespace of its own, so the host's hostname is untouched.
    let host = NetnsIdentity::of_self();
    let mut agent = TestAgent::start();
    let ran = run_ok("unshare", &["-u", "sh", "-c", "printf 'a\\377b\\\\c' > /proc/sys/kernel/hostname"]);
    let (write, _, tcp) = only_write_by(&mut agent, ran.pid);
    assert_eq!(write.sysctl, "kernel.hostname");
    assert_eq!(write.new, "a\\xffb\\\\c");
    // Where the outcome is read back, a writer gone with its UTS namespace
    // leaves it unknown (docs/events.md).
    assert!(
        write.result == SysctlResult::Applied || (!agent.sysctl_errno_known() && write.result == SysctlResult::Unknown),
        "{write:?}"
    );
    assert_eq!(write.netns, netns(host), "non-net sysctls carry the writer's netns");
    assert_eq!(tcp, None, "socket counts are for net.* only");
}

#[test]
fn long_values_are_truncated_and_flagged() {
    let (ns, _) = NamedNetns::add("long");
    let ports: Vec<String> = (30000..30040).map(|p| p.to_string()).collect();
    let value = ports.join(",");
    assert!(value.len() > 200);
    let mut agent = TestAgent::start();
    let cmd = format!("echo {value} > /proc/sys/net/ipv4/ip_local_reserved_ports");
    let ran = run_ok("ip", &["netns", "exec", &ns.name, "sh", "-c", &cmd]);
    let (write, _, _) = only_write_by(&mut agent, ran.pid);
    assert!(write.truncated);
    assert_eq!(write.new, value[..127]);
    assert_eq!(write.old.as_deref(), Some(""));
    // A cut value cannot be compared with what is read back.
    let expected = if agent.sysctl_errno_known() { SysctlResult::Applied } else { SysctlResult::Unknown };
    assert_eq!(write.result, expected);
}

#[test]
fn reads_are_not_events() {
    let (ns, _) = NamedNetns::add("reads");
    let mut agent = TestAgent::start();
    let ran = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            &ns.name,
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward; sysctl net.ipv4.tcp_keepalive_time",
        ],
    );
    let marker = run_ok("ip", &["netns", "exec", &ns.name, "sysctl", "-w", "net.ipv4.ip_forward=1"]);
    only_write_by(&mut agent, marker.pid);
    assert!(agent.log.by_pid_of_type(ran.pid, "sysctl_write").is_empty(), "{}", agent.log.dump());
}

#[test]
fn policy_denies_and_allows() {
    let config = Config::parse(
        r#"
[sysctl_policy]
enabled = true

[[sysctl_policy.rules]]
action = "allow"
sysctl = "net.ipv4.tcp_fin_timeout"
netns = "other"
comm = "sysctl"

[[sysctl_policy.rules]]
action = "deny"
sysctl = "net.ipv4.tcp_fin_*"
netns = "other"
"#,
    )
    .expect("policy parses");
    let (ns, _) = NamedNetns::add("policy");
    let mut agent = TestAgent::start_with(SensorOptions { sysctl_policy: config.sysctl_policy, ..Default::default() });

    let denied = run("ip", &["netns", "exec", &ns.name, "sh", "-c", "echo 30 > /proc/sys/net/ipv4/tcp_fin_timeout"]);
    assert!(!denied.success, "the writer's write fails");
    let (write, actor, _) = only_write_by(&mut agent, denied.pid);
    let expected = Write {
        errno: Some(libc::EPERM as u32),
        rule: Some(2),
        ..write_in("net.ipv4.tcp_fin_timeout", "60", "30", SysctlResult::Denied, ns.identity())
    };
    assert_eq!(write, expected);
    assert_eq!(actor.comm, "sh");
    assert_eq!(read_in(&ns, "/proc/sys/net/ipv4/tcp_fin_timeout"), "60", "a denied write changes nothing");

    let allowed = run_ok("ip", &["netns", "exec", &ns.name, "sysctl", "-w", "net.ipv4.tcp_fin_timeout=30"]);
    let (write, _, _) = only_write_by(&mut agent, allowed.pid);
    let expected = Write {
        rule: Some(1),
        ..write_in("net.ipv4.tcp_fin_timeout", "60", "30", SysctlResult::Applied, ns.identity())
    };
    assert_eq!(write, expected);
    assert_eq!(read_in(&ns, "/proc/sys/net/ipv4/tcp_fin_timeout"), "30");
}
