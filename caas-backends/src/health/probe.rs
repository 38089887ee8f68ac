//! The probe itself: one plain HTTP/1.1 `GET` over a fresh TCP connection.
//!
//! A fresh connection per probe (like Kubernetes' httpGet) checks that the app still accepts
//! connections, not just that one kept-alive socket works. Only the status line is read;
//! 2xx and 3xx pass, as in Kubernetes.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Something that can be checked once; `Err` carries why it failed. The caller applies the
/// timeout.
pub trait Probe: Send + Sync + 'static {
    /// Runs one check.
    fn probe(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// `GET {path}` on `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    addr: SocketAddr,
    request: Vec<u8>,
}

impl HttpProbe {
    /// A probe of `http://{addr}{path}`.
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: caas-health\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        Self { addr, request }
    }

    /// The target address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the request and returns the response status code.
    pub async fn status(&self) -> Result<u16, String> {
        let mut s = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        s.write_all(&self.request)
            .await
            .map_err(|e| format!("send to {}: {e}", self.addr))?;
        // The status line is short; 512 bytes is plenty and bounds what a bad app can send.
        let mut buf = [0u8; 512];
        let mut len = 0;
        loop {
            let n = s
                .read(&mut buf[len..])
                .await
                .map_err(|e| format!("read from {}: {e}", self.addr))?;
            len += n;
            if n == 0 || buf[..len].windows(2).any(|w| w == b"\r\n") || len == buf.len() {
                break;
            }
        }
        parse_status(&buf[..len]).ok_or_else(|| {
            format!(
                "bad HTTP response from {}: {:?}",
                self.addr,
                String::from_utf8_lossy(&buf[..len.min(64)])
            )
        })
    }
}

impl Probe for HttpProbe {
    async fn probe(&self) -> Result<(), String> {
        match self.status().await? {
            200..=399 => Ok(()),
            code => Err(format!("HTTP {code} from {}", self.addr)),
        }
    }
}

/// `HTTP/1.x NNN ...` → NNN.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\nX: y"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b""), None);
    }
}
