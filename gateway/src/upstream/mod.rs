//! Backend pools: where a request goes once its tenant is known.
pub mod pool;
