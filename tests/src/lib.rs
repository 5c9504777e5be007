//! Test support for the end-to-end suites, one module per part: `pg` (a
//! throwaway PostgreSQL cluster per test, replicas), `process` (children
//! stopped by PID, polling with a bound, free ports), `app` (the
//! upstream-app, tenants, hand-made stamps), `gateway` (the gateway under
//! test), `stack` (the one stack builder every suite starts from), `http`,
//! `tls`, `acme` (Pebble, a real DNS server), `ws`, `django`. Suites
//! `use e2e::*`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const STAMP_KEY_ID: &str = "k1";
pub const STAMP_SECRET: &str = "e2e-stamp-secret-0123456789abcdef";
pub const STAMP_KEY2_ID: &str = "k2";
pub const STAMP_SECRET2: &str = "e2e-rotated-secret-fedcba9876543210";

pub mod acme;
pub mod app;
pub mod django;
pub mod gateway;
pub mod http;
pub mod pg;
pub mod process;
pub mod stack;
pub mod tls;
pub mod ws;

pub use acme::*;
pub use app::*;
pub use gateway::*;
pub use pg::*;
pub use process::*;
pub use stack::{Stack, StackBuilder};
