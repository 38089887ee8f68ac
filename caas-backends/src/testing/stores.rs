//! Fixtures that let one test function run against every [`Store`]: a
//! [`StoreFixture`] opens handles (each with its own session or lease) on one namespace of
//! one store, can put a cuttable [`TcpProxy`] in front of a handle, and can restart the
//! server. [`ZkFixture`] (real ZooKeeper), [`EtcdFixture`] (real etcd) and [`MemFixture`]
//! ([`MemStore`]) implement it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::{EtcdServer, TcpProxy, ZkServer, ZkServerBuilder, shared_etcd, shared_zk};
use crate::store::{EtcdConfig, EtcdStore, MemStore, Store, StoreConfig, StoreError, ZkStore};
use crate::zk::{ZkConfig, ZkSession};

/// One store under test (see the module docs).
pub trait StoreFixture: Send + Sync + 'static {
    /// The store's type.
    type Store: Store;

    /// The store's name, for messages.
    fn name(&self) -> &'static str;

    /// A new handle on the fixture's namespace, with its own session or lease.
    fn connect(&self) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;

    /// A new handle that reaches the server through `proxy` (see
    /// [`StoreFixture::proxy`]).
    fn connect_via(
        &self,
        proxy: &TcpProxy,
    ) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;

    /// The server's client address, for a [`TcpProxy`]; `None` for an in-memory store.
    fn server_addr(&self) -> Option<SocketAddr>;

    /// Kills the server and starts it again with the same data (a private server only).
    fn restart(&self) -> io::Result<()>;

    /// How long the server keeps a session or lease whose client went silent.
    fn session_timeout(&self) -> Duration;

    /// A proxy in front of the server, `None` for an in-memory store.
    fn proxy(&self) -> impl Future<Output = Option<TcpProxy>> + Send {
        let addr = self.server_addr();
        async move {
            match addr {
                Some(a) => TcpProxy::start(a).await.ok(),
                None => None,
            }
        }
    }
}

/// The shared server of this process, or a private one the fixture may restart.
#[derive(Debug)]
enum Server<T> {
    Shared(Arc<T>),
    Private(Mutex<T>),
}

impl<T> Server<T> {
    fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        match self {
            Server::Shared(s) => f(s),
            Server::Private(m) => f(&m.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    fn restart(&self, f: impl FnOnce(&mut T) -> io::Result<()>) -> io::Result<()> {
        match self {
            Server::Shared(_) => Err(io::Error::other(
                "the shared server cannot be restarted: use a private fixture",
            )),
            Server::Private(m) => f(&mut m.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }
}

/// Real ZooKeeper; each fixture works under the chroot `/{test}`.
#[derive(Debug)]
pub struct ZkFixture {
    server: Server<ZkServer>,
    chroot: String,
    session_timeout: Duration,
}

impl ZkFixture {
    /// On the process's shared server (10 s sessions). `None` when ZooKeeper is missing.
    pub fn shared(test: &str) -> Option<Self> {
        Some(Self {
            server: Server::Shared(shared_zk(test)?),
            chroot: format!("/{test}"),
            session_timeout: Duration::from_secs(10),
        })
    }

    /// On a server of its own with a 500 ms tick and 2 s sessions, that
    /// [`StoreFixture::restart`] may restart.
    pub fn private(test: &str) -> Option<Self> {
        let server = ZkServer::start_or_skip(ZkServerBuilder::default().tick_ms(500), test)?;
        Some(Self {
            server: Server::Private(Mutex::new(server)),
            chroot: format!("/{test}"),
            session_timeout: Duration::from_secs(2),
        })
    }

    /// The session configuration for `servers`.
    pub fn config(&self, servers: &str) -> ZkConfig {
        ZkConfig::new(servers)
            .with_chroot(&self.chroot)
            .with_session_timeout(self.session_timeout)
    }

    /// `host:port` of the server.
    pub fn connect_string(&self) -> String {
        self.server.with(ZkServer::connect_string)
    }

    /// What a role (an agent, a scheduler) connects with.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig::Zk(self.config(&self.connect_string()))
    }

    async fn open(config: ZkConfig) -> Result<ZkStore, StoreError> {
        let servers = config.servers.clone();
        ZkSession::connect(config)
            .await
            .map(ZkStore::new)
            .map_err(|e| StoreError::Unavailable {
                op: "connect",
                path: servers,
                reason: e.to_string(),
            })
    }
}

impl StoreFixture for ZkFixture {
    type Store = ZkStore;

    fn name(&self) -> &'static str {
        "zookeeper"
    }

    fn connect(&self) -> impl Future<Output = Result<ZkStore, StoreError>> + Send {
        Self::open(self.config(&self.connect_string()))
    }

    fn connect_via(
        &self,
        proxy: &TcpProxy,
    ) -> impl Future<Output = Result<ZkStore, StoreError>> + Send {
        Self::open(self.config(&proxy.connect_string()))
    }

    fn server_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from((
            [127, 0, 0, 1],
            self.server.with(ZkServer::port),
        )))
    }

