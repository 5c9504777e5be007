//! What bounds the gateway's memory per cached domain: heap bytes per entry
//! of a moka cache configured like the tenant cache (size bound + TTL), with
//! keys and values shaped like ours, counted by a counting allocator.
//! `bench/RESULTS.md` quotes its output next to the RSS measurement.
//!
//! Usage: cargo run --release -p gateway --example cache_footprint [-- --no-ttl]
//! (`--no-ttl`: the same cache without moka's time-to-live, i.e. what a
//! design that checks freshness itself would pay.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Shaped like `tenant::Tenant` (schema, status, pool, metric handle slot).
#[allow(dead_code)]
struct Tenant {
    schema: Arc<str>,
    status: u8,
    pool: Option<Arc<str>>,
    stats: std::sync::OnceLock<Arc<()>>,
}

/// Shaped like the cache's `Positive`.
#[derive(Clone)]
#[allow(dead_code)]
struct Positive {
    tenant: Arc<Tenant>,
    fetched: Instant,
    epoch: u64,
}

fn main() {
    const N: usize = 100_000;
    let ttl = !std::env::args().any(|a| a == "--no-ttl");
    let builder = moka::sync::Cache::builder().max_capacity(200_000);
    let cache: moka::sync::Cache<Arc<str>, Positive> = if ttl {
        builder.time_to_live(Duration::from_secs(3600)).build()
    } else {
        builder.build()
    };
    cache.run_pending_tasks();
    let names: Vec<(String, String)> = (0..N)
        .map(|i| (format!("m{i:06}.mem.bench"), format!("m{i:06}")))
        .collect();
    let strings: usize = names.iter().map(|(h, s)| h.len() + s.len()).sum();
    let base = LIVE.load(Ordering::Relaxed);
    let mut ours = 0isize;
    for (host, schema) in &names {
        let before = LIVE.load(Ordering::Relaxed);
        let key: Arc<str> = Arc::from(host.as_str());
        let tenant = Arc::new(Tenant {
            schema: Arc::from(schema.as_str()),
            status: 0,
            pool: None,
            stats: Default::default(),
        });
        ours += LIVE.load(Ordering::Relaxed) - before;
        cache.insert(
            key,
            Positive {
                tenant,
                fetched: Instant::now(),
                epoch: 0,
            },
        );
    }
    cache.run_pending_tasks();
    let total = LIVE.load(Ordering::Relaxed) - base;
    let n = N as f64;
    println!("entries: {} (moka time-to-live: {ttl})", cache.entry_count());
    println!("heap bytes per entry: {:.0}", total as f64 / n);
    println!("  key + tenant record (our allocations): {:.0}", ours as f64 / n);
    println!("  moka bookkeeping: {:.0}", (total - ours) as f64 / n);
    println!("  of which host + schema strings: {:.0}", strings as f64 / n);
}
