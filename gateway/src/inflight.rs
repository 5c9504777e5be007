//! Work in flight per name, and the changes heard during it. The ACME
//! attempts and the custom-hostname checks each read a name's state (the
//! tenant cache, the domain table) and write an outcome; a change to the
//! name (its NOTIFY) that arrives between the two finds the work still
//! running, and the outcome rests on the state before it. So the work is
//! registered here while it runs, a change marks it, and the work looks
//! at the change again once its outcome is written.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use parking_lot::Mutex;

/// The names with work in flight; `true`: the name changed meanwhile.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, bool>>);

impl InFlight {
    /// Registers work on `name` unless some is in flight already (then
    /// `false`: that work covers it). The work then holds a [`Running`].
    pub fn start(&self, name: &str) -> bool {
        match self.0.lock().entry(name.to_owned()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(free) => {
                free.insert(false);
                true
            }
        }
    }

    /// The registration [`InFlight::start`] made for `name`, for the work to
    /// hold: it ends however the work ends (a panic, a deadline or a
    /// cancellation included) unless the work finished it first.
    pub fn running<'a>(&'a self, name: &'a str) -> Running<'a> {
        Running {
            set: self,
            name,
            armed: true,
        }
    }

    /// Marks the work in flight on `name`, if any, as started on what was
    /// known before a change to the name. Whether there was such work.
    pub fn mark_changed(&self, name: &str) -> bool {
        self.0.lock().get_mut(name).map(|changed| *changed = true).is_some()
    }

    /// Marks all work in flight (changes to any name may have gone unheard).
    pub fn mark_all_changed(&self) {
        self.0.lock().values_mut().for_each(|changed| *changed = true);
    }
}

/// A name's registration while its work runs.
pub struct Running<'a> {
    set: &'a InFlight,
    name: &'a str,
    /// Cleared once the work has ended the registration itself: a later
    /// piece of work on the name may hold it by the time this drops.
    armed: bool,
}

impl Running<'_> {
    /// At the end of the work: if no change was marked, the registration
    /// ends (in the same step, so a change arriving later finds no work
    /// and is handled by its own) and `true`; else the mark is taken, the
    /// name stays registered while the change is looked at, and `false`.
    pub fn finish_unless_changed(&mut self) -> bool {
        let mut names = self.set.0.lock();
        match names.get_mut(self.name) {
            Some(changed) if *changed => {
                *changed = false;
                false
            }
            _ => {
                names.remove(self.name);
                self.armed = false;
                true
            }
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.set.0.lock().remove(self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_during_the_work_is_looked_at_once_and_only_then_it_ends() {
        let set = InFlight::default();
        assert!(!set.mark_changed("a.example"), "no work in flight");
        assert!(set.start("a.example"));
        assert!(!set.start("a.example"), "the running work covers it");
        let mut running = set.running("a.example");
        assert!(set.mark_changed("a.example"));
        assert!(set.mark_changed("a.example"), "marked twice, looked at once");
        assert!(!running.finish_unless_changed());
        assert!(!set.start("a.example"), "still registered while it looks");
        assert!(running.finish_unless_changed());
        // Finished: the next work registers, and this guard's drop leaves
        // that registration alone.
        assert!(set.start("a.example"));
        drop(running);
        assert!(!set.start("a.example"));
    }

    #[test]
    fn a_gap_marks_all_work_in_flight() {
        let set = InFlight::default();
        assert!(set.start("a.example") && set.start("b.example"));
        let (mut a, mut b) = (set.running("a.example"), set.running("b.example"));
        set.mark_all_changed();
        assert!(!a.finish_unless_changed() && !b.finish_unless_changed());
        assert!(a.finish_unless_changed() && b.finish_unless_changed());
        set.mark_all_changed();
        assert!(set.start("a.example"), "nothing was in flight to mark");
    }

    #[tokio::test]
    async fn work_that_panics_leaves_its_name_free() {
        let set = std::sync::Arc::new(InFlight::default());
        assert!(set.start("a.example") && set.start("b.example"));
        assert!(set.mark_changed("b.example"));
        let held = set.clone();
        let ended = tokio::spawn(async move {
            let _running = held.running("a.example");
            panic!("the ACME client panicked");
        })
        .await;
        assert!(ended.unwrap_err().is_panic());
        assert!(set.start("a.example"), "a.example is free again");
        assert!(!set.start("b.example"), "b.example still runs");
        assert!(!set.mark_changed("c.example"));
    }
}