    fn restart(&self) -> io::Result<()> {
        self.server.restart(ZkServer::restart)
    }

    fn session_timeout(&self) -> Duration {
        self.session_timeout
    }
}

/// Real etcd; each fixture works under the key prefix `/{test}` with 2 s leases.
#[derive(Debug)]
pub struct EtcdFixture {
    server: Server<EtcdServer>,
    root: String,
}

impl EtcdFixture {
    /// On the process's shared server. `None` when etcd is missing.
    pub fn shared(test: &str) -> Option<Self> {
        Some(Self {
            server: Server::Shared(shared_etcd(test)?),
            root: format!("/{test}"),
        })
    }

    /// On a server of its own, that [`StoreFixture::restart`] may restart.
    pub fn private(test: &str) -> Option<Self> {
        Some(Self {
            server: Server::Private(Mutex::new(EtcdServer::start_or_skip(test)?)),
            root: format!("/{test}"),
        })
    }

    /// The store configuration for `endpoint`.
    pub fn config(&self, endpoint: String) -> EtcdConfig {
        EtcdConfig::new(endpoint)
            .with_root(&self.root)
            .with_lease_ttl(Duration::from_secs(2))
    }

    /// `http://127.0.0.1:PORT` of the server.
    pub fn endpoint(&self) -> String {
        self.server.with(EtcdServer::endpoint)
    }

    /// What a role (an agent, a scheduler) connects with.
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig::Etcd(self.config(self.endpoint()))
    }
}

impl StoreFixture for EtcdFixture {
    type Store = EtcdStore;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn connect(&self) -> impl Future<Output = Result<EtcdStore, StoreError>> + Send {
        EtcdStore::connect(self.config(self.endpoint()))
    }

    fn connect_via(
        &self,
        proxy: &TcpProxy,
    ) -> impl Future<Output = Result<EtcdStore, StoreError>> + Send {
        EtcdStore::connect(self.config(format!("http://{}", proxy.connect_string())))
    }

    fn server_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from((
            [127, 0, 0, 1],
            self.server.with(EtcdServer::port),
        )))
    }

    fn restart(&self) -> io::Result<()> {
        self.server.restart(EtcdServer::restart)
    }

    fn session_timeout(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// [`MemStore`]: every handle is a new session on one tree. There is no server to cut or
/// restart.
#[derive(Debug, Default)]
pub struct MemFixture {
    store: MemStore,
}

impl MemFixture {
    /// A fresh tree (the test name is unused: nothing is shared).
    pub fn new(_test: &str) -> Option<Self> {
        Some(Self::default())
    }
}

impl StoreFixture for MemFixture {
    type Store = MemStore;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn connect(&self) -> impl Future<Output = Result<MemStore, StoreError>> + Send {
        std::future::ready(Ok(self.store.new_session()))
    }

    fn connect_via(
        &self,
        _proxy: &TcpProxy,
    ) -> impl Future<Output = Result<MemStore, StoreError>> + Send {
        std::future::ready(Ok(self.store.new_session()))
    }

    fn server_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn restart(&self) -> io::Result<()> {
        Err(io::Error::other("an in-memory store has no server"))
    }

    fn session_timeout(&self) -> Duration {
        Duration::ZERO
    }
}

/// Runs generic test functions on stores: `store_suite!(etcd, EtcdFixture::shared, [a, b])`
/// declares `mod etcd` with one `#[tokio::test]` per function, each calling
/// [`logs`](super::logs) and then `super::a(fixture)` with the fixture `$fixture("etcd_a")` (the test
/// passes, having printed why, when that store is not installed outside CI). The functions
/// take any [`StoreFixture`], so one body is the test on every store.
#[macro_export]
macro_rules! store_suite {
    ($store:ident, $fixture:expr, [$($test:ident),* $(,)?]) => {
        mod $store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    $crate::testing::logs();
                    let name = concat!(stringify!($store), "_", stringify!($test));
                    let Some(f) = $fixture(name) else { return };
                    super::$test(f).await;
                }
            )*
        }
    };
}
