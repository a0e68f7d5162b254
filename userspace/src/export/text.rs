use std::io::Write;

use super::{ExportError, Exporter};
use crate::event::{text::terminal_safe, Actor, Event, EventBody, Holders, Netns, SensorState};

/// One readable line per event.
pub struct TextExporter<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> TextExporter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

fn ns(n: &Netns) -> String {
    let name = n.name.as_ref().map(|name| format!(" {name}")).unwrap_or_default();
    let containers: String =
        n.containers.iter().map(|c| format!(" {}:{}", c.runtime, &c.id[..c.id.len().min(12)])).collect();
    let pod = n.pod.as_ref().map(|p| format!(" pod {}/{}", p.namespace, p.name)).unwrap_or_default();
    format!("{}(id {}{name}{containers}{pod})", n.inode, n.id)
}

fn maybe_ns(n: &Option<Netns>) -> String {
    n.as_ref().map(ns).unwrap_or_else(|| "?".to_owned())
}

fn maybe_who(a: &Option<Actor>) -> String {
    a.as_ref().map(who).unwrap_or_else(|| "?".to_owned())
}

/// `mount /run/netns/x, fd 5 of sleep[123]`, or `nothing visible` (a socket).
pub fn holders_text(holders: &Holders) -> String {
    let mounts = holders.mounts.iter().map(|m| format!("mount {m}"));
    let fds = holders.fds.iter().map(|h| match &h.comm {
        Some(comm) => format!("fd {} of {comm}[{}]", h.fd, h.pid),
        None => format!("fd {} of pid {}", h.fd, h.pid),
    });
    let all: Vec<String> = mounts.chain(fds).collect();
    if all.is_empty() {
        "nothing visible in /proc (a socket?)".to_owned()
    } else {
        all.join(", ")
    }
}

fn who(a: &Actor) -> String {
    let tid = if a.tid != a.pid { format!("/{}", a.tid) } else { String::new() };
    format!("{}[{}{}] ppid={} uid={} cgroup={}", a.comm, a.pid, tid, a.ppid, a.uid, a.cgroup_id)
}

/// The readable form of one event, without a trailing newline. Names,
/// comms and values come from the system: the line is made safe for a
/// terminal (control characters and escape sequences shown, not sent).
pub fn format_line(event: &Event) -> String {
    let what = match &event.body {
        EventBody::NetnsCreate { netns, actor, parent_netns, via, child } => {
            let child = child.map(|c| format!(" child={}", c.pid)).unwrap_or_default();
            format!(
                "netns {} created via {} from {} by {}{}",
                ns(netns),
                via.as_str(),
                ns(parent_netns),
                who(actor),
                child
            )
        }
        EventBody::NetnsEnter { netns, actor, from_netns } => {
            format!("netns {} entered from {} by {}", ns(netns), ns(from_netns), who(actor))
        }
        EventBody::NetnsDestroy { netns, actor, .. } => {
            format!("netns {} destroyed by {}", ns(netns), who(actor))
        }
        EventBody::SysctlWrite { sysctl, old, new, result, errno, netns, actor, tcp_sockets_in_use, .. } => {
            let old = old.as_deref().unwrap_or("?");
            let errno = errno.map(|e| format!(" errno={e}")).unwrap_or_default();
            let tcp = tcp_sockets_in_use.map(|n| format!(" tcp_sockets_in_use={n}")).unwrap_or_default();
            let result = result.as_str();
            format!("sysctl {sysctl}: {old} -> {new} {result}{errno} in netns {}{tcp} by {}", ns(netns), who(actor))
        }
        EventBody::DeviceMove { device, from_netns, to_netns, actor } => {
            let kind = device.kind.as_deref().unwrap_or("device");
            let renamed =
                if device.name_after != device.name { format!(" as {}", device.name_after) } else { String::new() };
            format!(
                "{kind} {}[{}] moved from netns {} to {}{renamed}[{}] by {}",
                device.name,
                device.ifindex_before,
                maybe_ns(from_netns),
                maybe_ns(to_netns),
                device.ifindex_after,
                maybe_who(actor)
            )
        }
        EventBody::VethCreate { device, peer, actor } => format!(
            "veth {}[{}] in netns {} created with peer {}[{}] in netns {} by {}",
            device.name,
            device.ifindex,
            maybe_ns(&device.netns),
            peer.name,
            peer.ifindex,
            maybe_ns(&peer.netns),
            maybe_who(actor)
        ),
        EventBody::NetnsLeaked { netns, without_processes_since, since_agent_start, holders } => {
            let since = if *since_agent_start { " (since the agent started)" } else { "" };
            format!(
                "netns {} leaked: no member process since {without_processes_since}{since}, held by {}",
                ns(netns),
                holders_text(holders)
            )
        }
        EventBody::NetnsIdentified { netns, names } => {
            let names = if names.is_empty() { String::new() } else { format!(", names {}", names.join(", ")) };
            format!("netns {} identified{names}", ns(netns))
        }
        EventBody::Lost { count, event_type } => {
            format!("LOST {count} {event_type} events (kernel ring buffer full)")
        }
        EventBody::AgentStart { version, kernel, probes, sensors } => {
            let failed: Vec<_> =
                probes.iter().filter(|p| !p.attached).map(|p| format!("{} at {}", p.probe, p.hook)).collect();
            let attached = probes.len() - failed.len();
            let sensors: Vec<_> = sensors
                .iter()
                .map(|s| match s.state {
                    SensorState::Attached => format!("{} on {}", s.sensor, s.backend),
                    state => format!("{} on {} {}", s.sensor, s.backend, state.as_str().to_uppercase()),
                })
                .collect();
            let mut line =
                format!("nstrail {version} on Linux {kernel}: {attached} probes attached ({})", sensors.join(", "));
            if !failed.is_empty() {
                line.push_str(&format!(", NOT attached: {}", failed.join(", ")));
            }
            line
        }
    };
    terminal_safe(&format!("{} #{} {}", event.ts, event.seq, what)).into_owned()
}

impl<W: Write + Send> Exporter for TextExporter<W> {
    fn name(&self) -> &'static str {
        "text"
    }

    fn export(&mut self, event: &Event, _json: &str) -> Result<(), ExportError> {
        writeln!(self.out, "{}", format_line(event))?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        Ok(self.out.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FdHolder;

    #[test]
    fn a_leak_names_its_holders_safely() {
        let mut netns = Netns::new(4026532300, 77);
        netns.name = Some("x\u{1b}[31m\n".into());
        let holders = Holders {
            mounts: vec!["/run/netns/x\u{1b}[31m\n".into()],
            fds: vec![FdHolder { pid: 9, fd: 5, comm: Some("sleep".into()) }, FdHolder { pid: 10, fd: 3, comm: None }],
        };
        let body = EventBody::NetnsLeaked {
            netns,
            without_processes_since: "2026-11-28T00:00:00.000000000Z".into(),
            since_agent_start: true,
            holders,
        };
        let line = format_line(&Event { ts: "T".into(), seq: 4, body });
        assert_eq!(
            line,
            "T #4 netns 4026532300(id 77 x\\e[31m\\n) leaked: no member process since 2026-11-28T00:00:00.000000000Z (since the agent started), held by mount /run/netns/x\\e[31m\\n, fd 5 of sleep[9], fd 3 of pid 10"
        );
        assert_eq!(holders_text(&Holders::default()), "nothing visible in /proc (a socket?)");
    }
}
