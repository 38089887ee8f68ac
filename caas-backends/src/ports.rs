//! The host port pool: which `{hostIp}:{hostPort}` a new container is published on.
//!
//! One pool per host (per host IP). A port is never handed out twice while allocated, is given
//! back by [`PortPool::free`] when its container is removed, and after an agent restart the
//! pool is rebuilt with [`PortPool::recover`] from the `caas.port` labels of the containers
//! found on the host. Before a port is handed out it is test-bound on the host IP, so a port
//! held by some other process is skipped rather than failing at `docker start`.
//!
//! Allocation walks the range from a cursor past the last port handed out, so a port freed a
//! moment ago is not reused at once (a gateway may still hold a connection to its old owner).
//! The pool is plain data (`&mut self`); the agent owning it wraps it in a mutex.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, TcpListener};

/// Why a port could not be allocated or the pool not built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Every port of the range is allocated or busy on the host.
    #[error(
        "port pool {ip} {range} exhausted: {allocated} allocated to containers, \
         {busy} held by other processes"
    )]
    Exhausted {
        /// The host IP.
        ip: IpAddr,
        /// The configured range.
        range: PortRange,
        /// Ports allocated by this pool.
        allocated: usize,
        /// Ports skipped because something else listens on them.
        busy: usize,
    },
    /// The range is empty or starts at 0.
    #[error("invalid port range {start}-{end}: need 1 <= start <= end")]
    InvalidRange {
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
}

/// An inclusive range of host ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// The default range, 25701-25999.
    pub const DEFAULT: PortRange = PortRange {
        start: 25701,
        end: 25999,
    };

    /// `start..=end`; both bounds included.
    pub fn new(start: u16, end: u16) -> Result<Self, PortError> {
        if start == 0 || start > end {
            return Err(PortError::InvalidRange { start, end });
        }
        Ok(Self { start, end })
    }

    /// First port.
    pub fn start(self) -> u16 {
        self.start
    }

    /// Last port.
    pub fn end(self) -> u16 {
        self.end
    }

    /// Number of ports.
    pub fn len(self) -> usize {
        usize::from(self.end - self.start) + 1
    }

    /// Never true (a range holds at least one port); for clippy's `len_without_is_empty`.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Tells whether a port is free on the host; the default test-binds it.
pub type FreeCheck = Box<dyn Fn(IpAddr, u16) -> bool + Send + Sync>;

/// Whether nothing listens on `ip:port` (a bind test; the socket is closed at once).
pub fn bind_check(ip: IpAddr, port: u16) -> bool {
    TcpListener::bind((ip, port)).is_ok()
}

/// Host ports of one host IP, handed out to containers.
pub struct PortPool {
    ip: IpAddr,
    range: PortRange,
    allocated: BTreeSet<u16>,
    /// Where the next search starts.
    cursor: u16,
    is_free: FreeCheck,
}

impl fmt::Debug for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("ip", &self.ip)
            .field("range", &self.range)
            .field("allocated", &self.allocated.len())
            .finish()
    }
}

impl Default for PortPool {
    /// The default range on `127.0.0.1`.
    fn default() -> Self {
        Self::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PortRange::DEFAULT)
    }
}

impl PortPool {
    /// A pool over `range` on `ip`, checking each port with a bind test before handing it out.
    pub fn new(ip: IpAddr, range: PortRange) -> Self {
        Self::with_free_check(ip, range, Box::new(bind_check))
    }

    /// A pool with a custom free-port check (tests, or hosts where binding is not possible).
    pub fn with_free_check(ip: IpAddr, range: PortRange, is_free: FreeCheck) -> Self {
        Self {
            ip,
            range,
            allocated: BTreeSet::new(),
            cursor: range.start,
            is_free,
        }
    }

