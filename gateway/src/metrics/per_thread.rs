//! Gateway-wide counters that every request writes, kept per worker thread
//! and summed at scrape time.
//!
//! Why not prometheus' `IntCounter`/`IntGauge`: each is one atomic that
//! every worker thread adds to with a locked instruction. With several
//! workers on several cores, each add first has to take the line from the
//! core that wrote it last. Here each thread has a slot on a cache line of
//! its own, written only by that thread (a plain load and store, no locked
//! instruction), and a scrape sums the slots into an ordinary counter or
//! gauge family. (The benchmark runs one worker, so it measures only the
//! locked instructions saved: bench/RESULTS.md, sixth round.)
//!
//! The slots come from the `thread_local` crate: a thread's slot outlives
//! the thread and is handed to the next thread that reuses its id, so
//! nothing counted is lost and a slot never has two writers at once.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::MetricFamily;
use prometheus::{IntGauge, Opts};
use thread_local::ThreadLocal;

/// What the sum is exposed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only ever added to.
    Counter,
    /// Goes up and down (a thread may take away what another added).
    Gauge,
}

/// A counter or gauge with one slot per thread. Cloning shares the slots
/// (one clone is registered, the other is written).
#[derive(Clone)]
pub struct PerThread(Arc<Inner>);

struct Inner {
    kind: Kind,
    opts: Opts,
    desc: Desc,
    slots: ThreadLocal<CachePadded<AtomicI64>>,
}

impl PerThread {
    /// A counter family `name` (only [`PerThread::inc`] is meaningful).
    pub fn counter(name: &str, help: &str) -> prometheus::Result<PerThread> {
        PerThread::new(Kind::Counter, Opts::new(name, help))
    }

    /// A gauge family `name`.
    pub fn gauge(name: &str, help: &str) -> prometheus::Result<PerThread> {
        PerThread::new(Kind::Gauge, Opts::new(name, help))
    }

    fn new(kind: Kind, opts: Opts) -> prometheus::Result<PerThread> {
        let desc = opts.describe()?;
        Ok(PerThread(Arc::new(Inner {
            kind,
            opts,
            desc,
            slots: ThreadLocal::new(),
        })))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    fn add(&self, n: i64) {
        let slot = self.0.slots.get_or_default();
        // This thread is the slot's only writer: no read-modify-write needed.
        slot.store(slot.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Every thread's slot summed.
    pub fn get(&self) -> i64 {
        self.0
            .slots
            .iter()
            .fold(0i64, |sum, slot| sum.wrapping_add(slot.load(Relaxed)))
    }
}

impl Collector for PerThread {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // A fresh metric with the registered options, holding the sum.
        let opts = &self.0.opts;
        let sum = self.get();
        match self.0.kind {
            Kind::Counter => super::sampled::counter_family(opts, u64::try_from(sum).unwrap_or(0)),
            Kind::Gauge => IntGauge::with_opts(opts.clone())
                .map(|g| {
                    g.set(sum);
                    g.collect()
                })
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};

    fn exposition(r: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&r.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_threads_additions_are_summed_into_one_series() {
        let r = Registry::new();
        let hits = PerThread::counter("t_hits_total", "Hits.").unwrap();
        let busy = PerThread::gauge("t_busy", "Busy.").unwrap();
        r.register(Box::new(hits.clone())).unwrap();
        r.register(Box::new(busy.clone())).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        hits.inc();
                        busy.inc();
                    }
                });
            }
        });
        // A gauge taken down on another thread than the one that raised it.
        std::thread::scope(|s| {
            s.spawn(|| (0..3000).for_each(|_| busy.dec()));
        });
        assert_eq!((hits.get(), busy.get()), (4000, 1000));
        let text = exposition(&r);
        assert!(
            text.contains("# TYPE t_hits_total counter\nt_hits_total 4000\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE t_busy gauge\nt_busy 1000\n"), "{text}");
    }

    #[test]
    fn a_name_prometheus_refuses_is_an_error_not_a_panic() {
        assert!(PerThread::counter("not a name", "x").is_err());
    }
}
