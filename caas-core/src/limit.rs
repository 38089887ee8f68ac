//! Lock-free request rate limiters (GCRA, the token bucket's cousin that keeps one number
//! per bucket): one [`TokenBucket`] for a whole app, and a [`ClientLimiter`] holding one
//! bucket per client address in a bounded cache that forgets idle clients.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ns;

/// The rate and burst of a GCRA limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    rps: u32,
    burst: u32,
    /// Nanoseconds between two admitted requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run.
    tolerance_ns: u64,
}

impl Gcra {
    /// `rps` requests per second on average and bursts of up to `burst` more (default:
    /// `rps`). `rps = 0` admits nothing.
    pub fn new(rps: u32, burst: Option<u32>) -> Self {
        let interval_ns = if rps == 0 {
            u64::MAX
        } else {
            1_000_000_000 / u64::from(rps)
        };
        let burst = burst.unwrap_or(rps);
        Self {
            rps,
            burst,
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst)),
        }
    }

    /// How long a bucket left alone takes to be full again: after that, forgetting it
    /// changes nothing.
    pub fn refill_time(&self) -> Duration {
        Duration::from_nanos(
            self.interval_ns
                .saturating_mul(u64::from(self.burst) + 1)
                .min(3600 * 1_000_000_000),
        )
    }

    /// Takes one token from the bucket whose state is `tat` at time `now`; on refusal, how
    /// long until the next token.
    fn acquire(&self, tat_ns: &AtomicU64, now: u64) -> Result<(), Duration> {
        if self.interval_ns == u64::MAX {
            return Err(Duration::from_secs(3600));
        }
        let mut tat = tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            let ahead = start - now;
            if ahead > self.tolerance_ns {
                return Err(Duration::from_nanos(ahead - self.tolerance_ns));
            }
            let next = start.saturating_add(self.interval_ns);
            match tat_ns.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// One GCRA bucket.
#[derive(Debug)]
pub struct TokenBucket {
    gcra: Gcra,
    /// Theoretical arrival time of the next request.
    tat_ns: AtomicU64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(gcra: Gcra) -> Self {
        Self {
            gcra,
            tat_ns: AtomicU64::new(0),
        }
    }

    /// The rate this bucket enforces.
    pub fn gcra(&self) -> Gcra {
        self.gcra
    }

    /// Takes one token; on refusal, how long until the next one.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.gcra.acquire(&self.tat_ns, now_ns())
    }
}

/// One bucket per client address, in a bounded cache (moka) that forgets a client once its
/// bucket has been idle long enough to be full again, and the least recently and least
/// often seen first when over capacity. Forgetting a client only ever gives it a full
/// bucket, which it would have had anyway after the idle time.
#[derive(Debug)]
pub struct ClientLimiter {
    gcra: Gcra,
    tracked: u64,
    clients: moka::sync::Cache<IpAddr, Arc<AtomicU64>>,
}

impl ClientLimiter {
    /// A limiter with `gcra` per client, tracking at most `tracked` clients.
    pub fn new(gcra: Gcra, tracked: u64) -> Self {
        Self {
            gcra,
            tracked,
            clients: moka::sync::Cache::builder()
                .max_capacity(tracked)
                .time_to_idle(gcra.refill_time())
                .build(),
        }
    }

    /// The per-client rate and the capacity, to tell whether a rebuilt table can keep this
    /// limiter (and its clients' state).
    pub fn config(&self) -> (Gcra, u64) {
        (self.gcra, self.tracked)
    }

    /// Takes one token from `client`'s bucket; on refusal, how long until the next one.
    pub fn try_acquire(&self, client: IpAddr) -> Result<(), Duration> {
        let tat = self
            .clients
            .get_with(client, || Arc::new(AtomicU64::new(0)));
        self.gcra.acquire(&tat, now_ns())
    }

    /// Clients tracked now (approximate: the cache settles its bookkeeping lazily).
    pub fn tracked_now(&self) -> u64 {
        self.clients.run_pending_tasks();
        self.clients.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_sustains_the_rate_and_says_when_to_retry() {
        let g = Gcra::new(10, Some(5));
        let tat = AtomicU64::new(0);
        let t0 = 1_000_000_000_000;
        let admitted = (0..100).filter(|_| g.acquire(&tat, t0).is_ok()).count();
        assert_eq!(admitted, 6, "one plus a burst of five");
        // The next token comes 100 ms after the last admission's slot.
        let wait = g.acquire(&tat, t0 + 50_000_000).unwrap_err();
        assert_eq!(wait, Duration::from_millis(50));
        assert!(g.acquire(&tat, t0 + 700_000_000).is_ok());
        assert_eq!(g.refill_time(), Duration::from_millis(600));
    }

    #[test]
    fn zero_rps_admits_nothing() {
        assert!(TokenBucket::new(Gcra::new(0, None)).try_acquire().is_err());
    }

    #[test]
    fn each_client_has_its_own_bucket() {
        let l = ClientLimiter::new(Gcra::new(1, Some(1)), 1000);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert!(l.try_acquire(a).is_ok());
        assert!(l.try_acquire(a).is_ok());
        assert!(l.try_acquire(a).is_err(), "a's burst is spent");
        assert!(l.try_acquire(b).is_ok(), "b is not a");
        assert_eq!(l.tracked_now(), 2);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let l = ClientLimiter::new(Gcra::new(5, None), 1000);
        for i in 0..20_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(
                l.try_acquire(ip).is_ok(),
                "a new client starts with a full bucket"
            );
        }
        assert!(l.tracked_now() <= 1000, "{}", l.tracked_now());
    }
}
