//! hello-app: the tiny HTTP/1.1 test app caas test containers are modelled on.
//!
//! std only, no dependencies. See README.md for the endpoints.

mod app;
mod http;
mod probe;
mod server;

use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;

/// Parses `PORT` (unset or empty = 8080; 0 = any free port).
fn port_from(value: Option<&str>) -> Result<u16, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(8080),
        Some(v) => v.parse().map_err(|_| format!("invalid PORT {v:?}")),
    }
}

fn main() -> ExitCode {
    signals::install();
    let port = match port_from(std::env::var("PORT").ok().as_deref()) {
        Ok(port) => port,
        Err(e) => {
            eprintln!("hello-app: {e}");
            return ExitCode::from(2);
        }
    };
    let state = Arc::new(app::AppState::from_env());
    let listener = match TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("hello-app: cannot listen on 0.0.0.0:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = listener
        .local_addr()
        .map_or_else(|_| format!("0.0.0.0:{port}"), |a| a.to_string());
    server::log(format_args!(
        "hello-app listening on {local} app={} version={} instance={}",
        state.app, state.version, state.instance
    ));
    server::serve(listener, state);
    drain()
}

/// Longest wait for in-flight connections after SIGTERM (Docker's stop timeout usually
/// ends it sooner with SIGKILL).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// After SIGTERM: the listener is closed; waits until every connection has finished its
/// request (idle ones close at once), then exits 0.
fn drain() -> ExitCode {
    let started = std::time::Instant::now();
    server::log(format_args!(
        "draining: stopped accepting, {} connection(s) open",
        server::active()
    ));
    while server::active() > 0 && started.elapsed() < DRAIN_LIMIT {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server::log(format_args!(
        "drained in {:?} ({} connection(s) left); exiting",
        started.elapsed(),
        server::active()
    ));
    ExitCode::SUCCESS
}

/// SIGTERM/SIGINT handling. As PID 1 in a container (FROM scratch, no init)
/// signals with the default disposition are ignored by the kernel, so without
/// a handler `docker stop` would wait its full grace period and then SIGKILL.
/// The first signal starts a graceful drain (`server::DRAINING`); a second one
/// exits at once.
/// std has no signal API, hence the two libc declarations (libc is linked by
/// std anyway; no extra dependency).
#[cfg(unix)]
mod signals {
    use std::ffi::{c_int, c_void};

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;

    unsafe extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_signal(_signum: c_int) {
        // An atomic swap is async-signal-safe (lock-free, no allocation).
        if !crate::server::DRAINING.swap(true, std::sync::atomic::Ordering::SeqCst) {
            const MSG: &[u8] = b"hello-app: signal received, draining\n";
            // SAFETY: write(2) is async-signal-safe; MSG is a valid static buffer of
            // the given length.
            unsafe {
                write(1, MSG.as_ptr().cast(), MSG.len());
            }
            return;
        }
        const MSG: &[u8] = b"hello-app: second signal, exiting\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MSG is a valid
        // static buffer of the given length.
        unsafe {
            write(1, MSG.as_ptr().cast(), MSG.len());
            _exit(0);
        }
    }

    pub(crate) fn install() {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            signal(SIGTERM, on_signal);
            signal(SIGINT, on_signal);
        }
    }
}

#[cfg(not(unix))]
mod signals {
    pub(crate) fn install() {}
}

#[cfg(test)]
mod tests {
    use super::port_from;

    #[test]
    fn port_parsing() {
        assert_eq!(port_from(None), Ok(8080));
        assert_eq!(port_from(Some("")), Ok(8080));
        assert_eq!(port_from(Some(" 9000 ")), Ok(9000));
        assert_eq!(port_from(Some("0")), Ok(0));
        assert!(port_from(Some("65536")).is_err());
        assert!(port_from(Some("http")).is_err());
        assert!(port_from(Some("-1")).is_err());
    }
}