    /// The host IP ports are published on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The configured range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Hands out a port that is neither allocated nor busy on the host.
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        let mut busy = 0;
        // Search from the cursor to the end, then wrap to the start.
        let order = (self.cursor..=self.range.end).chain(self.range.start..self.cursor);
        for port in order {
            if self.allocated.contains(&port) {
                continue;
            }
            if !(self.is_free)(self.ip, port) {
                busy += 1;
                tracing::debug!(ip = %self.ip, port, "port pool: skipping port held by another process");
                continue;
            }
            self.allocated.insert(port);
            self.cursor = if port == self.range.end {
                self.range.start
            } else {
                port + 1
            };
            return Ok(port);
        }
        Err(PortError::Exhausted {
            ip: self.ip,
            range: self.range,
            allocated: self.allocated.len(),
            busy,
        })
    }

    /// Gives `port` back; returns whether it was allocated.
    pub fn free(&mut self, port: u16) -> bool {
        self.allocated.remove(&port)
    }

    /// Marks ports found in use at startup (from the containers' `caas.port` labels) as
    /// allocated. Returns the ports that are outside the range (the range changed since they
    /// were handed out): they are not tracked, and the caller decides what to do with their
    /// containers.
    pub fn recover(&mut self, in_use: impl IntoIterator<Item = u16>) -> Vec<u16> {
        let mut outside = Vec::new();
        for port in in_use {
            if self.range.contains(port) {
                self.allocated.insert(port);
            } else {
                outside.push(port);
            }
        }
        if let Some(&last) = self.allocated.last() {
            self.cursor = if last == self.range.end {
                self.range.start
            } else {
                last + 1
            };
        }
        outside
    }

    /// Whether `port` is allocated.
    pub fn is_allocated(&self, port: u16) -> bool {
        self.allocated.contains(&port)
    }

    /// Number of allocated ports.
    pub fn allocated(&self) -> usize {
        self.allocated.len()
    }

    /// Ports not allocated (some may still be busy on the host).
    pub fn available(&self) -> usize {
        self.range.len() - self.allocated.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    use super::*;

    fn pool(start: u16, end: u16) -> PortPool {
        PortPool::with_free_check(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            PortRange::new(start, end).unwrap(),
            Box::new(|_, _| true),
        )
    }

    #[test]
    fn default_range() {
        let p = PortPool::default();
        assert_eq!(p.range().to_string(), "25701-25999");
        assert_eq!(p.available(), 299);
    }

    #[test]
    fn never_twice_and_exhaustion_is_clear() {
        let mut p = pool(30000, 30009);
        let got: HashSet<u16> = (0..10).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|&x| (30000..=30009).contains(&x)));
        let e = p.allocate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "port pool 127.0.0.1 30000-30009 exhausted: 10 allocated to containers, 0 held by other processes"
        );
    }

    #[test]
    fn freed_ports_come_back_but_not_at_once() {
        let mut p = pool(30000, 30002);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert!(p.free(a));
        assert!(!p.free(a), "double free reports false");
        // Cursor moves on: the next port is the untouched one, then the freed one.
        let c = p.allocate().unwrap();
        assert_ne!(c, a);
        assert_ne!(c, b);
        assert_eq!(p.allocate().unwrap(), a);
        assert!(p.allocate().is_err());
        assert!(p.free(b));
        assert_eq!(p.allocate().unwrap(), b);
    }

    #[test]
    fn recover_marks_ports_and_reports_outsiders() {
        let mut p = pool(30000, 30004);
        let outside = p.recover([30001, 30003, 40000]);
        assert_eq!(outside, vec![40000]);
        assert!(p.is_allocated(30001) && p.is_allocated(30003));
        let got: Vec<u16> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert!(!got.contains(&30001) && !got.contains(&30003), "{got:?}");
        assert!(p.allocate().is_err());
    }

    #[test]
    fn busy_ports_are_skipped() {
        let busy = Arc::new(Mutex::new(HashSet::from([30000u16, 30001])));
        let b = busy.clone();
        let mut p = PortPool::with_free_check(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            PortRange::new(30000, 30002).unwrap(),
            Box::new(move |_, port| !b.lock().unwrap().contains(&port)),
        );
        assert_eq!(p.allocate().unwrap(), 30002);
        let e = p.allocate().unwrap_err();
        assert!(e.to_string().contains("2 held by other processes"), "{e}");
        busy.lock().unwrap().clear();
        assert_eq!(p.allocate().unwrap(), 30000);
    }

    #[test]
    fn real_bind_check_skips_a_listening_port() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert!(!bind_check(ip, port));
        let mut p = PortPool::new(ip, PortRange::new(port, port).unwrap());
        assert!(matches!(
            p.allocate(),
            Err(PortError::Exhausted { busy: 1, .. })
        ));
        drop(l);
        assert_eq!(p.allocate().unwrap(), port);
    }

    #[test]
    fn invalid_ranges() {
        assert!(PortRange::new(0, 10).is_err());
        assert!(PortRange::new(10, 9).is_err());
        assert_eq!(PortRange::new(5, 5).unwrap().len(), 1);
    }
}
