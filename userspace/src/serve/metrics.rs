//! GET /metrics over HTTP, on a loopback address by default.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{inventory::Inventory, metrics::Metrics};

/// Scrapes answered at once; a connection beyond them is closed.
const MAX_SCRAPERS: usize = 64;

/// Serves GET /metrics until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, inventory: Arc<Mutex<Inventory>>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                let (metrics, inventory) = (metrics.clone(), inventory.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics, &inventory)).await;
                    drop(slot);
                });
            }
            // Out of descriptors: wait for some to go.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
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
    drop(body);
    let written = stream.write_all(response.as_bytes()).await;
    if response.len() >= 1 << 20 {
        // Thousands of info series: megabytes of text, freed now.
        drop(response);
        crate::sys::heap::release_free_pages();
    }
    written?;
    stream.shutdown().await
}

/// Binds the metrics listener; a clear error when the address is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::Error> {
    TcpListener::bind(addr).await.map_err(|source| crate::Error::MetricsBind { addr, source })
}
