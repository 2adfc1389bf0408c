//! Operating pgwarden: the admin console (database `pgwarden` on the proxy port, as
//! PgBouncer users expect), the HTTP server (dashboard, JSON API, Prometheus metrics,
//! health probes), and the tables both show.
//!
//! This room reads the other rooms' state (pools, routing, stats, clients, the tenant guard) and never
//! touches a client's session or a server connection.

pub mod advisories;
pub mod api_client;
pub mod cache;
pub mod console;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod protection;
pub mod tables;
pub mod tenancy;

pub use console::serve_console;
pub use http::serve_http;
