//! Balancers and the per-endpoint state they read.
//!
//! A [`Pool`] is the endpoints of one version (or of a whole app) plus a cursor. Picks are
//! lock-free: one relaxed `fetch_add` on the cursor and, normally, one load of the chosen
//! endpoint's ejection flag. [`EndpointState`] (in-flight count, ejection, counters and an
//! attachment slot for the data plane's connection pool) is shared by `Arc` and carried over
//! by the router into every rebuilt table while the endpoint remains.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::spec::{BalancerKind, Endpoint};
use crate::stats::Counters;

use crate::clock::now_ms;

/// Live state of one upstream endpoint, shared by every table that contains it.
pub struct EndpointState {
    endpoint: Endpoint,
    in_flight: AtomicUsize,
    ejected_until_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Traffic counters of this endpoint.
    pub stats: Counters,
    attachment: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("addr", &self.endpoint.addr)
            .field("weight", &self.endpoint.weight)
            .field("in_flight", &self.in_flight())
            .field("available", &self.is_available())
            .finish()
    }
}

impl EndpointState {
    /// Fresh state for an endpoint.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            in_flight: AtomicUsize::new(0),
            ejected_until_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            stats: Counters::default(),
            attachment: OnceLock::new(),
        }
    }

    /// The endpoint's address and weight.
    #[inline]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Requests currently in flight to this endpoint.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    #[inline]
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// False while the endpoint is ejected after failures.
    #[inline]
    pub fn is_available(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Takes the endpoint out of rotation for `period` (passive health: connect failures).
    pub fn eject_for(&self, period: Duration) {
        let until = now_ms().saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until_ms.store(until, Relaxed);
    }

    /// Records a failure; returns the number of consecutive failures so far.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1)
    }

    /// Records a success: clears the failure count and any ejection.
    #[inline]
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejected_until_ms.load(Relaxed) != 0 {
            self.ejected_until_ms.store(0, Relaxed);
        }
    }

    /// The attachment set by [`EndpointState::attachment`], if it is a `T`.
    pub fn get_attachment<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.attachment.get()?.downcast_ref::<T>()
    }

    /// A slot where the data plane keeps its per-endpoint state (its connection pool), so
    /// that it lives exactly as long as the endpoint does. Initialised once.
    pub fn attachment<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.attachment
            .get_or_init(|| Box::new(init()))
            .downcast_ref::<T>()
    }
}

/// Decrements an endpoint's in-flight count when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// The endpoint this request is counted against.
    pub fn endpoint(&self) -> &Arc<EndpointState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Largest sequence a weighted split expands to; larger weight sums are scaled down.
const MAX_SEQUENCE: u64 = 4096;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Expands weights into nginx's smooth weighted round-robin order: each index appears in
/// proportion to its weight, spread out rather than in runs. Zero weights never appear.
pub fn smooth_sequence(weights: &[u32]) -> Box<[u32]> {
    let mut w: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let g = w.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if g == 0 {
        return Box::new([]);
    }
    w.iter_mut().for_each(|x| *x /= g);
    let total: u64 = w.iter().sum();
    if total > MAX_SEQUENCE {
        w.iter_mut()
            .filter(|x| **x > 0)
            .for_each(|x| *x = (*x * MAX_SEQUENCE / total).max(1));
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        seq.push(u32::try_from(best).unwrap_or(u32::MAX));
    }
    seq.into_boxed_slice()
}

/// A mixing step of splitmix64, used to turn the cursor into two pseudo-random indices.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The endpoints of one routing target and how to choose among them.
#[derive(Debug)]
pub struct Pool {
    kind: BalancerKind,
    endpoints: Box<[Arc<EndpointState>]>,
    /// Smooth weighted order of endpoint indices (weighted balancer only).
    sequence: Box<[u32]>,
    cursor: Arc<AtomicUsize>,
}

impl Pool {
    /// A pool over `endpoints`; `cursor` is carried over from the previous table so a rebuild
    /// does not send the next request back to the first endpoint.
    pub fn new(
        kind: BalancerKind,
        endpoints: Vec<Arc<EndpointState>>,
        cursor: Arc<AtomicUsize>,
    ) -> Self {
        let sequence = if kind == BalancerKind::Weighted {
            let weights: Vec<u32> = endpoints.iter().map(|e| e.endpoint.weight).collect();
            smooth_sequence(&weights)
        } else {
            Box::new([])
        };
        Self {
            kind,
            endpoints: endpoints.into_boxed_slice(),
            sequence,
            cursor,
        }
    }

    /// The balancer this pool uses.
    pub fn kind(&self) -> BalancerKind {
        self.kind
    }

