//! Lock-free traffic counters kept per app and per endpoint.
//!
//! Counters live beside the route table's per-endpoint state and survive table rebuilds for
//! apps and endpoints that remain, so a reload does not reset a dashboard.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, in microseconds (Prometheus `le` labels).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Request, status-class, byte and latency counters.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    status: [AtomicU64; 5],
    errors: AtomicU64,
    body_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Requests answered (any status).
    pub requests: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub status: [u64; 5],
    /// Requests that failed before a response (connect errors, resets) and were answered by
    /// the gateway itself.
    pub errors: u64,
    /// Responses the upstream broke after their head went out (closed, reset, framed
    /// wrongly or went silent mid-body): the client got a cut response.
    pub body_errors: u64,
    /// Request body bytes sent upstream.
    pub bytes_in: u64,
    /// Response body bytes sent to clients.
    pub bytes_out: u64,
    /// Non-cumulative latency bucket counts; the last bucket is `+Inf`.
    pub latency: Vec<u64>,
    /// Sum of latencies in microseconds.
    pub latency_sum_us: u64,
}

impl Counters {
    /// Records one answered request with its status and time to response headers.
    #[inline]
    pub fn record_response(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Relaxed);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Records a request the gateway answered itself because the upstream failed.
    #[inline]
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// Records a response body the upstream broke after its head was forwarded.
    #[inline]
    pub fn record_body_error(&self) {
        self.body_errors.fetch_add(1, Relaxed);
    }

    /// Adds request body bytes forwarded upstream.
    #[inline]
    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    /// Adds response body bytes forwarded to the client.
    #[inline]
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// Copies the counters.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            requests: self.requests.load(Relaxed),
            status: std::array::from_fn(|i| self.status[i].load(Relaxed)),
            errors: self.errors.load(Relaxed),
            body_errors: self.body_errors.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            latency: self.latency.iter().map(|c| c.load(Relaxed)).collect(),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_classes() {
        let c = Counters::default();
        c.record_response(200, Duration::from_micros(100));
        c.record_response(503, Duration::from_millis(3));
        c.record_response(204, Duration::from_secs(60));
        c.add_bytes_out(10);
        let s = c.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.status, [0, 2, 0, 0, 1]);
        assert_eq!(s.latency[0], 1);
        assert_eq!(s.latency[3], 1);
        assert_eq!(s.latency[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(s.bytes_out, 10);
    }
}
