//! Where routes come from: the [`Discovery`] trait and the in-memory [`Static`] source.
//!
//! A discovery is a stream of [`Update`]s modelled on ZooKeeper watches: a full `Reset`
//! (on start and after every reconnect) and per-app `Upsert` / `Remove` in between. The
//! gateway applies each update to its [`Router`](crate::Router). Removal evicts at once,
//! whatever the endpoint's health.

use std::future::Future;

use tokio::sync::{mpsc, watch};

use crate::id::AppId;
use crate::spec::{AppSpec, Blacklist, Snapshot};

/// One change to the routing state.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Replace everything.
    Reset(Snapshot),
    /// Add an app or replace it whole.
    Upsert(AppId, AppSpec),
    /// Remove an app.
    Remove(AppId),
    /// Replace the gateway-wide blacklist.
    Blacklist(Blacklist),
}

/// A source of routing updates.
pub trait Discovery: Send + 'static {
    /// Waits for the next update; `None` once the source has ended for good (the gateway
    /// then keeps serving the last table).
    fn next(&mut self) -> impl Future<Output = Option<Update>> + Send;

    /// Whether this source's updates are rare and waiting for the next one costs next to
    /// nothing (a file checked once a second), so that a consumer may follow it on its
    /// serving threads rather than give it a thread of its own. The gateway then still
    /// applies each update on a blocking-pool thread. `false` unless a source says so.
    fn updates_rarely(&self) -> bool {
        false
    }
}

impl Discovery for mpsc::Receiver<Update> {
    async fn next(&mut self) -> Option<Update> {
        self.recv().await
    }
}

impl Discovery for mpsc::UnboundedReceiver<Update> {
    async fn next(&mut self) -> Option<Update> {
        self.recv().await
    }
}

/// An in-memory, settable discovery: the embedded default and the base of tests.
///
/// Clones share one state; every [`Static::subscribe`]r sees the latest snapshot (changes made
/// in quick succession may arrive as one reset).
#[derive(Debug, Clone)]
pub struct Static {
    tx: watch::Sender<Snapshot>,
}

impl Default for Static {
    fn default() -> Self {
        Self::new(Snapshot::default())
    }
}

impl Static {
    /// A source that starts with `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            tx: watch::Sender::new(snapshot),
        }
    }

    /// Replaces the whole state.
    pub fn set(&self, snapshot: Snapshot) {
        self.tx.send_replace(snapshot);
    }

    /// Adds or replaces one app.
    pub fn upsert(&self, app: AppId, spec: AppSpec) {
        self.tx.send_modify(|s| {
            s.apps.insert(app, spec);
        });
    }

    /// Removes one app.
    pub fn remove(&self, app: &AppId) {
        self.tx.send_modify(|s| {
            s.apps.remove(app);
        });
    }

    /// The current state.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    /// A stream of updates: the current state first, then every change.
    pub fn subscribe(&self) -> StaticUpdates {
        let mut rx = self.tx.subscribe();
        rx.mark_changed();
        StaticUpdates { rx }
    }
}

/// The update stream of a [`Static`] source.
#[derive(Debug)]
pub struct StaticUpdates {
    rx: watch::Receiver<Snapshot>,
}

impl Discovery for StaticUpdates {
    async fn next(&mut self) -> Option<Update> {
        self.rx.changed().await.ok()?;
        Some(Update::Reset(self.rx.borrow_and_update().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_yields_current_state_then_changes() {
        let s = Static::default();
        let mut sub = s.subscribe();
        assert_eq!(sub.next().await, Some(Update::Reset(Snapshot::default())));
        let app = AppId::new("a").unwrap();
        s.upsert(app.clone(), AppSpec::default());
        match sub.next().await {
            Some(Update::Reset(snap)) => assert!(snap.apps.contains_key(&app)),
            other => panic!("unexpected {other:?}"),
        }
        s.remove(&app);
        match sub.next().await {
            Some(Update::Reset(snap)) => assert!(snap.apps.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
        drop(s);
        assert_eq!(sub.next().await, None, "source dropped: stream ends");
    }
}