    /// All endpoints, available or not.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    /// The shared cursor (for carrying it into the next table).
    pub fn cursor(&self) -> &Arc<AtomicUsize> {
        &self.cursor
    }

    /// Picks an available endpoint, or `None` when none is.
    #[inline]
    pub fn pick(&self) -> Option<&Arc<EndpointState>> {
        self.pick_avoiding(None)
    }

    /// Picks an available endpoint other than `avoid` (for a retry after a failure).
    #[inline]
    pub fn pick_avoiding(&self, avoid: Option<&EndpointState>) -> Option<&Arc<EndpointState>> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let ok = |e: &Arc<EndpointState>| {
            e.is_available() && avoid.is_none_or(|a| !std::ptr::eq(Arc::as_ptr(e), a))
        };
        let tick = self.cursor.fetch_add(1, Relaxed);
        let first = match self.kind {
            BalancerKind::RoundRobin => tick % n,
            BalancerKind::Weighted => match self.sequence.get(tick % self.sequence.len().max(1)) {
                Some(&i) => i as usize,
                None => tick % n,
            },
            BalancerKind::P2c => {
                if n == 1 {
                    0
                } else {
                    let r = mix(tick as u64);
                    let a = (r as usize) % n;
                    let b = (a + 1 + ((r >> 32) as usize) % (n - 1)) % n;
                    let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                    match (ok(ea), ok(eb)) {
                        (true, true) if eb.in_flight() < ea.in_flight() => b,
                        (true, _) => a,
                        (false, true) => b,
                        (false, false) => a,
                    }
                }
            }
        };
        // The chosen endpoint is normally available; otherwise walk on to the next one.
        (0..n)
            .map(|i| &self.endpoints[(first + i) % n])
            .find(|e| ok(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn pool(kind: BalancerKind, weights: &[u32]) -> Pool {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Arc::new(EndpointState::new(Endpoint { addr, weight: w }))
            })
            .collect();
        Pool::new(kind, eps, Arc::default())
    }

    fn counts(p: &Pool, n: usize) -> HashMap<u16, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            *m.entry(p.pick().unwrap().endpoint().addr.port())
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn round_robin_is_even_and_ordered() {
        let p = pool(BalancerKind::RoundRobin, &[1, 1, 1]);
        let order: Vec<u16> = (0..6)
            .map(|_| p.pick().unwrap().endpoint().addr.port())
            .collect();
        assert_eq!(order, [9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn smooth_weighted_spreads_picks() {
        assert_eq!(&*smooth_sequence(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[90, 10]).len(), 10);
        assert!(smooth_sequence(&[0, 0]).is_empty());
        let p = pool(BalancerKind::Weighted, &[3, 1]);
        let c = counts(&p, 400);
        assert_eq!(c[&9000], 300);
        assert_eq!(c[&9001], 100);
    }

    #[test]
    fn huge_weights_are_scaled_not_dropped() {
        let seq = smooth_sequence(&[1_000_000, 1]);
        assert!(seq.len() as u64 <= MAX_SEQUENCE + 1);
        assert!(seq.contains(&1));
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_they_recover() {
        let p = pool(BalancerKind::RoundRobin, &[1, 1]);
        p.endpoints()[0].eject_for(Duration::from_secs(60));
        assert!((0..10).all(|_| p.pick().unwrap().endpoint().addr.port() == 9001));
        p.endpoints()[1].eject_for(Duration::from_secs(60));
        assert!(p.pick().is_none());
        p.endpoints()[0].record_success();
        assert_eq!(p.pick().unwrap().endpoint().addr.port(), 9000);
    }

    #[test]
    fn pick_avoiding_skips_the_failed_endpoint() {
        let p = pool(BalancerKind::RoundRobin, &[1, 1]);
        let first = Arc::clone(p.pick().unwrap());
        for _ in 0..5 {
            let other = p.pick_avoiding(Some(&first)).unwrap();
            assert!(!Arc::ptr_eq(other, &first));
        }
        let single = pool(BalancerKind::RoundRobin, &[1]);
        let only = Arc::clone(single.pick().unwrap());
        assert!(single.pick_avoiding(Some(&only)).is_none());
    }

    #[test]
    fn p2c_prefers_fewer_in_flight() {
        let p = pool(BalancerKind::P2c, &[1, 1]);
        let busy: Vec<InFlight> = (0..5).map(|_| p.endpoints()[0].start_request()).collect();
        assert!((0..50).all(|_| p.pick().unwrap().endpoint().addr.port() == 9001));
        drop(busy);
        assert_eq!(p.endpoints()[0].in_flight(), 0);
        let c = counts(&pool(BalancerKind::P2c, &[1, 1, 1, 1]), 4000);
        assert!(c.values().all(|&n| n > 700), "{c:?}");
    }
}
