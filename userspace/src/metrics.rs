//! Prometheus metrics, served over HTTP at /metrics on a loopback address.
//! Counters carry small bounded labels only; namespace identity appears
//! only in the opt-in, capped `nstrail_netns_info` series.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    event::{Event, EventBody, ProbeStatus},
    inventory::Inventory,
};

/// Label value for net.* sysctls outside the configured set, and for non-net ones.
const OTHER: &str = "other";

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
    live_netns: IntGauge,
    netns_info: IntGaugeVec,
    /// Incremented by the audit log when a write fails.
    pub log_write_errors: IntCounter,
    /// Connected API clients.
    pub api_clients: IntGauge,
    /// Events dropped for API clients that read too slowly.
    pub api_client_drops: IntCounter,
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
    pub fn new(options: MetricsOptions, probes: &[ProbeStatus]) -> Self {
        let r = Registry::new();
        let build = gauge_vec(&r, "nstrail_build_info", "Build of the running agent (always 1).", &["version"]);
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Self {
            events: counter_vec(&r, "nstrail_events_total", "Events reported, by type.", &["type"]),
            netns_created: counter_vec(&r, "nstrail_netns_created_total", "Network namespaces created, by the call that made them.", &["via"]),
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
            lost: counter_vec(&r, "nstrail_events_lost_total", "Events lost in the kernel (ring buffer full), by type.", &["type"]),
            decode_errors: counter(&r, "nstrail_decode_errors_total", "Kernel records the agent could not decode."),
            probes: gauge_vec(&r, "nstrail_probes", "Probes by state (attached, failed).", &["state"]),
            live_netns: gauge(&r, "nstrail_netns_live", "Network namespaces alive now."),
            netns_info: gauge_vec(
                &r,
                "nstrail_netns_info",
                "One series per live namespace (opt-in, capped), always 1.",
                &["inode", "id", "name", "container"],
            ),
            log_write_errors: counter(&r, "nstrail_log_write_errors_total", "Failed writes to the audit log."),
            api_clients: gauge(&r, "nstrail_api_clients", "Clients connected to the local API."),
            api_client_drops: counter(&r, "nstrail_api_client_drops_total", "Events dropped for API clients that read too slowly."),
            registry: r,
            options,
        };
        // Every series a dashboard alerts on exists from the start, at zero.
        for kind in ["netns_create", "netns_enter", "netns_destroy", "sysctl_write", "device_move", "veth_create"] {
            metrics.events.with_label_values(&[kind]).inc_by(0);
        }
        for kind in ["netns_create", "netns_enter", "netns_destroy", "sysctl_write", "device_actor", "device_notification"] {
            metrics.lost.with_label_values(&[kind]).inc_by(0);
        }
        let attached = probes.iter().filter(|p| p.attached).count() as i64;
        metrics.probes.with_label_values(&["attached"]).set(attached);
        metrics.probes.with_label_values(&["failed"]).set(probes.len() as i64 - attached);
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
            _ => {}
        }
    }

    pub fn decode_error(&self) {
        self.decode_errors.inc();
    }

    /// The exposition text, with the gauges that come from the inventory refreshed.
    pub fn render(&self, inventory: &Inventory) -> String {
        self.live_netns.set(inventory.live_count() as i64);
        self.netns_info.reset();
        if self.options.netns_info {
            for (inode, id, name, container) in inventory.info_labels(self.options.netns_info_limit) {
                self.netns_info.with_label_values(&[&inode, &id, &name, &container]).set(1);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves GET /metrics until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, inventory: Arc<Mutex<Inventory>>) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let (metrics, inventory) = (metrics.clone(), inventory.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &inventory)).await;
            });
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, inventory: &Mutex<Inventory>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method != "GET" {
        ("405 Method Not Allowed", "text/plain", "only GET is served\n".to_owned())
    } else if target == "/metrics" || target.starts_with("/metrics?") {
        let text = metrics.render(&inventory.lock().expect("inventory lock"));
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text)
    } else {
        ("404 Not Found", "text/plain", "nstrail serves /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener; a clear error when the address is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr).await.map_err(|source| crate::Error::MetricsBind { addr, source })
}
