//! Counters of the ZooKeeper backend, shared by the session, the registry and the discovery,
//! so an operator can see skipped nodes, reconnects and expiries without reading logs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (cheap to bump from any task).
#[derive(Debug, Default)]
pub struct ZkStats {
    pub(crate) skipped_nodes: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) session_expiries: AtomicU64,
    pub(crate) full_reads: AtomicU64,
    pub(crate) ephemerals_recreated: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) updates_sent: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZkStatsSnapshot {
    /// Registry or config nodes skipped because their path or data was invalid
    /// (counted once per read of the node).
    pub skipped_nodes: u64,
    /// Connections re-established within the same session (after a disconnect).
    pub reconnects: u64,
    /// Sessions that expired and were replaced by a new one.
    pub session_expiries: u64,
    /// Full reads of the registry and app config (start, reconnect, new session).
    pub full_reads: u64,
    /// Ephemeral nodes re-created in a new session after an expiry.
    pub ephemerals_recreated: u64,
    /// Errors in background loops (each also logged with its context).
    pub errors: u64,
    /// Updates handed to the router (`Reset`, `Upsert`, `Remove`).
    pub updates_sent: u64,
}

impl ZkStats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> ZkStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ZkStatsSnapshot {
            skipped_nodes: get(&self.skipped_nodes),
            reconnects: get(&self.reconnects),
            session_expiries: get(&self.session_expiries),
            full_reads: get(&self.full_reads),
            ephemerals_recreated: get(&self.ephemerals_recreated),
            errors: get(&self.errors),
            updates_sent: get(&self.updates_sent),
        }
    }
}
