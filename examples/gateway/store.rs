//! Routes from a store (`--zk` or `--etcd`), taken and applied on a thread of their own.
//!
//! The store's client — the session or lease keeping, the watches, the reads and the decoding
//! of every change — runs on a one-thread runtime of its own, and so do the route-table
//! rebuilds: this thread applies each update to the router it shares with the gateway, and
//! the serving runtime only ever sees a new table swapped in. With `workers = 1` the serving
//! runtime is a single thread; the client's work used to run there between requests. The
//! largest piece is a full read after a reconnect (every node of every app, decoded and
//! merged): at 10,000 apps it held up every request in flight for tens of milliseconds.
//!
//! The thread runs at a lower priority than the serving one (nice 10): on a busy machine its
//! work waits for the serving thread's time slice rather than cutting into it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use caas_backends::PersistedDiscovery;
use caas_backends::store::{
    AnyStore, EtcdConfig, EtcdStore, Store as _, StoreCertSource, StoreDiscovery, ZkStore,
};
use caas_backends::zk::gateways::sanitize_gateway_id;
use caas_backends::zk::{
    GatewayInfo, ValueCipher, ZkConfig, ZkDiscovery, announce_gateway, withdraw_gateway,
};
use caas_core::{Discovery, Router, Update};
use caas_gateway::{CertResolver, apply_update};
use tokio::sync::oneshot;

/// Where the routes come from: `--zk` or `--etcd`.
pub(crate) enum Source {
    Zk(ZkConfig),
    Etcd(EtcdConfig, Option<Box<ValueCipher>>),
}

/// The routes of either store.
enum StoreRoutes {
    Zk(ZkDiscovery),
    Etcd(StoreDiscovery<EtcdStore>),
}

impl Discovery for StoreRoutes {
    async fn next(&mut self) -> Option<Update> {
        match self {
            StoreRoutes::Zk(d) => d.next().await,
            StoreRoutes::Etcd(d) => d.next().await,
        }
    }
}

impl Source {
    pub(crate) fn flag(&self) -> &'static str {
        match self {
            Source::Zk(_) => "--zk",
            Source::Etcd(..) => "--etcd",
        }
    }

    /// The root of the caas tree, for messages.
    fn root(&self) -> &str {
        match self {
            Source::Zk(zk) => &zk.chroot,
            Source::Etcd(etcd, _) => &etcd.root,
        }
    }

    /// Routes from the store: connects (bounded by the session timeout or the request
    /// timeout), announces this gateway, and follows custom domains' certificates when the
    /// gateway serves HTTPS.
    async fn routes(
        &self,
        certs: Option<&Arc<CertResolver>>,
        announced: &Announced,
    ) -> Result<StoreRoutes, String> {
        let (routes, store, cipher) = match self {
            Source::Zk(zk) => {
                let bound = zk.session_timeout() + Duration::from_secs(1);
                let d = match tokio::time::timeout(bound, ZkDiscovery::connect(zk.clone())).await {
                    Ok(Ok(d)) => d,
                    Ok(Err(e)) => {
                        return Err(format!("cannot use ZooKeeper at {}: {e}", zk.servers));
                    }
                    Err(_) => {
                        return Err(format!(
                            "cannot use ZooKeeper at {}: no session within {bound:?}",
                            zk.servers
                        ));
                    }
                };
                tracing::info!(servers = %zk.servers, chroot = %zk.chroot, "routes from ZooKeeper");
                let session = d.session().clone();
                let cipher = session.cipher().cloned();
                (
                    StoreRoutes::Zk(d),
                    AnyStore::Zk(ZkStore::new(session)),
                    cipher,
                )
            }
            Source::Etcd(config, cipher) => {
                let endpoints = config.endpoints.join(",");
                let bound = config.request_timeout + Duration::from_secs(1);
                let store =
                    match tokio::time::timeout(bound, EtcdStore::connect(config.clone())).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return Err(format!("cannot use etcd at {endpoints}: {e}")),
                        Err(_) => {
                            return Err(format!(
                                "cannot use etcd at {endpoints}: no answer within {bound:?}"
                            ));
                        }
                    };
                tracing::info!(%endpoints, root = %config.root, "routes from etcd");
                let cipher = cipher.as_deref().cloned();
                let d = StoreDiscovery::start(store.clone(), cipher.clone());
                (StoreRoutes::Etcd(d), AnyStore::Etcd(store), cipher)
            }
        };
        let _ = announced.store.set(store.clone());
        let root = self.root();
        match announce_gateway(&store, &announced.id, &announced.info).await {
            Ok(()) => {
                tracing::info!(id = %announced.id, "announced at {root}/gateways/{}", announced.id)
            }
            // Routing goes on without it; the control plane just does not see this gateway.
            Err(e) => tracing::error!(id = %announced.id, "cannot announce this gateway: {e}"),
        }
        if let Some(certs) = certs {
            // Custom domains' certificates, stored at {root}/certs/{domain}.
            tokio::spawn(Arc::clone(certs).follow(StoreCertSource::start(store, cipher)));
            tracing::info!("custom-domain certificates from {root}/certs");
        }
        Ok(routes)
    }
}

