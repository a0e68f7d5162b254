//! Prometheus for real: Debian's Prometheus server scrapes the real agent;
//! every query of the shipped Grafana dashboard and every alert rule is
//! asked through its HTTP API after known actions. promtool checks and unit
//! tests the rules.

mod deploy_support;

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use deploy_support::{checked, free_port, http_get, url_encode, workspace, yaml, yaml_documents};
use nstrail_tests::{NamedNetns, RunningAgent};

fn rules_file() -> PathBuf {
    workspace().join("deploy/prometheus/nstrail.rules.yml")
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let mut check = Command::new("promtool");
    check.arg("check").arg("rules").arg(rules_file());
    let out = checked(check);
    assert!(out.contains("SUCCESS: 4 rules found"), "{out}");
    let mut test = Command::new("promtool");
    test.args(["test", "rules"]).arg(workspace().join("deploy/prometheus/nstrail.rules.test.yml"));
    let out = checked(test);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_prometheus_rule_resource_holds_the_same_rules() {
    let rules = yaml(&rules_file());
    let resource = yaml(&workspace().join("deploy/kubernetes/base/prometheusrule.yaml"));
    assert_eq!(resource["kind"], "PrometheusRule");
    assert_eq!(resource["spec"]["groups"], rules["groups"], "edit both files together");
}

/// Debian's Prometheus with its own storage, stopped and removed on drop.
struct Prometheus {
    child: std::process::Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nstrail-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: nstrail\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules_file().display()
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (Debian's package prometheus)");
        let prometheus = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(port, "/-/ready").is_none() {
            assert!(Instant::now() < deadline, "prometheus not ready: {}", prometheus.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`: the result list of an instant query (fails the test on an error).
    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let body = http_get(self.port, &format!("/api/v1/query?query={}", url_encode(promql)))
            .unwrap_or_else(|| panic!("query failed: {promql}\n{}", self.log()));
        let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON reply");
        assert_eq!(reply["status"], "success", "{promql}: {reply}");
        reply["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of every series of a query, with its labels.
    fn values(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        self.query(promql)
            .into_iter()
            .map(|s| {
                let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).expect("sample value");
                (s["metric"].clone(), value)
            })
            .collect()
    }

    fn scalar(&self, promql: &str) -> f64 {
        let values = self.values(promql);
        assert_eq!(values.len(), 1, "{promql}: one series: {values:?}");
        values[0].1
    }

    fn wait_for(&self, what: &str, promql: &str, done: impl Fn(&[(serde_json::Value, f64)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let values = self.values(promql);
            if done(&values) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {promql} = {values:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own, still running, child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A query with the dashboard's variables set as Grafana would: this job
/// and instance selected, `$__rate_interval` and `$__range` given.
fn expand(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", "20s")
        .replace("$__range", "1m")
        .replace("$job", "nstrail")
        .replace("$instance", instance)
}

/// `sysctl -w` from a copy of sysctl(8) with a name of its own, so the
/// policy rule denying it touches nobody else's writes.
fn denied_writer(dir: &std::path::Path) -> PathBuf {
    let sysctl = ["/usr/sbin/sysctl", "/sbin/sysctl"].into_iter().find(|p| std::path::Path::new(p).exists());
    let copy = dir.join("ntdenywriter");
    std::fs::copy(sysctl.expect("sysctl (procps)"), &copy).expect("copy sysctl");
    copy
}

#[test]
fn prometheus_gets_data_for_every_dashboard_query_and_alert_after_known_actions() {
    nstrail_tests::require_root();
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("nstrail-promtest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let writer = denied_writer(&dir);
    let config = dir.join("nstrail.toml");
    std::fs::write(
        &config,
        "[sysctl_policy]\nenabled = true\n\n[[sysctl_policy.rules]]\naction = \"deny\"\n\
         sysctl = \"net.ipv4.tcp_keepalive_probes\"\nnetns = \"other\"\ncomm = \"ntdenywriter\"\n",
    )
    .expect("config");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let socket = dir.join("api.sock");
    let agent = RunningAgent::start_with(
        &socket,
        &["--metrics-listen", &target, "--config", config.to_str().unwrap(), "--no-audit-log"],
    );
    let prometheus = Prometheus::start(&target);
    // Two scrapes of the fresh agent first: every counter it starts at 0 is on record.
    prometheus.wait_for("two scrapes", "count_over_time(nstrail_build_info[1m])", |v| v.iter().any(|(_, n)| *n >= 2.0));

    // Known actions: 5 namespaces made and destroyed, a veth moved, a
    // sysctl applied, one rejected by the kernel, one denied by policy.
    let mut namespaces: Vec<NamedNetns> = (0..5).map(|_| NamedNetns::add("prom").0).collect();
    let veth = nstrail_tests::HostVeth::add();
    nstrail_tests::run_ok("ip", &["link", "set", &veth.peer, "netns", &namespaces[0].name]);
    let ns = namespaces[0].name.clone();
    nstrail_tests::run_ok("ip", &["netns", "exec", &ns, "sysctl", "-q", "-w", "net.ipv4.tcp_keepalive_time=601"]);
    let rejected = nstrail_tests::run("ip", &["netns", "exec", &ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=abc"]);
    assert!(!rejected.success, "the kernel refuses abc");
    let denied = nstrail_tests::run(
        "ip",
        &["netns", "exec", &ns, writer.to_str().unwrap(), "-q", "-w", "net.ipv4.tcp_keepalive_probes=5"],
    );
    assert!(!denied.success, "the policy refuses the write");
    // Three scrapes, then the issue's own query: the first creates count.
    std::thread::sleep(Duration::from_secs(3));
    let created = prometheus.scalar("sum(increase(nstrail_netns_created_total[20s]))");
    assert!(
        created >= 5.0,
        "sum(increase(nstrail_netns_created_total[20s])) = {created} after 5 `ip netns add`: \
         counters whose label values are known must start at 0"
    );
    let ids: Vec<u64> = namespaces.iter().map(|n| n.identity().id).collect();
    let deleting = Instant::now();
    for namespace in &mut namespaces {
        namespace.delete();
    }
    drop(veth);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = agent.lines.lock().unwrap().clone();
        let destroyed = |id: &u64| lines.iter().any(|l| l["type"] == "netns_destroy" && l["netns"]["id"] == *id);
        if ids.iter().all(destroyed) {
            break;
        }
        assert!(Instant::now() < deadline, "the agent saw the 5 destroys");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("prometheus: 5 destroys seen {:?} after the deletes", deleting.elapsed());
    // Three more scrapes and rule evaluations.
    std::thread::sleep(Duration::from_secs(3));

    // Every query of the dashboard returns data; the ones our actions feed, at least what we did.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace().join("deploy/grafana/nstrail.json")).unwrap())
            .expect("dashboard JSON");
    let mut checked_queries = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        for target_query in panel["targets"].as_array().expect("targets") {
            let expr = expand(target_query["expr"].as_str().expect("expr"), &target);
            let values = prometheus.values(&expr);
            assert!(!values.is_empty(), "dashboard panel {title:?}: no data for {expr}");
            checked_queries += 1;
            let sum_where = |label: &str, value: &str| -> f64 {
                values.iter().filter(|(m, _)| m[label] == value).map(|(_, v)| v).sum()
            };
            let total: f64 = values.iter().map(|(_, v)| v).sum();
            match title {
                "Live namespaces" => assert!(total >= 1.0, "{title}: {values:?}"),
                "Created" | "Destroyed" => assert!(total >= 5.0, "{title}: {values:?}"),
                "Sysctl writes denied" => assert!(total >= 1.0, "{title}: {values:?}"),
                "Failed probes" => assert_eq!(total, 0.0, "{title}: {values:?}"),
                "Creates by call" => assert!(sum_where("via", "unshare") > 0.0, "{title}: {values:?}"),
                "Destroys" => assert!(total > 0.0, "{title}: {values:?}"),
                "Sysctl writes by result" => {
                    for result in ["applied", "rejected", "denied"] {
                        assert!(sum_where("result", result) > 0.0, "{title}: {result}: {values:?}");
                    }
                }
                "Sysctl writes by name" => {
                    let applied = values
                        .iter()
                        .find(|(m, _)| m["sysctl"] == "net.ipv4.tcp_keepalive_time" && m["result"] == "applied");
                    assert!(applied.is_some_and(|(_, v)| *v >= 1.0), "{title}: {values:?}");
                }
                "Device moves by kind" => assert!(sum_where("kind", "veth") > 0.0, "{title}: {values:?}"),
                "Probes" => {
                    assert!(sum_where("state", "attached") >= 3.0, "{title}: {values:?}");
                    assert_eq!(sum_where("state", "failed"), 0.0, "{title}: {values:?}");
                }
                "Sensors" => {
                    assert_eq!(values.len(), 3, "{title}: one row per sensor: {values:?}");
                    assert!(values.iter().all(|(m, _)| m["state"] == "attached"), "{title}: {values:?}");
                }
                // Series exist at 0 from the start (nothing is lost on a healthy run).
                "Lost events" | "Lost events by type" => {}
                "Live namespaces by host" => assert!(total >= 1.0, "{title}: {values:?}"),
                other => panic!("a dashboard panel this test does not know: {other:?}: add its check"),
            }
        }
    }
    assert_eq!(checked_queries, 15);

    // Every alert rule: evaluated without error, and its expression (without
    // the threshold) returns data, except the one whose metric is not there yet.
    let rules = yaml_documents(&rules_file()).remove(0);
    let body = http_get(prometheus.port, "/api/v1/rules?type=alert").expect("rules API");
    let reply: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
    let loaded: Vec<serde_json::Value> = reply["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let shipped: Vec<serde_json::Value> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(loaded.len(), shipped.len(), "{reply}");
    for rule in &shipped {
        let name = rule["alert"].as_str().expect("alert name");
        let live = loaded.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} not loaded: {reply}"));
        assert_eq!(live["health"], "ok", "{name}: {live}");
        let expr = rule["expr"].as_str().expect("expr").trim();
        let (query, threshold) = expr.rsplit_once(' ').expect("EXPR OP THRESHOLD");
        let (query, op) = query.trim_end().rsplit_once(' ').expect("EXPR OP THRESHOLD");
        assert!(["==", ">", "<", ">=", "<=", "!="].contains(&op) && threshold.parse::<f64>().is_ok(), "{name}: {expr}");
        if name == "NstrailNetnsWithoutProcessesGrowing" {
            // nstrail_netns_without_processes comes with pod identity (CRI); checked by promtool only.
            continue;
        }
        let values = prometheus.values(query);
        assert!(!values.is_empty(), "alert {name}: no data for {query}");
        match name {
            "NstrailProbesFailed" => {
                assert!(values.iter().all(|(_, v)| *v == 0.0), "{name}: {values:?}");
                assert_eq!(live["state"], "inactive", "{name}: {live}");
            }
            "NstrailDown" => {
                assert_eq!(values.iter().map(|(_, v)| v).sum::<f64>(), 1.0, "{name}: {values:?}");
                assert_eq!(live["state"], "inactive", "{name}: {live}");
            }
            // Zero series for every type; whether it fires depends on the
            // load others put on this machine, so only its data is checked.
            "NstrailEventsLost" => assert!(values.len() >= 3, "{name}: {values:?}"),
            other => panic!("an alert this test does not know: {other}: add its check"),
        }
    }
    drop(prometheus);
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("prometheus: test took {:?}", started.elapsed());
}
