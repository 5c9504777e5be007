//! The host table under the tenant cache (`tenant::table::HostTable`),
//! against a plain map of what was written: whatever it answers for a host
//! is what was last written for that exact host (never another host's
//! value, stamp or staleness), it forgets only within its rules (evicted
//! under its bound, or expired), and it never holds more than its bound.

use std::collections::HashMap;

use arbitrary::Arbitrary;
use gateway::tenant::table::HostTable;

#[derive(Debug, Arbitrary)]
pub struct Input {
    /// The bound (small, so sweeps and evictions happen).
    pub capacity: u8,
    pub ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
pub enum Op {
    /// `read`: looked up at once (which marks it as read for the sweeps).
    Insert {
        key: Key,
        value: u16,
        read: bool,
    },
    Get(Key),
    Remove(Key),
    /// The clock moves on (entries older than the time to live expire).
    Tick(u8),
    MarkAllStale,
    Clear,
}

/// A host: one of a few that collide in their first bytes, or anything.
#[derive(Debug, Arbitrary)]
pub enum Key {
    Near(u8),
    Raw(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            // Same length and prefix, one byte apart: what a table comparing
            // less than the whole key would confuse.
            Key::Near(i) => format!("t{:03}.myapp.localhost", i % 40),
            Key::Raw(s) => s.clone(),
        }
    }
}

/// Entries older than this many ticks are expired.
const TTL: u32 = 5;

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

pub fn check(input: &Input) {
    let table: HostTable<u16> = HostTable::new(u64::from(input.capacity));
    let bound = usize::from(input.capacity).max(1);
    // What was last written per host: (value, stamp, stale).
    let mut model: HashMap<String, (u16, u32, bool)> = HashMap::new();
    let mut now: u32 = 1_000;
    for op in input.ops.iter().take(400) {
        let expired = |stamp: u32| now.saturating_sub(stamp) > TTL;
        match op {
            Op::Insert { key, value, read } => {
                let key = key.text();
                table.insert(&key, *value, now, expired);
                model.insert(key.clone(), (*value, now, false));
                if *read {
                    // Just written: found, as written.
                    let found = table.get(&key, expired).expect("an entry just inserted is found");
                    assert_eq!((found.value, found.stamp, found.stale), (*value, now, false), "{key}");
                }
            }
            Op::Get(key) => {
                let key = key.text();
                if let Some(found) = table.get(&key, expired) {
                    let want = model.get(&key).copied();
                    assert_eq!(
                        Some((found.value, found.stamp, found.stale)),
                        want,
                        "{key:?}: the table answered what was not written for it"
                    );
                    assert!(!expired(found.stamp), "{key:?}: an expired entry was answered");
                }
            }
            Op::Remove(key) => {
                let key = key.text();
                let had = table.remove(&key);
                let modelled = model.remove(&key).is_some();
                assert!(!had || modelled, "{key:?}: removed what was never written");
                assert!(table.get(&key, expired).is_none(), "{key:?}: found after its removal");
            }
            Op::Tick(n) => now = now.saturating_add(u32::from(*n % 4)),
            Op::MarkAllStale => {
                table.mark_all_stale();
                model.values_mut().for_each(|e| e.2 = true);
            }
            Op::Clear => {
                table.clear();
                model.clear();
                assert!(table.is_empty(), "entries left after a clear");
            }
        }
        assert!(table.len() <= bound, "{} entries held, bound {bound}", table.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forty hosts of one length and prefix, each written then read back,
    /// in 200 tables (each with hash keys of its own): a table comparing
    /// less than the whole key answers a host with another's value when
    /// the two meet in a probe group with the same 7-bit tag, about one
    /// lookup in 200 here, so ~40 times in all (measured on a table
    /// comparing lengths only).
    #[test]
    fn near_neighbours_are_never_confused() {
        let mut ops: Vec<Op> = (0..40u8)
            .map(|i| Op::Insert {
                key: Key::Near(i),
                value: u16::from(i),
                read: false,
            })
            .collect();
        ops.extend((0..40u8).map(|i| Op::Get(Key::Near(i))));
        let input = Input { capacity: 200, ops };
        for _ in 0..200 {
            check(&input);
        }
    }
}
