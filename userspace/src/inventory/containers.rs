//! Which container a process belongs to, from its cgroup path.

use crate::event::Container;

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `pod<uid>` (cgroupfs driver) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_uid(component: &str) -> Option<String> {
    let rest = component.strip_suffix(".slice").unwrap_or(component);
    let uid = rest.rsplit_once("-pod").map(|(_, u)| u).or_else(|| rest.strip_prefix("pod"))?;
    (uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_'))
        .then(|| uid.replace('_', "-"))
}

/// The container of a cgroup path (as in /proc/PID/cgroup), if it is one.
/// `runc_ids` tells whether a bare path component names a container of
/// standalone runc (a directory under /run/runc).
pub fn from_cgroup_path(path: &str, runc_ids: &dyn Fn(&str) -> bool) -> Option<Container> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let pod = components.iter().find_map(|c| pod_uid(c));
    let in_kubepods = components.iter().any(|c| c.starts_with("kubepods"));
    let make =
        |runtime: &str, id: &str| Container { runtime: runtime.to_owned(), id: id.to_owned(), pod_uid: pod.clone() };

    for component in components.iter().rev() {
        let scope = component.strip_suffix(".scope").unwrap_or(component);
        for (prefix, runtime) in
            [("docker-", "docker"), ("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("libpod-", "podman")]
        {
            if let Some(id) = scope.strip_prefix(prefix) {
                if is_container_id(id) {
                    return Some(make(runtime, id));
                }
            }
        }
        if let Some(name) = component.strip_prefix("systemd-nspawn@").and_then(|c| c.strip_suffix(".service")) {
            return Some(make("systemd-nspawn", name));
        }
        if let Some(name) = component.strip_prefix("machine-").and_then(|c| c.strip_suffix(".scope")) {
            return Some(make("systemd-nspawn", &name.replace("\\x2d", "-")));
        }
    }
    let last = *components.last()?;
    if is_container_id(last) {
        // cgroupfs layouts: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>
        let runtime = if in_kubepods {
            "kubernetes"
        } else if components.contains(&"docker") {
            "docker"
        } else {
            "unknown"
        };
        if runtime != "unknown" || runc_ids(last) {
            return Some(make(if runtime == "unknown" { "runc" } else { runtime }, last));
        }
    }
    runc_ids(last).then(|| make("runc", last))
}

/// The cgroup path of a process from its /proc/PID/cgroup entries: the
/// unified (v2) path when it says anything, else the first named v1 path.
pub fn cgroup_path(groups: &[procfs::ProcessCGroup]) -> Option<String> {
    let mut fallback = None;
    for group in groups {
        if group.pathname == "/" || group.pathname.is_empty() {
            continue;
        }
        if group.hierarchy == 0 {
            return Some(group.pathname.clone());
        }
        fallback.get_or_insert_with(|| group.pathname.clone());
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "41ab0c5e3f2d9a7b8c6e1f0a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e";
    const UID: &str = "3f2a1b4c-5d6e-4f70-8192-a3b4c5d6e7f8";

    fn attribute(path: &str) -> Option<(String, String, Option<String>)> {
        from_cgroup_path(path, &|id| id == "mybox").map(|c| (c.runtime, c.id, c.pod_uid))
    }

    #[test]
    fn real_world_cgroup_paths() {
        let uid_systemd = UID.replace('-', "_");
        type Expected<'a> = Option<(&'a str, &'a str, Option<&'a str>)>;
        let table: Vec<(String, Expected)> = vec![
            (format!("/system.slice/docker-{ID}.scope"), Some(("docker", ID, None))),
            (format!("/docker/{ID}"), Some(("docker", ID, None))),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_systemd}.slice/cri-containerd-{ID}.scope"),
                Some(("containerd", ID, Some(UID))),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_systemd}.slice/crio-{ID}.scope"),
                Some(("cri-o", ID, Some(UID))),
            ),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Some(("kubernetes", ID, Some(UID)))),
            (format!("/kubepods.slice/kubepods-pod{uid_systemd}.slice/docker-{ID}.scope"), Some(("docker", ID, Some(UID)))),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some(("podman", ID, None))),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Some(("podman", ID, None))),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            ("/machine.slice/systemd-nspawn@web.service/payload".into(), Some(("systemd-nspawn", "web", None))),
            ("/machine.slice/machine-db\\x2d1.scope".into(), Some(("systemd-nspawn", "db-1", None))),
            ("/mybox".into(), Some(("runc", "mybox", None))),
            ("/user.slice/user-0.slice/session-3.scope".into(), None),
            ("/system.slice/containerd.service".into(), None),
            ("/".into(), None),
        ];
        for (path, expected) in table {
            let expected = expected.map(|(r, i, p)| (r.to_owned(), i.to_owned(), p.map(str::to_owned)));
            assert_eq!(attribute(&path), expected, "{path}");
        }
    }

    #[test]
    fn picks_the_unified_path_then_v1() {
        let groups = |entries: &[(u32, &str)]| -> Vec<procfs::ProcessCGroup> {
            entries
                .iter()
                .map(|(hierarchy, path)| procfs::ProcessCGroup {
                    hierarchy: *hierarchy,
                    controllers: Vec::new(),
                    pathname: path.to_string(),
                })
                .collect()
        };
        assert_eq!(
            cgroup_path(&groups(&[(12, "/a"), (0, "/system.slice/x.scope")])).as_deref(),
            Some("/system.slice/x.scope")
        );
        assert_eq!(cgroup_path(&groups(&[(9, "/mybox"), (8, "/mybox"), (0, "/")])).as_deref(), Some("/mybox"));
        assert_eq!(cgroup_path(&groups(&[(0, "/")])), None);
    }
}
