//! The agent's Prometheus metrics (served by [`crate::serve::metrics`]).
//! Counters carry small bounded labels only; namespace identity appears
//! only in the opt-in, capped `nstrail_netns_info` series.

use std::collections::BTreeSet;

use prometheus::{Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{
    event::{CreateVia, Event, EventBody, ProbeStatus, SensorState, SensorStatus, SysctlResult},
    inventory::Inventory,
    sensors::Declaration,
};

/// Label value for net.* sysctls outside the configured set, and for non-net ones.
const OTHER: &str = "other";

/// Every `via` of a create, so each series exists (at 0) before the first
/// create: `increase()` and `rate()` then count the first ones too.
const ALL_VIA: [CreateVia; 6] =
    [CreateVia::Unshare, CreateVia::Clone, CreateVia::Clone3, CreateVia::Fork, CreateVia::Vfork, CreateVia::Unknown];

/// Every sysctl write outcome, likewise.
const ALL_RESULTS: [SysctlResult; 4] =
    [SysctlResult::Applied, SysctlResult::Rejected, SysctlResult::Denied, SysctlResult::Unknown];

/// Device kinds whose move series start at 0: veth (containers) and `none`
/// (physical devices); other kinds appear at their first move.
const KNOWN_DEVICE_KINDS: [&str; 2] = ["veth", "none"];

/// What is exported, from the `[metrics]` config section.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// net.* sysctl names that get their own label value.
    pub sysctl_labels: BTreeSet<String>,
    /// Publish `nstrail_netns_info` (one series per namespace).
    pub netns_info: bool,
    /// At most this many `nstrail_netns_info` series.
    pub netns_info_limit: usize,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            sysctl_labels: [
                "net.ipv4.ip_forward",
                "net.ipv4.tcp_keepalive_time",
                "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes",
                "net.ipv4.ip_local_port_range",
                "net.core.somaxconn",
                "net.ipv6.conf.all.disable_ipv6",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect(),
            netns_info: false,
            netns_info_limit: 1000,
        }
    }
}

pub struct Metrics {
    registry: Registry,
    options: MetricsOptions,
    events: IntCounterVec,
    netns_created: IntCounterVec,
    sysctl_writes: IntCounterVec,
    device_moves: IntCounterVec,
    lost: IntCounterVec,
    decode_errors: IntCounter,
    probes: IntGaugeVec,
    sensors: IntGaugeVec,
    live_netns: IntGauge,
    without_processes: IntGauge,
    leaked: IntCounter,
    /// Incremented by the audit log when a write fails.
    pub log_write_errors: IntCounter,
    /// 1 when the audit log is sealed.
    pub audit_sealed: IntGauge,
    /// Epoch, last event seq and Unix time of the last seal written: an
    /// outside witness of how far the sealed log reaches.
    pub audit_seal_epoch: IntGauge,
    pub audit_last_sealed_seq: IntGauge,
    pub audit_last_seal_time: Gauge,
    /// The audit log file was deleted, moved, replaced or truncated under the agent.
    pub audit_log_reopened: IntCounterVec,
    /// Connected API clients.
    pub api_clients: IntGauge,
    /// Events dropped for API clients that read too slowly.
    pub api_client_drops: IntCounter,
    /// Clients sent away because `[api] max_clients` were connected.
    pub api_clients_refused: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("unique metric");
    metric
}

