//! Tenant resolution: Host → normalised name → cached lookup in the domain
//! table → a [`Tenant`] (or a reason to refuse the request).

pub mod cache;
pub mod host;
pub mod invalidate;
pub mod lookup;
pub mod table;

use std::sync::{Arc, OnceLock};

use crate::metrics::tenant::TenantStats;

/// A tenant's lifecycle state as stored in the tenant table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Suspended,
    Deleted,
}

/// What the domain table says about a host. Shared by `Arc`: the request
/// path clones a pointer, never the strings (so they are plain boxes: no
/// reference count of their own, 16 bytes less per cached tenant).
#[derive(Debug)]
pub struct Tenant {
    /// Schema name: the value stamped into `X-Tenant`.
    pub schema: Box<str>,
    pub status: Status,
    /// Dedicated backend pool, if the tenant is pinned to one.
    pub pool: Option<Box<str>>,
    /// This tenant's metric handles, attached on first use.
    pub stats: OnceLock<Arc<TenantStats>>,
}
