//! The Kubernetes container runtime interface (CRI v1, `runtime.v1.RuntimeService`)
//! of containerd or CRI-O, over its Unix socket: which pod sandboxes exist
//! and the network namespace each runs in. What kubelet reads, read the
//! same way; nothing is changed through it.

pub mod grpc;
pub mod proto;

use std::path::{Path, PathBuf};

use proto::{Message, Writer};

/// Where containerd and CRI-O listen by default, tried in this order.
pub const DEFAULT_SOCKETS: &[&str] = &["/run/containerd/containerd.sock", "/run/crio/crio.sock"];

/// A reply above this is refused (a node has hundreds of pods, not millions).
const MAX_REPLY: usize = 16 << 20;

const LIST_POD_SANDBOX: &str = "/runtime.v1.RuntimeService/ListPodSandbox";
const POD_SANDBOX_STATUS: &str = "/runtime.v1.RuntimeService/PodSandboxStatus";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the container runtime at {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("container runtime at {}: {message}", socket.display())]
    Transport { socket: PathBuf, message: String },
    #[error("{method}: the runtime answered gRPC status {code}: {message}")]
    Status { method: &'static str, code: u32, message: String },
    #[error("{method}: {source}")]
    Reply { method: &'static str, source: proto::Malformed },
}

/// A pod sandbox as the runtime lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// SANDBOX_READY (its network namespace is set up).
    pub ready: bool,
}

/// A connection to the runtime service.
pub struct Runtime {
    channel: grpc::Channel,
}

impl Runtime {
    pub async fn connect(socket: &Path) -> Result<Self, CriError> {
        Ok(Self { channel: grpc::Channel::connect(socket).await? })
    }

    /// One call with an encoded request (for methods this module has no
    /// function for); the encoded reply.
    pub async fn call(&mut self, method: &'static str, request: &[u8]) -> Result<Vec<u8>, CriError> {
        self.channel.call(method, request).await
    }

    /// Every pod sandbox (ready or not) the runtime knows.
    pub async fn pod_sandboxes(&mut self) -> Result<Vec<Sandbox>, CriError> {
        let reply = self.call(LIST_POD_SANDBOX, &[]).await?;
        let malformed = |source| CriError::Reply { method: LIST_POD_SANDBOX, source };
        let reply = Message::parse(&reply).map_err(malformed)?;
        let mut sandboxes = Vec::new();
        // ListPodSandboxResponse { repeated PodSandbox items = 1 }
        // PodSandbox { id = 1, metadata = 2 { name = 1, uid = 2, namespace = 3 }, state = 3 }
        for item in reply.messages(1).map_err(malformed)? {
            let metadata = item.message(2).map_err(malformed)?;
            sandboxes.push(Sandbox {
                id: item.string(1),
                name: metadata.string(1),
                uid: metadata.string(2),
                namespace: metadata.string(3),
                ready: item.uint(3) == 0,
            });
        }
        Ok(sandboxes)
    }

    /// The network namespace a sandbox runs in: the path the runtime gave
    /// its runtime spec (`/var/run/netns/cni-…` with containerd), from the
    /// verbose status. `None` when the runtime does not say.
    pub async fn sandbox_netns(&mut self, id: &str) -> Result<Option<PathBuf>, CriError> {
        let mut request = Writer::new();
        // PodSandboxStatusRequest { pod_sandbox_id = 1, verbose = 2 }
        request.string(1, id).uint(2, 1);
        let reply = self.call(POD_SANDBOX_STATUS, &request.into_bytes()).await?;
        let malformed = |source| CriError::Reply { method: POD_SANDBOX_STATUS, source };
        // PodSandboxStatusResponse { status = 1, map<string, string> info = 2 }
        let info = Message::parse(&reply).and_then(|r| r.map(2)).map_err(malformed)?;
        Ok(info.iter().find(|(key, _)| key == "info").and_then(|(_, json)| netns_of_info(json)))
    }
}

/// The network namespace path in a verbose sandbox status's `info` JSON
/// (containerd: `runtimeSpec.linux.namespaces[type=network].path`).
fn netns_of_info(json: &str) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(json).ok()?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The first of `candidates` that is a socket, for the default.
pub fn find_socket(candidates: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    candidates.iter().map(PathBuf::from).find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_netns_path_comes_from_the_runtime_spec() {
        let info = r#"{"pid":7,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}}"#;
        assert_eq!(super::netns_of_info(info), Some("/var/run/netns/cni-1".into()));
        assert_eq!(super::netns_of_info(r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"network"}]}}}"#), None);
        assert_eq!(super::netns_of_info("not json"), None);
    }
}
