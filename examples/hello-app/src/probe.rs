//! `GET /_probe?port=N[&path=/p]`: the app asks `http://127.0.0.1:N{path}` itself and
//! answers with what it got. In a caas unit the sidecars share the main container's network
//! namespace, so this shows from inside the container that a sidecar answers on localhost.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::app::Response;
use crate::http::{Request, query_param};

/// Time allowed to connect to, and then to hear from, the probed port.
const TIMEOUT: Duration = Duration::from_secs(2);
/// At most this much of the peer's response is passed on.
const MAX_ANSWER: usize = 64 * 1024;

/// What to probe, from the query: a port 1..=65535 and a path (default `/`).
pub fn target(req: &Request) -> Result<(u16, String), &'static str> {
    let query = req.query.as_deref().unwrap_or("");
    let port = match query_param(query, "port") {
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().ok().filter(|p| *p > 0)
        }
        _ => None,
    }
    .ok_or("port must be 1..65535")?;
    let path = query_param(query, "path").unwrap_or("/");
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b < 0x20) {
        return Err("path must start with / and contain no whitespace");
    }
    Ok((port, path.to_owned()))
}

/// Answers `GET /_probe`: 200 with the peer's whole response (status line, head and body,
/// at most 64 KiB), 502 when nothing answers on the port, 400 for a bad query.
pub fn probe(req: &Request) -> Response {
    let (port, path) = match target(req) {
        Ok(t) => t,
        Err(why) => return Response::text(400, why),
    };
    match fetch(port, &path) {
        Ok(answer) => Response::text(200, &answer),
        Err(e) => Response::text(502, &format!("127.0.0.1:{port}: {e}")),
    }
}

fn fetch(port: u16, path: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: hello-app-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER as u64).read_to_end(&mut answer)?;
    if answer.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::http::{find_head_end, parse_head};

    fn req(s: &str) -> Request {
        let s = format!("GET /_probe{s} HTTP/1.1\r\n\r\n");
        let end = find_head_end(s.as_bytes()).expect("complete head");
        parse_head(&s.as_bytes()[..end]).expect("valid request")
    }

    #[test]
    fn query_validation() {
        assert_eq!(target(&req("?port=6379")), Ok((6379, "/".to_owned())));
        assert_eq!(
            target(&req("?path=/x/y&port=80")),
            Ok((80, "/x/y".to_owned()))
        );
        for bad in [
            "",
            "?port=",
            "?port=0",
            "?port=65536",
            "?port=-1",
            "?port=8o",
            "?port=123456",
            "?port=80&path=x",
        ] {
            assert!(target(&req(bad)).is_err(), "{bad:?}");
            assert_eq!(probe(&req(bad)).status, 400, "{bad:?}");
        }
    }

    #[test]
    fn passes_on_what_the_port_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // The whole head, so closing leaves nothing unread (that would reset).
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi")
                .unwrap();
            head
        });
        let r = probe(&req(&format!("?port={port}&path=/who")));
        assert_eq!(r.status, 200);
        let body = String::from_utf8(r.body).unwrap();
        assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
        assert!(body.ends_with("\r\n\r\nhi"), "{body}");
        assert!(server.join().unwrap().starts_with("GET /who HTTP/1.1\r\n"));
    }

    #[test]
    fn nothing_listening_is_502() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = probe(&req(&format!("?port={port}")));
        assert_eq!(r.status, 502);
        assert!(
            String::from_utf8(r.body)
                .unwrap()
                .starts_with(&format!("127.0.0.1:{port}: "))
        );
    }
}
