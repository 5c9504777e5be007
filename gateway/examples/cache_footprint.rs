//! What the gateway's memory per cached domain is made of: heap bytes per
//! entry of the tenant cache's table (`gateway::tenant::table`) holding the
//! real tenant records (`gateway::tenant::record`, without metric handles or
//! limiters: those are per tenant, not per domain), counted by a counting
//! allocator. `bench/RESULTS.md` quotes its output next to the RSS
//! measurement of the running gateway.
//!
//! Usage: cargo run --release -p gateway --example cache_footprint
//!
//! A counting global allocator needs `unsafe impl GlobalAlloc`: allowed
//! here (a measuring tool, not shipped code) and nowhere else.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use gateway::tenant::{record, table};

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

fn main() {
    const N: usize = 100_000;
    let cache: table::HostTable<Arc<record::Tenant>> = table::HostTable::new(200_000);
    let names: Vec<(String, String)> = (0..N)
        .map(|i| (format!("m{i:06}.mem.bench"), format!("m{i:06}")))
        .collect();
    let strings: usize = names.iter().map(|(h, s)| h.len() + s.len()).sum();
    let base = LIVE.load(Ordering::Relaxed);
    let mut tenants = 0isize;
    for (host, schema) in &names {
        let before = LIVE.load(Ordering::Relaxed);
        let tenant = Arc::new(record::Tenant::new(schema, record::Status::Active, None).expect("short names"));
        tenants += LIVE.load(Ordering::Relaxed) - before;
        cache.insert(host, tenant, 1, |_| false);
    }
    let total = LIVE.load(Ordering::Relaxed) - base;
    let n = N as f64;
    println!("entries: {}", cache.len());
    println!(
        "heap bytes per entry: {:.0} (requested sizes; the allocator rounds up)",
        total as f64 / n
    );
    println!("  tenant record + schema string: {:.0}", tenants as f64 / n);
    println!(
        "  table (slot, control byte, spare buckets) + host key: {:.0}",
        (total - tenants) as f64 / n
    );
    println!("  of which host + schema strings: {:.0}", strings as f64 / n);
    println!(
        "overhead beyond the strings: {:.0}",
        (total as f64 - strings as f64) / n
    );
}
