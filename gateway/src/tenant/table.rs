//! A bounded, sharded map from host name to a small value: the storage under
//! the tenant cache.
//!
//! Purpose-built because the bytes per entry are the cost of a cached domain
//! (a SaaS can have hundreds of thousands): an entry is the boxed host name
//! plus the value, inline in an open-addressing table (hashbrown), nothing
//! else. A general cache crate (moka) spent 306 bytes of bookkeeping per entry
//! on access-order lists, write-order lists and per-entry records
//! (`bench/RESULTS.md`).
//!
//! - The key is hashed once (SipHash with a per-process random key, so
//!   attacker-chosen host names cannot aim at one bucket); its middle bits pick
//!   a shard, each shard is a hashbrown table behind its own mutex, on a
//!   cache line of its own (workers locking neighbouring shards do not
//!   invalidate each other's line).
//! - Bound: a shard holds at most `capacity / shards` entries. Inserting into
//!   a full shard sweeps it once (CLOCK, "second chance", in one pass):
//!   expired entries and those not read since the previous sweep go, read
//!   ones lose their mark and stay. If that frees less than an eighth of the
//!   shard, arbitrary entries go too. Each insert thus pays O(1) amortised.
//! - Each entry carries a 32-bit stamp (the caller's clock: the cache stores
//!   the tick its query started) and a stale flag (`mark_all_stale`); the
//!   caller says which stamps are expired.

use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, MutexGuard};
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

/// 32 bytes plus the key's characters for an `Arc` value.
struct Entry<V> {
    key: Box<str>,
    value: V,
    stamp: u32,
    /// Read since the last sweep of its shard.
    seen: bool,
    /// Marked by `mark_all_stale` after it was inserted.
    stale: bool,
}

/// What `get` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<V> {
    pub value: V,
    pub stamp: u32,
    pub stale: bool,
}

type Shard<V> = HashTable<Entry<V>>;

pub struct HostTable<V> {
    shards: Box<[CachePadded<Mutex<Shard<V>>>]>,
    hasher: RandomState,
    shard_cap: usize,
}

/// What one insert did to the table's other entries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Dropped to stay within the bound (not read lately, or arbitrary).
    pub evicted: usize,
    /// Dropped because the caller said they were expired.
    pub expired: usize,
}

impl<V: Clone> HostTable<V> {
    /// A table for at most `capacity` entries (at least one).
    pub fn new(capacity: u64) -> HostTable<V> {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        // Enough shards that worker threads rarely meet on one lock, few
        // enough that each shard's bound stays close to its share.
        let shards = (capacity / 256).clamp(1, 64).next_power_of_two().min(64);
        HostTable {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(HashTable::new())))
                .collect(),
            hasher: RandomState::new(),
            shard_cap: (capacity / shards).max(1),
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard<V>> {
        // hashbrown uses the low bits (bucket) and the top seven (tag).
        let i = (hash >> 32) as usize & (self.shards.len() - 1);
        self.shards[i].lock()
    }

    /// The entry for `key`, marking it as read; `None` if absent or its stamp
    /// is `expired` (an expired entry is removed).
    pub fn get(&self, key: &str, expired: impl Fn(u32) -> bool) -> Option<Found<V>> {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let found = shard.find_entry(hash, |e| &*e.key == key).ok()?;
        if expired(found.get().stamp) {
            found.remove();
            return None;
        }
        let e = found.into_mut();
        // Written only when it changes: a hit on a hot host leaves its
        // entry's cache line clean, so cores reading it keep their copies.
        if !e.seen {
            e.seen = true;
        }
        Some(Found {
            value: e.value.clone(),
            stamp: e.stamp,
            stale: e.stale,
        })
    }

    /// Insert or replace `key` (not stale). A full shard is swept first (see
    /// the module header); `expired` says which stamps may go regardless of use.
    pub fn insert(&self, key: &str, value: V, stamp: u32, expired: impl Fn(u32) -> bool) -> Swept {
        let hash = self.hasher.hash_one(key);
        let hasher = |e: &Entry<V>| self.hasher.hash_one(&*e.key);
        let mut shard = self.shard(hash);
        if let Ok(mut found) = shard.find_entry(hash, |e| &*e.key == key) {
            let e = found.get_mut();
            (e.value, e.stamp, e.stale) = (value, stamp, false);
            return Swept::default();
        }
        let mut swept = Swept::default();
        if shard.len() >= self.shard_cap {
            shard.retain(|e| {
                if expired(e.stamp) {
                    swept.expired += 1;
                    false
                } else if e.seen {
                    e.seen = false;
                    true
                } else {
                    swept.evicted += 1;
                    false
                }
            });
            let target = self.shard_cap - (self.shard_cap / 8).max(1);
            let mut excess = shard.len().saturating_sub(target);
            if excess > 0 {
                swept.evicted += excess;
                shard.retain(|_| {
                    let keep = excess == 0;
                    excess = excess.saturating_sub(1);
                    keep
                });
            }
        }
        shard.insert_unique(
            hash,
            Entry {
                key: Box::from(key),
                value,
                stamp,
                seen: false,
                stale: false,
            },
            hasher,
        );
        swept
    }

