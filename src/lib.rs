//! caas: a Container-as-a-Service built around an embeddable L7 gateway.
//!
//! This facade re-exports the workspace crates:
//!
//! - [`core`] (`caas-core`): ids, app specs, the route table, balancers, the router and the
//!   discovery contract.
//! - [`gateway`] (`caas-gateway`): the L7 proxy library.
//! - [`backends`] (`caas-backends`): the control plane: ZooKeeper registry and discovery,
//!   the Docker runtime, health checks, the host agent.
//!
//! The runnable programs are in `examples/` (`gateway`, `caasd`) and the benchmarks in
//! `benches/`.

pub use caas_backends as backends;
pub use caas_core as core;
pub use caas_gateway as gateway;