impl Metrics {
    /// `sensors`: what each sensor reports, so every series a dashboard
    /// alerts on exists from the start, at zero.
    pub fn new(
        options: MetricsOptions,
        probes: &[ProbeStatus],
        sensors: &[&Declaration],
        sensor_states: &[SensorStatus],
    ) -> Self {
        let r = Registry::new();
        let build = gauge_vec(&r, "nstrail_build_info", "Build of the running agent (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Self {
            events: counter_vec(&r, "nstrail_events_total", "Events reported, by type.", &["type"]),
            netns_created: counter_vec(
                &r,
                "nstrail_netns_created_total",
                "Network namespaces created, by the call that made them.",
                &["via"],
            ),
            sysctl_writes: counter_vec(
                &r,
                "nstrail_sysctl_writes_total",
                "Writes to /proc/sys by outcome; sysctl is one of the configured net.* names or other.",
                &["sysctl", "result"],
            ),
            device_moves: counter_vec(
                &r,
                "nstrail_device_moves_total",
                "Network devices moved between namespaces, by link kind (none for physical devices).",
                &["kind"],
            ),
            lost: counter_vec(
                &r,
                "nstrail_events_lost_total",
                "Events lost in the kernel (ring buffer full), by type.",
                &["type"],
            ),
            decode_errors: counter(&r, "nstrail_decode_errors_total", "Kernel records the agent could not decode."),
            probes: gauge_vec(
                &r,
                "nstrail_probes",
                "Probes by sensor, backend and state (attached, failed).",
                &["sensor", "backend", "state"],
            ),
            sensors: gauge_vec(
                &r,
                "nstrail_sensors",
                "Sensors by backend and state (attached, degraded, failed): 1 for the state each is in.",
                &["sensor", "backend", "state"],
            ),
            live_netns: gauge(&r, "nstrail_netns_live", "Network namespaces alive now."),
            without_processes: gauge(
                &r,
                "nstrail_netns_without_processes",
                "Live network namespaces (the host's aside) with no member process now, kept by a bind mount or an fd.",
            ),
            leaked: counter(
                &r,
                "nstrail_netns_leaked_total",
                "Namespaces that stayed without a member process for longer than [inventory] leak_age, claimed by no running container (netns_leaked records).",
            ),
            log_write_errors: counter(&r, "nstrail_log_write_errors_total", "Failed writes to the audit log."),
            audit_sealed: gauge(&r, "nstrail_audit_sealed", "1 when the audit log is sealed with a key."),
            audit_seal_epoch: gauge(&r, "nstrail_audit_seal_epoch", "Epoch of the last seal written to the audit log."),
            audit_last_sealed_seq: gauge(
                &r,
                "nstrail_audit_last_sealed_seq",
                "Sequence number of the last event covered by an audit log seal (0 before the first).",
            ),
            audit_last_seal_time: {
                let metric = Gauge::new(
                    "nstrail_audit_last_seal_timestamp_seconds",
                    "Unix time of the last seal written to the audit log (0 before the first).",
                )
                .expect("valid metric");
                r.register(Box::new(metric.clone())).expect("unique metric");
                metric
            },
            audit_log_reopened: counter_vec(
                &r,
                "nstrail_audit_log_reopened_total",
                "The audit log file was deleted, moved, replaced or truncated while the agent wrote it.",
                &["reason"],
            ),
            api_clients: gauge(&r, "nstrail_api_clients", "Clients connected to the local API."),
            api_client_drops: counter(
                &r,
                "nstrail_api_client_drops_total",
                "Events dropped for API clients that read too slowly.",
            ),
            api_clients_refused: counter(
                &r,
                "nstrail_api_clients_refused_total",
                "API clients sent away because the most served at once were connected (a silent one replaced, a stream over the limit, a connection with no place to free).",
            ),
            registry: r,
            options,
        };
        for reason in ["deleted", "moved", "replaced", "truncated"] {
            metrics.audit_log_reopened.with_label_values(&[reason]).inc_by(0);
        }
        for sensor in sensors {
            for kind in sensor.events {
                metrics.events.with_label_values(&[kind]).inc_by(0);
            }
            for kind in sensor.records.iter().map(|r| r.lost_as).chain(sensor.losses.iter().copied()) {
                metrics.lost.with_label_values(&[kind]).inc_by(0);
            }
        }
        for via in ALL_VIA {
            metrics.netns_created.with_label_values(&[via.as_str()]).inc_by(0);
        }
        let sysctls = metrics.options.sysctl_labels.iter().map(String::as_str).chain([OTHER]);
        for sysctl in sysctls {
            for result in ALL_RESULTS {
                metrics.sysctl_writes.with_label_values(&[sysctl, result.as_str()]).inc_by(0);
            }
        }
        for kind in KNOWN_DEVICE_KINDS {
            metrics.device_moves.with_label_values(&[kind]).inc_by(0);
        }
        // The agent's own records.
        for record in ["netns_leaked", "netns_identified"] {
            metrics.events.with_label_values(&[record]).inc_by(0);
        }
        for status in sensor_states {
            for state in [SensorState::Attached, SensorState::Degraded, SensorState::Failed] {
                let value = (status.state == state) as i64;
                metrics.sensors.with_label_values(&[&status.sensor, &status.backend, state.as_str()]).set(value);
            }
        }
        for probe in probes {
            for state in ["attached", "failed"] {
                metrics.probes.with_label_values(&[&probe.sensor, &probe.backend, state]).add(0);
            }
            let state = if probe.attached { "attached" } else { "failed" };
            metrics.probes.with_label_values(&[&probe.sensor, &probe.backend, state]).inc();
        }
        metrics
    }

