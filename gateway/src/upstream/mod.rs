//! Backend pools: where a request goes once its tenant is known (`pool`),
//! and the server setting [`TOKIO_TIMERS_FROM_SECS`] for their I/O timeouts.
pub mod pool;

/// Pingora's `fast_timeout_to_tokio_threshold_seconds` as the gateway sets
/// it: every upstream timeout (read, write, idle, connect) of a second or
/// more runs on tokio's timer wheel instead of Pingora's `fast_timeout`.
///
/// Each timed upstream operation that has to wait registers a timer: 2.5 per
/// keep-alive request (the response head, the pooled connection's idle
/// watch, part of the time the body). Pingora's timer takes a lock on a
/// per-thread `BTreeMap`, reads the clock twice and subscribes to a
/// `Notify` (a second lock, again on drop): ~1,500 instructions each.
/// tokio's wheel belongs to the thread's own runtime (one per Pingora
/// thread, so no contention either way): 1,050 fewer instructions per
/// request in `bench/instructions.py` (bench/RESULTS.md, 2026-12-02), with
/// millisecond instead of 10 ms resolution.
pub const TOKIO_TIMERS_FROM_SECS: Option<u64> = Some(0);
