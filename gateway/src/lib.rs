//! Tenant Gateway: a multi-tenant edge proxy on Pingora. The library holds
//! every part; `src/main.rs` is the thin binary that runs [`cli::main`].
//!
//! Where things are (docs/architecture.md draws the request path):
//! - the request path: `conn` (accept, caps, deadlines), `tls` (handshake,
//!   certificates, ACME), `proxy` (the one module that speaks Pingora's
//!   `ProxyHttp`), `decide` and `route` (the routing decision and path
//!   policy, pure), `tenant` (Host → tenant: cache, lookup, invalidation),
//!   `limits`, `upstream` (pools), `pages`;
//! - around it: `config`, `reload`, `admin` and `admin_client` (the
//!   operator API), `metrics`, `hostnames` (custom-hostname claims),
//!   `schema` (the gateway's own tables), `triggers` (django-tenants), `sys`
//!   (the only FFI);
//! - `cli`: the command line and the server's assembly.

pub mod admin;
pub mod admin_client;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod decide;
pub mod hostnames;
pub mod limits;
pub mod metrics;
pub mod pages;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod schema;
pub mod sys;
pub mod tenant;
pub mod tls;
pub mod triggers;
pub mod upstream;
