//! The reference tenant backend as a library (the binary, `src/main.rs`,
//! runs [`cli::main`]): `http` (the router; reachable in-process from
//! tests), `tenant_tx` (the only way a handler reaches tenant data),
//! `state`, `error`, `jobs`, `migrate`, `admin` (the operator CLI's
//! actions), `config`, `cli`.

pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod http;
pub mod jobs;
pub mod migrate;
pub mod state;
pub mod tenant_tx;
