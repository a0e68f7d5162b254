//! The Kubernetes base (deploy/kubernetes/base): the manifests validate
//! against the Kubernetes (and Prometheus Operator) schemas and refer to
//! each other correctly, and the ConfigMap's config is the example config
//! (every default) but for what Kubernetes needs. The image run with the
//! DaemonSet's access: deploy_image.rs.

mod deploy_support;

use std::process::Command;

use deploy_support::{artefacts::base, checked, python_tool, workspace, yaml};

#[test]
fn the_example_config_is_every_default_and_the_configmap_only_changes_what_kubernetes_needs() {
    let example = std::fs::read_to_string(workspace().join("deploy/config/nstrail.toml")).unwrap();
    let parsed = nstrail::config::Config::parse(&example).expect("example config parses");
    assert_eq!(format!("{parsed:?}"), format!("{:?}", nstrail::config::Config::default()));
    let configmap = yaml(&base("configmap.yaml"));
    let text = configmap["data"]["nstrail.toml"].as_str().expect("nstrail.toml in the ConfigMap");
    let parsed = nstrail::config::Config::parse(text).expect("ConfigMap config parses");
    assert_eq!(parsed.metrics_listen, Some("0.0.0.0:9717".parse().unwrap()));
    let mut as_default = parsed.clone();
    as_default.metrics_listen = nstrail::config::Config::default().metrics_listen;
    assert_eq!(format!("{as_default:?}"), format!("{:?}", nstrail::config::Config::default()));
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas_and_fit_together() {
    let kustomization = yaml(&base("kustomization.yaml"));
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(base("."))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    listed.sort();
    present.sort();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");

    let (mut core, mut operator) = (Vec::new(), Vec::new());
    let mut by_kind = std::collections::BTreeMap::new();
    for file in &listed {
        let doc = yaml(&base(file));
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        assert!(doc["metadata"]["name"] == "nstrail", "{file}: named nstrail");
        if kind != "Namespace" {
            assert_eq!(doc["metadata"]["namespace"], "nstrail", "{file}");
        }
        if doc["apiVersion"].as_str().unwrap().starts_with("monitoring.coreos.com/") {
            operator.push(base(file));
        } else {
            core.push(base(file));
        }
        by_kind.insert(kind, doc);
    }
    // The oldest Kubernetes with securityContext.appArmorProfile, and the newest the validator knows.
    for version in ["1.30.0", "1.37.0"] {
        let mut validate = Command::new(python_tool("kubernetes-validate"));
        validate.args(["--strict", "--kubernetes-version", version]).args(&core);
        let out = checked(validate);
        assert_eq!(out.lines().filter(|l| l.contains(" passed for resource ")).count(), core.len(), "{out}");
    }
    let mut crds = Command::new(python_tool("python"));
    crds.arg(workspace().join("tests/deploy_support/operator_crds.py")).args(&operator);
    let out = checked(crds);
    assert_eq!(out.lines().filter(|l| l.ends_with(" valid")).count(), 2, "{out}");

    // They refer to each other correctly.
    let ds = &by_kind["DaemonSet"];
    let pod = &ds["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "nstrail");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "nstrail");
    assert_eq!(pod["spec"]["serviceAccountName"], by_kind["ServiceAccount"]["metadata"]["name"]);
    let config_volume =
        pod["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["configMap"].is_object()).expect("config volume");
    assert_eq!(config_volume["configMap"]["name"], by_kind["ConfigMap"]["metadata"]["name"]);
    let service = &by_kind["Service"];
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"], "nstrail");
    let port = &service["spec"]["ports"][0];
    assert_eq!(port["targetPort"], container["ports"][0]["name"]);
    assert_eq!(container["ports"][0]["containerPort"], 9717);
    let monitor = &by_kind["ServiceMonitor"];
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        service["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], port["name"]);
    assert_eq!(by_kind["Namespace"]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "privileged");
    assert!(pod["spec"]["hostNetwork"] == true && pod["spec"]["hostPID"] == true);
    assert!(container["securityContext"]["privileged"].is_null(), "capabilities, not privileged");
}
