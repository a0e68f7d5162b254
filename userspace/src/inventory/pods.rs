//! Which namespace is which Kubernetes pod's sandbox, from the container
//! runtime (CRI: containerd, CRI-O): the runtime creates a pod's namespace
//! before anything inside it can tell, so only the runtime knows the pod's
//! namespace/name. Asked on every inventory refresh; without a runtime,
//! nothing changes.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use crate::{
    event::Pod,
    sys::cri::{self, CriError, Runtime},
};

/// Where to find the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CriSocket {
    /// The first of [`cri::DEFAULT_SOCKETS`] that exists, looked for on
    /// every refresh (a runtime may start after the agent).
    #[default]
    Auto,
    At(PathBuf),
    Off,
}

/// One refresh's calls to the runtime take at most this long.
const CALLS_AT_MOST: Duration = Duration::from_secs(2);

struct Known {
    pod: Pod,
    ready: bool,
    /// Inode of its namespace, once the runtime said where it is.
    inode: Option<u32>,
}

/// The runtime's pod sandboxes, kept between refreshes.
pub struct PodWatch {
    socket: CriSocket,
    runtime: Option<Runtime>,
    sandboxes: HashMap<String, Known>,
    /// A failure was logged at warn level (later ones go to debug).
    warned: bool,
}

impl PodWatch {
    pub fn new(socket: CriSocket) -> Self {
        Self { socket, runtime: None, sandboxes: HashMap::new(), warned: false }
    }

    /// Pods of the ready sandboxes, by the inode of their namespace. When
    /// the runtime cannot be asked, the last answer stands.
    pub async fn pods(&mut self) -> HashMap<u32, Pod> {
        let outcome = match tokio::time::timeout(CALLS_AT_MOST, self.ask()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("the container runtime did not answer within {CALLS_AT_MOST:?}")),
        };
        if let Err(err) = outcome {
            // Connect again next time.
            self.runtime = None;
            if self.warned {
                log::debug!("pods: {err}");
            } else {
                log::warn!("pods: {err} (said once; pods are shown again when the runtime answers)");
                self.warned = true;
            }
        }
        self.sandboxes.values().filter(|k| k.ready).filter_map(|k| Some((k.inode?, k.pod.clone()))).collect()
    }

    async fn ask(&mut self) -> Result<(), String> {
        let socket = match &self.socket {
            CriSocket::Off => return Ok(()),
            CriSocket::At(path) => path.clone(),
            CriSocket::Auto => match cri::find_socket(cri::DEFAULT_SOCKETS) {
                Some(path) => path,
                None => return Ok(()),
            },
        };
        if self.runtime.is_none() {
            self.runtime = Some(Runtime::connect(&socket).await.map_err(|e| e.to_string())?);
            log::info!("pods: asking the container runtime at {}", socket.display());
        }
        let Some(runtime) = self.runtime.as_mut() else { return Ok(()) };
        let listed = runtime.pod_sandboxes().await.map_err(|e| e.to_string())?;
        self.sandboxes.retain(|id, _| listed.iter().any(|s| &s.id == id));
        for sandbox in listed {
            let known = self.sandboxes.entry(sandbox.id.clone()).or_insert_with(|| Known {
                pod: Pod { namespace: sandbox.namespace.clone(), name: sandbox.name.clone(), uid: sandbox.uid.clone() },
                ready: false,
                inode: None,
            });
            known.ready = sandbox.ready;
            if sandbox.ready && known.inode.is_none() {
                known.inode = netns_inode(runtime, &sandbox.id).await?;
            }
        }
        if self.warned {
            log::info!("pods: the container runtime at {} answers again", socket.display());
            self.warned = false;
        }
        Ok(())
    }
}

/// The inode of a sandbox's namespace (its bind mount's nsfs inode); none
/// when the path is not a network namespace (anymore).
async fn netns_inode(runtime: &mut Runtime, id: &str) -> Result<Option<u32>, String> {
    match runtime.sandbox_netns(id).await {
        Ok(Some(path)) => Ok(std::fs::File::open(&path)
            .ok()
            .filter(crate::sys::nsfs::is_net_namespace)
            .and_then(|file| file.metadata().ok())
            .and_then(|m| u32::try_from(m.ino()).ok())),
        Ok(None) => Ok(None),
        // Gone between the list and the question.
        Err(CriError::Status { code: 5, .. }) => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}