/// What the gateway announces at {root}/gateways/{id}, and the store holding it once
/// connected.
pub(crate) struct Announced {
    id: String,
    info: GatewayInfo,
    store: std::sync::OnceLock<AnyStore>,
}

impl Announced {
    pub(crate) fn new(id: String, info: GatewayInfo) -> Self {
        Self {
            id,
            info,
            store: std::sync::OnceLock::new(),
        }
    }

    /// Withdraws the announcement and closes the store's session or lease, so the node is
    /// gone at once (not only when the session times out or the lease expires).
    async fn withdraw(&self) {
        if let Some(store) = self.store.get() {
            if let Err(e) = withdraw_gateway(store, &self.id).await {
                tracing::warn!(id = %self.id, "cannot withdraw the announcement: {e}");
            }
            store.close().await;
        }
    }
}

/// The host name and `addr`'s port, as a gateway id.
pub(crate) fn default_gateway_id(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| addr.ip().to_string());
    sanitize_gateway_id(&format!("{}-{}", host.trim(), addr.port()))
}

/// What the store thread needs: where the routes come from, the router they go to, the
/// certificates to keep up to date (with `[tls]`), what to announce, and the `--snapshot`
/// file with its wait.
pub(crate) struct StoreStart {
    pub(crate) source: Source,
    pub(crate) router: Arc<Router>,
    pub(crate) certs: Option<Arc<CertResolver>>,
    pub(crate) announced: Announced,
    pub(crate) snapshot: Option<(PathBuf, Duration)>,
}

/// The thread running the store's client. [`StoreThread::stop`] withdraws the announcement
/// and closes the session; dropping it without does the same, unawaited.
pub(crate) struct StoreThread {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl StoreThread {
    /// Starts the thread and waits until its routes are there: connected to the store, or,
    /// with a snapshot file, the persisted discovery started (it connects in the background
    /// and serves the file meanwhile).
    pub(crate) async fn start(start: StoreStart) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the store's runtime: {e}"))?;
        let (ready_tx, ready) = oneshot::channel();
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("caas-store".into())
            .spawn(move || {
                yield_to_serving();
                rt.block_on(start.run(ready_tx, stopped))
            })
            .map_err(|e| format!("cannot start the store's thread: {e}"))?;
        let this = Self { stop, thread };
        match ready.await {
            Ok(Ok(())) => Ok(this),
            Ok(Err(e)) => {
                this.stop().await;
                Err(e)
            }
            Err(_) => {
                this.stop().await;
                Err("the store's thread ended before connecting".into())
            }
        }
    }

    /// Withdraws the announcement, closes the store's session or lease, and waits for the
    /// thread to end.
    pub(crate) async fn stop(self) {
        // An error means the thread has ended already.
        let _ = self.stop.send(());
        let thread = self.thread;
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the store's thread panicked"),
            Err(e) => tracing::error!("cannot wait for the store's thread: {e}"),
        }
    }
}

impl StoreStart {
    /// The store thread's life: connect, apply updates until told to stop (or, when the
    /// routes end, keep the announcement until then), withdraw.
    async fn run(self, ready: oneshot::Sender<Result<(), String>>, stopped: oneshot::Receiver<()>) {
        let StoreStart {
            source,
            router,
            certs,
            announced,
            snapshot,
        } = self;
        let announced = Arc::new(announced);
        let stopped = async {
            // Either a send or a dropped sender: both mean stop.
            let _ = stopped.await;
        };
        match snapshot {
            Some((file, wait)) => {
                let live = {
                    let announced = Arc::clone(&announced);
                    async move {
                        let mut backoff = Duration::from_millis(500);
                        loop {
                            match source.routes(certs.as_ref(), &announced).await {
                                Ok(d) => return d,
                                Err(e) => tracing::warn!("{e}; retrying in {backoff:?}"),
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                    }
                };
                let routes = PersistedDiscovery::start(file, live, wait);
                let _ = ready.send(Ok(()));
                follow(routes, &router, stopped).await;
            }
            None => match source.routes(certs.as_ref(), &announced).await {
                Ok(routes) => {
                    let _ = ready.send(Ok(()));
                    follow(routes, &router, stopped).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            },
        }
        announced.withdraw().await;
    }
}

/// Applies `routes`' updates to `router` until `stopped`; when the routes end first, waits
/// for `stopped` all the same. A rebuild blocks this thread while it runs (milliseconds for
/// a whole table of many apps), never the serving one.
async fn follow(
    mut routes: impl Discovery,
    router: &Router,
    stopped: impl std::future::Future<Output = ()>,
) {
    let applying = async {
        while let Some(update) = routes.next().await {
            apply_update(router, update);
        }
        tracing::warn!("discovery ended; serving the last route table");
    };
    let mut stopped = std::pin::pin!(stopped);
    tokio::select! {
        () = applying => stopped.await,
        () = &mut stopped => {}
    }
}

/// Lowers the calling thread's scheduling priority to nice 10 (on Linux a thread's own; no
/// pid names the calling thread). Woken while the serving thread runs on the same CPU, it
/// then waits for that thread's time slice to end instead of preempting it, and it still
/// gets about a tenth of a CPU the serving thread also wants: far more than a session's
/// pings and a hundred updates a second take.
fn yield_to_serving() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 10) {
        tracing::warn!("cannot lower the store thread's priority: {e}");
    }
}
