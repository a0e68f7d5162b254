//! Names and containers come from /proc, and pods from the container
//! runtime, not from events: the inventory
//! rescans when the mount table changes (a bind mount such as
//! /run/netns/NAME appears or goes; the kernel flags /proc/self/mountinfo)
//! and every few seconds for the rest (containers starting). Scans run on
//! the blocking pool, never on the event loop; each also lists the devices
//! of namespaces whose devices are not kept yet, so that `nstrail ls` finds
//! them kept.

use std::{
    io::{Read, Seek},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::io::Interest;

use super::{scan, Inventory};
use crate::event::EventBody;

/// How often names and containers are refreshed from /proc.
pub const EVERY: Duration = Duration::from_secs(2);

/// Rescans until the task is dropped; every scan goes to `scans` too (the
/// sensors that keep per-namespace state of their own take them), and the
/// agent's own records to `records` (the agent's loop numbers and sends
/// them): `netns_identified` for namespaces whose names or containers
/// became known, `netns_leaked` for those that crossed the leak age.
pub async fn run(
    inventory: Arc<Mutex<Inventory>>,
    mut pods: super::pods::PodWatch,
    scans: tokio::sync::mpsc::Sender<Arc<scan::Scan>>,
    records: tokio::sync::mpsc::Sender<Vec<EventBody>>,
) {
    let mut mountinfo = std::fs::File::open("/proc/self/mountinfo")
        .and_then(|f| crate::sys::async_fd(f, Interest::PRIORITY))
        .map_err(|err| log::warn!("cannot watch the mount table ({err}); names refresh every {EVERY:?}"))
        .ok();
    let mut every = tokio::time::interval(EVERY);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            changed = async {
                match mountinfo.as_mut() {
                    Some(fd) => fd.ready_mut(Interest::PRIORITY).await.map(|mut guard| {
                        // Reading the table to its end re-arms the change flag.
                        let file = guard.get_inner_mut();
                        let _ = file.rewind();
                        let _ = std::io::copy(&mut file.take(u64::MAX), &mut std::io::sink());
                        guard.clear_ready();
                    }),
                    None => std::future::pending().await,
                }
            } => {
                if changed.is_err() {
                    mountinfo = None;
                }
                // Mounts come in bursts (container start): let them settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let pods = pods.pods().await;
        let known = inventory.lock().expect("inventory lock").nsids();
        let scanned = tokio::task::spawn_blocking(move || {
            let scan = scan::scan();
            // Listings then find the devices of namespaces this one found
            // kept: one rtnetlink dump each, once.
            let kept = scan::keep_devices(&scan, &known);
            if kept > 0 {
                log::debug!("devices of {kept} namespaces listed and kept");
            }
            scan
        });
        if let Ok(scan) = scanned.await {
            let scan = Arc::new(scan);
            let (identified, leaks) = {
                let mut inventory = inventory.lock().expect("inventory lock");
                inventory.set_pods(pods);
                inventory.relabel(&scan);
                (inventory.identified(&scan), inventory.track_leaks(&scan))
            };
            if !identified.is_empty() && records.send(identified).await.is_err() {
                return;
            }
            if !leaks.is_empty() {
                let named = tokio::task::spawn_blocking(move || {
                    let mut leaks = leaks;
                    super::leaks::fill_comms(&mut leaks);
                    leaks
                });
                if let Ok(leaks) = named.await {
                    if records.send(leaks).await.is_err() {
                        return;
                    }
                }
            }
            let large = scan.namespaces.len() >= 1000;
            if scans.send(scan).await.is_err() {
                return;
            }
            if large {
                // The scan it replaces (thousands of records) is freed by now.
                crate::sys::heap::release_free_pages();
            }
        }
    }
}
