//! Throwaway local PostgreSQL clusters: a primary and N streaming replicas in a temp
//! dir on free loopback ports, for `pgwarden demo`, the integration tests and the
//! benchmarks. Everything started here is stopped and removed on drop.
//!
//! This room runs PostgreSQL's own tools (`initdb`, `pg_ctl`, `pg_basebackup`, `psql`);
//! as root it runs them as the `postgres` OS user, since the server refuses root.

mod binaries;
mod error;
mod local_cluster;
mod node;
mod orphan_guard;
mod watchdog;

pub use binaries::PgBinaries;
pub use error::ClusterError;
pub use local_cluster::{ClusterSpec, LocalCluster};
pub use node::{free_port, Node, NodeRole};
