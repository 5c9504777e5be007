//! A counter kept by something else (a library's own atomic), read at each
//! scrape instead of mirrored: nothing has to copy it on a schedule, and
//! two scrapes at once cannot add its growth twice.

use prometheus::core::{Collector, Desc, Describer};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Opts};

/// A counter family whose one value is `read()` at scrape time.
#[derive(Clone)]
pub struct Sampled {
    desc: Desc,
    opts: Opts,
    read: fn() -> u64,
}

impl Sampled {
    pub fn counter(name: &str, help: &str, read: fn() -> u64) -> prometheus::Result<Sampled> {
        let opts = Opts::new(name, help);
        let desc = opts.describe()?;
        Ok(Sampled { desc, opts, read })
    }

    /// The value a scrape would show now.
    pub fn get(&self) -> u64 {
        (self.read)()
    }
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        counter_family(&self.opts, self.get())
    }
}

/// A counter family of `opts` holding `value`: what a scrape shows of a
/// counter kept elsewhere (a library's, or summed over threads:
/// [`super::per_thread`]).
pub(super) fn counter_family(opts: &Opts, value: u64) -> Vec<MetricFamily> {
    IntCounter::with_opts(opts.clone())
        .map(|c| {
            c.inc_by(value);
            c.collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};
    use std::sync::atomic::{AtomicU64, Ordering};

    static KEPT: AtomicU64 = AtomicU64::new(0);

    fn kept() -> u64 {
        KEPT.load(Ordering::Relaxed)
    }

    #[test]
    fn each_scrape_reads_the_value_where_it_is_kept() {
        let r = Registry::new();
        let c = Sampled::counter("kept_total", "Kept elsewhere.", kept).unwrap();
        r.register(Box::new(c.clone())).unwrap();
        let scrape = || {
            let mut out = Vec::new();
            TextEncoder::new().encode(&r.gather(), &mut out).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            scrape().contains("# TYPE kept_total counter\nkept_total 0\n"),
            "{}",
            scrape()
        );
        KEPT.store(7, Ordering::Relaxed);
        assert!(scrape().contains("kept_total 7\n"));
        assert!(scrape().contains("kept_total 7\n"), "a second scrape adds nothing");
        assert_eq!(c.get(), 7);
    }
}
