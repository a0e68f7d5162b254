use std::io::Write;

use super::{ExportError, Exporter};
use crate::event::{Actor, Event, EventBody, Netns};

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
    format!("{}(id {})", n.inode, n.id)
}

fn maybe_ns(n: &Option<Netns>) -> String {
    n.as_ref().map(ns).unwrap_or_else(|| "?".to_owned())
}

fn maybe_who(a: &Option<Actor>) -> String {
    a.as_ref().map(who).unwrap_or_else(|| "?".to_owned())
}

fn who(a: &Actor) -> String {
    let tid = if a.tid != a.pid { format!("/{}", a.tid) } else { String::new() };
    format!("{}[{}{}] ppid={} uid={} cgroup={}", a.comm, a.pid, tid, a.ppid, a.uid, a.cgroup_id)
}

/// The readable form of one event, without a trailing newline.
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
        EventBody::Lost { count, event_type } => {
            format!("LOST {count} {event_type} events (kernel ring buffer full)")
        }
        EventBody::AgentStart { version, kernel, probes } => {
            let failed: Vec<_> =
                probes.iter().filter(|p| !p.attached).map(|p| format!("{} at {}", p.probe, p.hook)).collect();
            let attached = probes.len() - failed.len();
            if failed.is_empty() {
                format!("nstrail {version} on Linux {kernel}: {attached} probes attached")
            } else {
                format!(
                    "nstrail {version} on Linux {kernel}: {attached} probes attached, NOT attached: {}",
                    failed.join(", ")
                )
            }
        }
    };
    format!("{} #{} {}", event.ts, event.seq, what)
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
