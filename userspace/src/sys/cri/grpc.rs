//! Unary gRPC calls over HTTP/2 on a Unix socket (the h2 crate): one
//! request message, one reply message, the status from the trailers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::CriError;

/// One HTTP/2 connection to a gRPC server.
pub struct Channel {
    socket: std::path::PathBuf,
    sender: h2::client::SendRequest<Bytes>,
}

fn transport(socket: &std::path::Path) -> impl Fn(h2::Error) -> CriError + '_ {
    move |source| CriError::Transport { socket: socket.to_path_buf(), message: source.to_string() }
}

/// `grpc-status` and the percent-decoded `grpc-message` of a header block.
fn status_of(headers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decoded).unwrap_or_default();
    Some((code, message))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes.get(at + 1..at + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[at], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Channel {
    pub async fn connect(socket: &std::path::Path) -> Result<Self, CriError> {
        let io = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|source| CriError::Connect { socket: socket.to_path_buf(), source })?;
        let (sender, connection) = h2::client::handshake(io).await.map_err(transport(socket))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                log::debug!("CRI connection ended: {err}");
            }
        });
        Ok(Self { socket: socket.to_path_buf(), sender })
    }

    /// Calls `method` (`/runtime.v1.RuntimeService/ListPodSandbox`) with
    /// one encoded request; returns the encoded reply.
    pub async fn call(&mut self, method: &'static str, request: &[u8]) -> Result<Vec<u8>, CriError> {
        let socket = self.socket.clone();
        let failed = transport(&socket);
        let broken = |message: String| CriError::Transport { socket: socket.clone(), message };
        let head = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|err| broken(err.to_string()))?;
        let mut sender = self.sender.clone().ready().await.map_err(&failed)?;
        let (reply, mut body_out) = sender.send_request(head, false).map_err(&failed)?;
        let mut framed = BytesMut::with_capacity(5 + request.len());
        framed.put_u8(0); // not compressed
        framed.put_u32(request.len() as u32);
        framed.put_slice(request);
        body_out.send_data(framed.freeze(), true).map_err(&failed)?;

        let (head, mut body) = reply.await.map_err(&failed)?.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(broken(format!("HTTP status {}", head.status)));
        }
        let mut received = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(&failed)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            received.extend_from_slice(&chunk);
            if received.len() > super::MAX_REPLY {
                return Err(broken("reply larger than 16 MiB".to_owned()));
            }
        }
        let trailers = body.trailers().await.map_err(&failed)?;
        // A reply without a message carries its status in the headers.
        match trailers.as_ref().and_then(status_of).or_else(|| status_of(&head.headers)) {
            Some((0, _)) => {}
            Some((code, message)) => return Err(CriError::Status { method, code, message }),
            None => return Err(broken("reply without grpc-status".to_owned())),
        }
        let mut received = received.freeze();
        if received.len() < 5 {
            return Err(broken("reply without a message".to_owned()));
        }
        let compressed = received.get_u8();
        let len = received.get_u32() as usize;
        if compressed != 0 || received.len() < len {
            return Err(broken("compressed or truncated reply".to_owned()));
        }
        Ok(received[..len].to_vec())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(super::percent_decoded("no%20such%20sandbox %zz%4"), "no such sandbox %zz%4");
    }
}
