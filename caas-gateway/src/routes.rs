//! The thread that takes the gateway's discovery updates and applies them to its router.
//!
//! Every update — one app's registration as much as a whole rebuild — is applied on a thread
//! of its own ("caas-routes", one current-thread runtime polling the [`Discovery`]), never on
//! a serving thread. A one-app change copies the table's chunk list: microseconds at a few
//! thousand apps, tens of them at 10,000 and more at 100,000, with the CPU's caches cold, and
//! a one-worker gateway held every request in flight for that long when it applied them
//! itself. The serving threads only ever see a new table swapped in.
//!
//! The thread runs at nice 10 on Linux (its own priority; the process keeps its own), as the
//! example gateway's store thread does: on a busy machine an update waits for a serving
//! thread's time slice to end rather than cutting into it, and still gets about a tenth of a
//! CPU, far more than a hundred updates a second take.
//!
//! A discovery's own background tasks (a store client's session, watches and decoding) run
//! where they were spawned: create the discovery on the runtime that should carry them.
//!
//! A discovery that [updates rarely](Discovery::updates_rarely) (a config file checked once
//! a second) gets no thread: the serving runtime waits for its updates, and each is applied
//! on a blocking-pool thread. A file-configured one-worker gateway is then one thread for
//! all but the moments a check or an update runs, and Linux takes no reference on a
//! socket's file in the system calls of a process whose file table no other thread shares
//! (a second thread, even an idle one, costs the serving thread that on every call).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use caas_core::{Discovery, Router};
use tokio::sync::oneshot;

use crate::server::apply_update;

/// What the routes thread runs: the discovery's updates applied to the router, until the
/// discovery ends.
pub(crate) type DiscoveryTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A discovery ready to follow: the task that applies its updates, and where it runs.
pub(crate) struct Following {
    task: DiscoveryTask,
    /// On the routes thread; else on the serving runtime, applying on the blocking pool.
    own_thread: bool,
}

/// `discovery`'s updates applied to `router`, in order, each as it arrives.
pub(crate) fn follow(mut discovery: impl Discovery, router: Arc<Router>) -> Following {
    let own_thread = !discovery.updates_rarely();
    let task: DiscoveryTask = Box::pin(async move {
        while let Some(update) = discovery.next().await {
            if own_thread {
                // Blocks this thread while it runs (milliseconds for a whole table of many
                // apps), never a serving one.
                apply_update(&router, update);
                continue;
            }
            // Polled on the serving runtime: applied on the blocking pool, and awaited
            // before the next update, so the order holds.
            let router = Arc::clone(&router);
            let applied = tokio::task::spawn_blocking(move || apply_update(&router, update)).await;
            if let Err(e) = applied {
                tracing::error!("a route update failed to apply: {e}");
            }
        }
        tracing::warn!("discovery ended; serving the last route table");
    });
    Following { task, own_thread }
}

/// The running discovery: on its thread, or as a task on the serving runtime (one that
/// updates rarely, or any when no thread could be started).
pub(crate) enum Routes {
    Thread {
        stop: oneshot::Sender<()>,
        ended: oneshot::Receiver<()>,
    },
    Task(tokio::task::JoinHandle<()>),
}

impl Routes {
    /// Starts following: on the routes thread unless the discovery updates rarely.
    pub(crate) fn start(following: Following) -> Self {
        let Following { task, own_thread } = following;
        if !own_thread {
            return Self::Task(tokio::spawn(task));
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return Self::fallback(task, &format!("its runtime: {e}")),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (ended_tx, ended) = oneshot::channel();
        // The thread takes the task out; when it cannot start, the task is still here.
        let slot = Arc::new(Mutex::new(Some(task)));
        let theirs = Arc::clone(&slot);
        let spawned = std::thread::Builder::new()
            .name("caas-routes".into())
            .spawn(move || {
                let task = theirs.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(task) = task {
                    yield_to_serving();
                    rt.block_on(async {
                        let mut stopped = stopped;
                        tokio::select! {
                            // The discovery ended: the last table serves until the gateway
                            // stops.
                            () = task => {
                                let _ = (&mut stopped).await;
                            }
                            // Either a send or a dropped sender (the serving loop gone).
                            _ = &mut stopped => {}
                        }
                    });
                }
                drop(rt);
                let _ = ended_tx.send(());
            });
        match spawned {
            Ok(_) => Self::Thread { stop, ended },
            Err(e) => {
                // The closure never ran: the task is still in the slot.
                let task = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                Self::fallback(task.unwrap_or_else(|| Box::pin(async {})), &e.to_string())
            }
        }
    }

    fn fallback(task: DiscoveryTask, why: &str) -> Self {
        tracing::error!(
            "cannot start the routes thread ({why}); applying route updates on the serving \
             runtime instead"
        );
        Self::Task(tokio::spawn(task))
    }

    /// Stops following the discovery and waits until it is dropped (after a rebuild in
    /// progress, if any).
    pub(crate) async fn stop(self) {
        match self {
            Self::Thread { stop, ended } => {
                // An error means the thread has ended already.
                let _ = stop.send(());
                let _ = ended.await;
            }
            Self::Task(task) => {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Lowers the calling thread's priority to nice 10 (on Linux a thread's own: no pid names
/// the calling thread, and the process and its other threads keep theirs).
fn yield_to_serving() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::warn!("cannot lower the routes thread's priority: {e}");
    }
}
