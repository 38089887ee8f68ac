//! pingd: the docker tests' FROM-scratch image. A std-only HTTP/1.1 server, compiled with
//! `rustc -C target-feature=+crt-static` by the test setup (a miniature of
//! examples/hello-app, kept here so the tests depend on nothing outside this crate).
//!
//! GET /_ping (200, or 503 after POST /_fail until POST /_recover), GET / (JSON naming the
//! instance), POST /_exit (exits 3), POST /_oom (allocates until the memory limit kills it). Env: CAAS_APP, CAAS_VERSION, CAAS_INSTANCE, PORT (8080).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).expect("bind");
    let failing = Arc::new(AtomicBool::new(false));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let failing = failing.clone();
        std::thread::spawn(move || handle(conn, &failing));
    }
}

fn handle(mut s: TcpStream, failing: &AtomicBool) {
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match s.read(&mut buf[len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let (status, body) = match (method, path) {
        ("GET", "/_ping") if failing.load(Ordering::SeqCst) => ("503 Service Unavailable", "failing\n".to_string()),
        ("GET", "/_ping") => ("200 OK", "pong\n".to_string()),
        ("POST", "/_fail") => {
            failing.store(true, Ordering::SeqCst);
            ("200 OK", "ok\n".to_string())
        }
        ("POST", "/_recover") => {
            failing.store(false, Ordering::SeqCst);
            ("200 OK", "ok\n".to_string())
        }
        ("POST", "/_exit") => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            std::process::exit(3);
        }
        ("POST", "/_oom") => {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch every page so the memory is really used.
                hog.push(vec![1u8; 1 << 20]);
                if hog.len() > 1 << 16 {
                    break ("500 Internal Server Error", "no limit?\n".to_string());
                }
            }
        }
        ("GET", "/") => (
            "200 OK",
            format!(
                "{{\"app\":\"{}\",\"version\":\"{}\",\"instance\":\"{}\"}}\n",
                env("CAAS_APP"),
                env("CAAS_VERSION"),
                env("CAAS_INSTANCE")
            ),
        ),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}
