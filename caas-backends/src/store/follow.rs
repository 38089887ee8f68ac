//! The loop that keeps a consumer in step with a [`Store`]: one [`Store::watch`] on the
//! root; a full read after every [`WatchEvent::Resync`], retried with backoff (50 ms
//! doubling to 2 s) while it fails; the paths of [`WatchEvent::Changed`] and
//! [`WatchEvent::Deleted`] events handed over together with the events already queued
//! behind them (a path's last event says whether it is gone). It stops when the consumer's
//! channel closes or the watch ends. [`StoreDiscovery`](super::StoreDiscovery) and
//! [`StoreCertSource`](super::StoreCertSource) are its two followers.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Store, StoreError, WatchEvent};

/// What the loop calls on.
pub(super) trait Follower: Send {
    /// What the consumer receives.
    type Update: Send;

    /// The consumer's end: the loop stops once it is closed.
    fn consumer(&self) -> &mpsc::Sender<Self::Update>;

    /// Reads everything the follower serves and sends it whole.
    fn full_read(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Brings the nodes at `paths` up to date and sends what changed: per path (any path
    /// under the root; the follower ignores those it does not serve), whether its last
    /// event deleted it. A deleted node needs no read: it is gone as of that event, and if
    /// it comes back its creation is an event still to come.
    fn refresh(
        &mut self,
        paths: BTreeMap<String, bool>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Counts and logs a failed read (the loop goes on).
    fn error(&self, e: &StoreError, what: &str);
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MOST_BACKOFF: Duration = Duration::from_secs(2);

/// Runs `follower` on `store`'s events until its consumer or the store goes away.
pub(super) async fn follow<S: Store, F: Follower>(store: S, mut follower: F) {
    // One watch on the root rather than one per prefix: with two watches set at the same
    // moment on one EtcdStore, one of them now and then never gave its first Resync (seen in
    // about 1 start in 3 of the example gateway), which a single watch avoids.
    let mut watch = store.watch("/");
    let mut need_full_read = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if need_full_read {
            match follower.full_read().await {
                Ok(()) => {
                    need_full_read = false;
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => follower.error(&e, "full read failed; retrying"),
            }
        }
        let first = tokio::select! {
            _ = follower.consumer().closed() => return,
            // Retry a failed full read without waiting for an event.
            _ = tokio::time::sleep(backoff), if need_full_read => {
                backoff = (backoff * 2).min(MOST_BACKOFF);
                continue;
            }
            event = watch.next() => match event {
                Some(e) => e,
                None => return, // the store is closed for good
            },
        };
        let mut paths = BTreeMap::new();
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                WatchEvent::Resync => need_full_read = true,
                WatchEvent::Changed(path) => {
                    paths.insert(path, false);
                }
                WatchEvent::Deleted(path) => {
                    paths.insert(path, true);
                }
            }
            next = watch.try_next();
        }
        if need_full_read || paths.is_empty() {
            continue; // the full read covers the changes
        }
        if let Err(e) = follower.refresh(paths).await {
            follower.error(&e, "re-read after a watch event failed; doing a full read");
            need_full_read = true;
        }
    }
}
