//! The binary under SIGTERM: a request in flight is answered (with `connection: close`),
//! an idle keep-alive connection is closed, new connections are refused, and the process
//! exits 0. `FAIL_PING=1` makes `/_ping` fail from the start.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Starts the binary on a free port; returns it and its address.
fn start(env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hello-app"))
        .env("PORT", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let port: u16 = first
        .split("listening on 0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {first:?}"));
    // Keep reading the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads one response (the body is Content-Length framed): the head, lowercased.
fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "EOF in the head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap().to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    head
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits() {
    let (mut child, addr) = start(&[]);
    let mut idle = connect(addr);
    idle.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(response(&mut idle).starts_with("http/1.1 200"));

    let mut busy = connect(addr);
    busy.write_all(b"GET /_sleep?ms=1500 HTTP/1.1\r\n\r\n")
        .unwrap();
    // The sleep has begun once the server has the request; a short head start suffices
    // because the answer is asserted whatever the order.
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&child);

    // The idle connection is closed by the server (EOF, no answer).
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(refused, "still accepting after SIGTERM");
    // The request in flight is answered, as the connection's last.
    let head = response(&mut busy);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn fail_ping_env_fails_the_ping_from_the_start() {
    let (mut child, addr) = start(&[("FAIL_PING", "1"), ("CAAS_VERSION", "v2")]);
    let mut s = connect(addr);
    s.write_all(b"GET /_ping HTTP/1.1\r\n\r\n").unwrap();
    assert!(response(&mut s).starts_with("http/1.1 503"));
    s.write_all(b"POST /_recover HTTP/1.1\r\n\r\n").unwrap();
    assert!(response(&mut s).starts_with("http/1.1 200"));
    s.write_all(b"GET /_ping HTTP/1.1\r\n\r\n").unwrap();
    assert!(response(&mut s).starts_with("http/1.1 200"));
    child.kill().unwrap();
    let _ = child.wait();
}
