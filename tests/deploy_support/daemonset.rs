//! The DaemonSet as Docker arguments, for the image tests (deploy_image.rs).

use std::path::{Path, PathBuf};

use super::{
    artefacts::{base, daemonset},
    free_port, yaml,
};

/// How the DaemonSet's container would run under Docker: the same host
/// namespaces, user, root file system, capabilities, seccomp and AppArmor
/// settings, mounts and arguments. Host paths of the agent's own folders
/// (log, socket) are moved under `state` so a real agent on this host is
/// left alone, and the ConfigMap's metrics address becomes a free loopback
/// port. Anything in the manifest this does not know how to mirror fails
/// the test rather than being dropped.
pub struct DaemonSetRun {
    pub args: Vec<String>,
    pub command: Vec<String>,
    pub metrics_port: u16,
    pub socket: PathBuf,
    created: Vec<PathBuf>,
    shared: Vec<PathBuf>,
}

/// Whether the mount `path` lives on propagates (shared or slave), as
/// HostToContainer needs: systemd makes every mount shared; hosts without
/// it (this VM's / is private) need the folder made a shared mount, as
/// `ip netns` does for /run/netns.
fn propagates(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let on = mounts
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let point = *fields.get(4)?;
            path.starts_with(point).then(|| {
                (
                    point.len(),
                    fields
                        .iter()
                        .skip(6)
                        .take_while(|f| **f != "-")
                        .any(|f| f.starts_with("shared:") || f.starts_with("master:")),
                )
            })
        })
        .max_by_key(|(len, _)| *len);
    on.is_some_and(|(_, propagates)| propagates)
}

fn make_shared_mount(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated path, no data.
    unsafe {
        assert_eq!(libc::mount(c.as_ptr(), c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()), 0);
        assert_eq!(libc::mount(std::ptr::null(), c.as_ptr(), std::ptr::null(), libc::MS_SHARED, std::ptr::null()), 0);
    }
}

impl DaemonSetRun {
    pub fn from_manifest(state: &Path, drop_capability: Option<&str>) -> Self {
        let ds = daemonset();
        let configmap = yaml(&base("configmap.yaml"));
        let pod = &ds["spec"]["template"]["spec"];
        let known_pod = [
            "serviceAccountName",
            "automountServiceAccountToken",
            "hostNetwork",
            "hostPID",
            "dnsPolicy",
            "priorityClassName",
            "tolerations",
            "terminationGracePeriodSeconds",
            "containers",
            "volumes",
        ];
        for key in pod.as_object().unwrap().keys() {
            assert!(
                known_pod.contains(&key.as_str()),
                "pod spec field {key}: mirror it in tests/deploy_support/daemonset.rs"
            );
        }
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        let container = &pod["containers"][0];
        let mut args: Vec<String> = vec!["--rm".into()];
        if pod["hostNetwork"] == true {
            args.extend(["--network".into(), "host".into()]);
        }
        if pod["hostPID"] == true {
            args.extend(["--pid".into(), "host".into()]);
        }
        let sc = &container["securityContext"];
        for key in sc.as_object().unwrap().keys() {
            assert!(
                [
                    "runAsUser",
                    "runAsGroup",
                    "readOnlyRootFilesystem",
                    "capabilities",
                    "seccompProfile",
                    "appArmorProfile"
                ]
                .contains(&key.as_str()),
                "securityContext field {key}: mirror it in tests/deploy_support/daemonset.rs"
            );
        }
        args.push(format!("--user={}:{}", sc["runAsUser"], sc["runAsGroup"]));
        if sc["readOnlyRootFilesystem"] == true {
            args.push("--read-only".into());
        }
        for cap in sc["capabilities"]["drop"].as_array().unwrap() {
            args.push(format!("--cap-drop={}", cap.as_str().unwrap()));
        }
        for cap in sc["capabilities"]["add"].as_array().unwrap() {
            let cap = cap.as_str().unwrap();
            if Some(cap) != drop_capability {
                args.push(format!("--cap-add={cap}"));
            }
        }
        // RuntimeDefault is Docker's default seccomp profile.
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(sc["appArmorProfile"]["type"], "Unconfined");
        args.push("--security-opt=apparmor=unconfined".into());
        // Kubernetes gives containers a cgroup namespace of their own on cgroup v2.
        args.push("--cgroupns=private".into());

        let metrics_port = free_port();
        let config_dir = state.join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        for (file, text) in configmap["data"].as_object().unwrap() {
            let text = text.as_str().unwrap().replace("0.0.0.0:9717", &format!("127.0.0.1:{metrics_port}"));
            std::fs::write(config_dir.join(file), text).unwrap();
        }
        let mut socket = None;
        let (mut created, mut shared) = (Vec::new(), Vec::new());
        let mounts = container["volumeMounts"].as_array().unwrap();
        for volume in pod["volumes"].as_array().unwrap() {
            let name = volume["name"].as_str().unwrap();
            let mount = mounts.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("volume {name} unmounted"));
            let target = mount["mountPath"].as_str().unwrap();
            let source = if volume["configMap"].is_object() {
                config_dir.clone()
            } else {
                let host = volume["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("volume {name}: mirror it"));
                let source = if ["/var/log/nstrail", "/run/nstrail"].contains(&host) {
                    state.join(name)
                } else {
                    PathBuf::from(host)
                };
                if volume["hostPath"]["type"] == "DirectoryOrCreate" && !source.exists() {
                    // Made as kubelet would; removed again (deepest first) when the run ends.
                    let mut missing: Vec<PathBuf> =
                        source.ancestors().take_while(|a| !a.exists()).map(Path::to_path_buf).collect();
                    std::fs::create_dir_all(&source).unwrap();
                    if !source.starts_with(state) {
                        created.append(&mut missing);
                    }
                }
                if target == "/run/nstrail" {
                    socket = Some(source.join("nstrail.sock"));
                }
                source
            };
            let mut spec = format!("type=bind,source={},target={target}", source.display());
            if mount["readOnly"] == true {
                spec.push_str(",readonly");
            }
            match mount["mountPropagation"].as_str() {
                Some("HostToContainer") => {
                    if !propagates(&source) {
                        make_shared_mount(&source);
                        shared.push(source.clone());
                    }
                    spec.push_str(",bind-propagation=rslave")
                }
                None => {}
                Some(other) => panic!("mountPropagation {other}: mirror it"),
            }
            args.extend(["--mount".into(), spec]);
        }
        let command = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
        Self { args, command, metrics_port, socket: socket.expect("socket volume"), created, shared }
    }
}

impl Drop for DaemonSetRun {
    fn drop(&mut self) {
        for path in &self.shared {
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        // Host folders this run made the way kubelet would (DirectoryOrCreate), if still empty.
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