    pub fn observe(&self, event: &Event) {
        self.events.with_label_values(&[event.body.type_name()]).inc();
        match &event.body {
            EventBody::NetnsCreate { via, .. } => {
                self.netns_created.with_label_values(&[via.as_str()]).inc();
            }
            EventBody::SysctlWrite { sysctl, result, .. } => {
                let label = if self.options.sysctl_labels.contains(sysctl) { sysctl.as_str() } else { OTHER };
                self.sysctl_writes.with_label_values(&[label, result.as_str()]).inc();
            }
            EventBody::DeviceMove { device, .. } => {
                self.device_moves.with_label_values(&[device.kind.as_deref().unwrap_or("none")]).inc();
            }
            EventBody::Lost { count, event_type } => self.lost.with_label_values(&[event_type]).inc_by(*count),
            EventBody::NetnsLeaked { .. } => self.leaked.inc(),
            _ => {}
        }
    }

    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// The exposition text, with the gauges that come from the inventory refreshed.
    pub fn render(&self, inventory: &Inventory) -> String {
        self.live_netns.set(inventory.live_count() as i64);
        self.without_processes.set(inventory.without_processes() as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        if self.options.netns_info {
            info_series(&inventory.info_labels(self.options.netns_info_limit), &mut text);
        }
        text
    }
}

/// The `nstrail_netns_info` family, written straight from the inventory:
/// kept in the registry, 10,000 series held 14 MiB of the agent's memory
/// between scrapes.
fn info_series(series: &[crate::inventory::InfoLabels], out: &mut String) {
    use std::fmt::Write;
    if series.is_empty() {
        return;
    }
    out.push_str("# HELP nstrail_netns_info One series per live namespace (opt-in, capped), always 1.\n");
    out.push_str("# TYPE nstrail_netns_info gauge\n");
    for l in series {
        let _ = writeln!(
            out,
            "nstrail_netns_info{{container=\"{}\",id=\"{}\",inode=\"{}\",name=\"{}\",pod=\"{}\"}} 1",
            label_value(&l.container),
            label_value(&l.id),
            label_value(&l.inode),
            label_value(&l.name),
            label_value(&l.pod)
        );
    }
}

/// A label value as the text format wants it: backslash, double quote and
/// line feed escaped.
fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_series_escape_label_values() {
        let series = [crate::inventory::InfoLabels {
            inode: "4026532000".into(),
            id: "12".into(),
            name: "a\\x1b\"b\nc".into(),
            container: String::new(),
            pod: "shop/web".into(),
        }];
        let mut text = String::new();
        info_series(&series, &mut text);
        assert_eq!(
            text.lines().last(),
            Some(r#"nstrail_netns_info{container="",id="12",inode="4026532000",name="a\\x1b\"b\nc",pod="shop/web"} 1"#)
        );
        let mut none = String::new();
        info_series(&[], &mut none);
        assert!(none.is_empty(), "no family without series");
    }

    /// A new variant stops the build here until it is in the lists too.
    #[test]
    fn every_variant_is_listed() {
        for (i, via) in ALL_VIA.into_iter().enumerate() {
            let at = match via {
                CreateVia::Unshare => 0,
                CreateVia::Clone => 1,
                CreateVia::Clone3 => 2,
                CreateVia::Fork => 3,
                CreateVia::Vfork => 4,
                CreateVia::Unknown => 5,
            };
            assert_eq!(at, i);
        }
        for (i, result) in ALL_RESULTS.into_iter().enumerate() {
            let at = match result {
                SysctlResult::Applied => 0,
                SysctlResult::Rejected => 1,
                SysctlResult::Denied => 2,
                SysctlResult::Unknown => 3,
            };
            assert_eq!(at, i);
        }
    }

    #[test]
    fn counters_with_known_labels_start_at_zero() {
        let options = MetricsOptions {
            sysctl_labels: ["net.ipv4.ip_forward".to_owned()].into_iter().collect(),
            ..Default::default()
        };
        let text = Metrics::new(options, &[], &[], &[]).render(&Inventory::default());
        for via in ["unshare", "clone", "clone3", "fork", "vfork", "unknown"] {
            assert!(text.contains(&format!("nstrail_netns_created_total{{via=\"{via}\"}} 0\n")), "{via}: {text}");
        }
        for sysctl in ["net.ipv4.ip_forward", "other"] {
            for result in ["applied", "rejected", "denied", "unknown"] {
                let series = format!("nstrail_sysctl_writes_total{{result=\"{result}\",sysctl=\"{sysctl}\"}} 0\n");
                assert!(text.contains(&series), "{series}: {text}");
            }
        }
        assert_eq!(text.matches("nstrail_sysctl_writes_total{").count(), 8, "only configured names and other");
        for kind in ["veth", "none"] {
            assert!(text.contains(&format!("nstrail_device_moves_total{{kind=\"{kind}\"}} 0\n")), "{kind}: {text}");
        }
    }
}
