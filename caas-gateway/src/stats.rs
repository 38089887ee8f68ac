//! Gateway-wide counters. Per-app and per-endpoint ones live in the route table
//! (`caas_core::Counters`), so they follow the apps and endpoints across table rebuilds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::error::{ErrorCode, ProxyError};

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct GatewayStats {
    /// Client connections accepted.
    pub connections_accepted: AtomicU64,
    /// Client connections open now.
    pub connections_active: AtomicUsize,
    /// Requests received.
    pub requests: AtomicU64,
    /// New upstream connections opened (the rest reused pooled ones).
    pub upstream_connects: AtomicU64,
    /// Protocol upgrades (WebSocket) passed through.
    pub upgrades: AtomicU64,
    /// Connections closed for idleness.
    pub idle_closed: AtomicU64,
    /// Connections closed because a request head took longer than `header_read_timeout_ms`.
    pub header_timeouts: AtomicU64,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// Of those, handshakes that resumed an earlier session (a TLS 1.3 ticket or a TLS 1.2
    /// session ID): no certificate sent and nothing signed.
    pub tls_resumed_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out (no certificate for the name, a client that
    /// does not speak TLS or refused the certificate, ...).
    pub tls_handshake_failures: AtomicU64,
    /// Plain-HTTP requests answered with a 308 to HTTPS (`https_redirect`).
    pub https_redirects: AtomicU64,
    /// Requests the gateway answered itself, indexed by [`ErrorCode`].
    errors: [AtomicU64; ErrorCode::COUNT],
}

impl GatewayStats {
    pub(crate) fn count_error(&self, err: &ProxyError) {
        self.count(err.code());
    }

    pub(crate) fn count(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Relaxed);
    }

    /// Requests answered by the gateway with the given cause.
    pub fn error_count(&self, code: ErrorCode) -> u64 {
        self.errors[code as usize].load(Relaxed)
    }

    /// Requests answered by the gateway with the cause named `code` (see
    /// [`ErrorCode::as_str`]); 0 for a name that is no cause.
    pub fn errors(&self, code: &str) -> u64 {
        ErrorCode::ALL
            .iter()
            .find(|c| c.as_str() == code)
            .map_or(0, |c| self.error_count(*c))
    }
}