    /// `true`: there was an entry.
    pub fn remove(&self, key: &str) -> bool {
        let hash = self.hasher.hash_one(key);
        match self.shard(hash).find_entry(hash, |e| &*e.key == key) {
            Ok(found) => {
                found.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Flag every entry as stale (`Found::stale`); entries inserted later are not.
    pub fn mark_all_stale(&self) {
        for shard in self.shards.iter() {
            for e in shard.lock().iter_mut() {
                e.stale = true;
            }
        }
    }

    /// Remove every entry.
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            // Release the memory too: after a clear the table refills slowly.
            *shard = HashTable::new();
        }
    }

    /// Entries held, expired ones included until a sweep or a read finds them.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound actually enforced (`capacity` rounded down to the shards).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: fn(u32) -> bool = |_| false;

    fn value<V: Clone>(t: &HostTable<V>, key: &str) -> Option<V> {
        t.get(key, NEVER).map(|f| f.value)
    }

    #[test]
    fn get_insert_replace_remove() {
        let t = HostTable::new(100);
        assert_eq!(value(&t, "a.example"), None);
        t.insert("a.example", 1u32, 0, NEVER);
        t.insert("b.example", 2, 0, NEVER);
        assert_eq!(value(&t, "a.example"), Some(1));
        t.insert("a.example", 3, 7, NEVER);
        assert_eq!(
            t.get("a.example", NEVER),
            Some(Found {
                value: 3,
                stamp: 7,
                stale: false
            })
        );
        assert_eq!(t.len(), 2);
        t.remove("a.example");
        assert_eq!(value(&t, "a.example"), None);
        assert_eq!(value(&t, "b.example"), Some(2));
        t.clear();
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn entry_is_32_bytes_for_a_pointer_value() {
        assert_eq!(std::mem::size_of::<Entry<std::sync::Arc<u8>>>(), 32);
        assert_eq!(std::mem::size_of::<Entry<()>>(), 24);
    }

    #[test]
    fn expired_entries_are_absent_and_removed() {
        let t = HostTable::new(100);
        t.insert("old.example", (), 1, NEVER);
        t.insert("new.example", (), 9, NEVER);
        let expired = |stamp: u32| stamp < 5;
        assert!(t.get("old.example", expired).is_none());
        assert!(t.get("new.example", expired).is_some());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn stale_marks_apply_to_entries_present_then() {
        let t = HostTable::new(100);
        t.insert("before.example", 1u8, 0, NEVER);
        t.insert("replaced.example", 2, 0, NEVER);
        t.mark_all_stale();
        t.insert("after.example", 3, 0, NEVER);
        t.insert("replaced.example", 4, 0, NEVER);
        let stale = |k: &str| t.get(k, NEVER).map(|f| f.stale);
        assert_eq!(stale("before.example"), Some(true));
        assert_eq!(stale("after.example"), Some(false));
        assert_eq!(stale("replaced.example"), Some(false));
    }

    #[test]
    fn the_bound_holds_for_any_number_of_inserts() {
        for cap in [1u64, 7, 300, 5_000] {
            let t = HostTable::new(cap);
            assert!(t.capacity() <= cap as usize && t.capacity() * 2 > cap as usize);
            let mut evicted = 0;
            for i in 0..cap * 5 {
                evicted += t.insert(&format!("h{i}.example"), (), 0, NEVER).evicted;
                assert!(t.len() <= t.capacity(), "cap {cap}: {} entries", t.len());
            }
            assert_eq!(
                t.len() + evicted,
                cap as usize * 5,
                "cap {cap}: every entry is held or counted"
            );
        }
    }

    #[test]
    fn entries_read_between_sweeps_survive_a_flood() {
        let t = HostTable::new(1_000);
        let hot: Vec<String> = (0..50).map(|i| format!("hot{i}.example")).collect();
        for h in &hot {
            t.insert(h, 1u32, 0, NEVER);
        }
        for i in 0..20_000 {
            if i % 50 == 0 {
                // The hot names are read about as often as the table turns over.
                for h in &hot {
                    assert_eq!(value(&t, h), Some(1), "{h} evicted after {i} inserts");
                }
            }
            t.insert(&format!("cold{i}.example"), 0, 0, NEVER);
        }
    }

    #[test]
    fn a_full_shard_drops_expired_entries_first() {
        let t = HostTable::new(8);
        for i in 0..8u32 {
            t.insert(&format!("h{i}"), i, i, NEVER);
            // Every entry has been read: only expiry can free room.
            t.get(&format!("h{i}"), NEVER);
        }
        let swept = t.insert("new", 100, 100, |stamp| stamp < 4);
        assert_eq!(swept, Swept { evicted: 0, expired: 4 });
        assert_eq!(value(&t, "h5"), Some(5));
        assert_eq!(value(&t, "new"), Some(100));
    }
}
