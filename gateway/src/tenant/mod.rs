//! Tenant resolution: Host → normalised name → cached lookup in the domain
//! table → a [`Tenant`] (or a reason to refuse the request).

pub mod cache;
pub mod host;
pub mod invalidate;
pub mod lookup;
pub mod record;
pub mod records;
pub mod table;

pub use record::{Status, Tenant};
