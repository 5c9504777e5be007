//! Which due claims the checkers take, as a pure function: the check slots
//! are shared between tenants, not handed out by due time alone. Taken in
//! due order, one tenant's thousands of claims whose checks take their whole
//! timeout (names whose DNS or web server never answers) were always the
//! most overdue, and every other tenant's new claim waited behind all of
//! them. Here each slot goes to the tenant with the fewest checks running
//! (across the fleet, as the leases in the database say), its earliest due
//! claim first; ties go to the earliest due. A tenant with many claims gets
//! the slots no one else wants, and no more. Written here rather than taken
//! from a crate: it is a few lines of max-min fairness over the database's
//! answer, and the leases that count a tenant's running checks are ours.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// A claim due for a look, as the checkers choose among them.
#[derive(Debug, Clone, PartialEq)]
pub struct Due {
    pub name: String,
    pub tenant: String,
    /// When it became due (unix seconds; any order-preserving clock).
    pub due_at: f64,
}

/// A tenant's next claim in line, ordered for the heap: fewest running
/// first, then earliest due, then by tenant (a total order, so the choice
/// does not depend on the input's order).
#[derive(Debug, PartialEq)]
struct Turn {
    running: u64,
    due_at: f64,
    tenant: usize,
}

impl Eq for Turn {}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.running
            .cmp(&other.running)
            .then(self.due_at.total_cmp(&other.due_at))
            .then(self.tenant.cmp(&other.tenant))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Up to `limit` of the `due` claims, in the order they take the free
/// check slots: each goes to the tenant with the fewest checks running
/// (`running`, by tenant; a claim taken here counts as running for the
/// next choice), the tenant's earliest due claim; ties to the earliest due.
pub fn pick(due: Vec<Due>, running: &HashMap<String, u64>, limit: usize) -> Vec<Due> {
    let mut by_tenant: HashMap<String, Vec<Due>> = HashMap::new();
    for d in due {
        by_tenant.entry(d.tenant.clone()).or_default().push(d);
    }
    // Each tenant's claims, earliest due first, in a queue of its own
    // (tenants in name order: `Turn::tenant` indexes them).
    let mut tenants: Vec<(String, Vec<Due>)> = by_tenant.into_iter().collect();
    tenants.sort_by(|a, b| a.0.cmp(&b.0));
    let mut queues: Vec<VecDeque<Due>> = Vec::with_capacity(tenants.len());
    let mut heap = BinaryHeap::with_capacity(tenants.len());
    for (i, (tenant, mut claims)) in tenants.into_iter().enumerate() {
        claims.sort_by(|a, b| a.due_at.total_cmp(&b.due_at).then_with(|| a.name.cmp(&b.name)));
        if let Some(first) = claims.first() {
            heap.push(Reverse(Turn {
                running: running.get(&tenant).copied().unwrap_or(0),
                due_at: first.due_at,
                tenant: i,
            }));
        }
        queues.push(claims.into());
    }
    let mut picked = Vec::with_capacity(limit.min(heap.len()));
    while picked.len() < limit {
        let Some(Reverse(turn)) = heap.pop() else { break };
        let queue = &mut queues[turn.tenant];
        let Some(claim) = queue.pop_front() else { continue };
        picked.push(claim);
        if let Some(next) = queue.front() {
            heap.push(Reverse(Turn {
                running: turn.running.saturating_add(1),
                due_at: next.due_at,
                tenant: turn.tenant,
            }));
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(name: &str, tenant: &str, due_at: f64) -> Due {
        Due {
            name: name.into(),
            tenant: tenant.into(),
            due_at,
        }
    }

    fn names(picked: &[Due]) -> Vec<&str> {
        picked.iter().map(|d| d.name.as_str()).collect()
    }

    #[test]
    fn a_tenant_with_many_overdue_claims_does_not_keep_another_waiting() {
        // A flooded the queue long ago; B's one claim just became due.
        let mut all: Vec<Due> = (0..1000).map(|i| due(&format!("a{i}"), "a", f64::from(i))).collect();
        all.push(due("b0", "b", 5000.0));
        let picked = pick(all, &HashMap::new(), 2);
        assert_eq!(names(&picked), ["a0", "b0"]);
    }

    #[test]
    fn the_slots_go_to_the_tenant_with_fewest_checks_running() {
        // A already runs two checks (on this gateway or another): B's and
        // C's claims go first, even though A's are older.
        let all = vec![
            due("a0", "a", 1.0),
            due("a1", "a", 2.0),
            due("b0", "b", 10.0),
            due("b1", "b", 11.0),
            due("c0", "c", 20.0),
        ];
        let running = HashMap::from([("a".to_owned(), 2)]);
        assert_eq!(names(&pick(all.clone(), &running, 3)), ["b0", "c0", "b1"]);
        // With more slots A gets its turn once the others run as many.
        assert_eq!(names(&pick(all, &running, 5)), ["b0", "c0", "b1", "a0", "a1"]);
    }

    #[test]
    fn among_equals_the_earliest_due_goes_first_and_input_order_does_not_matter() {
        let all = vec![due("b0", "b", 3.0), due("a1", "a", 4.0), due("a0", "a", 1.0)];
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(names(&pick(all, &HashMap::new(), 3)), ["a0", "b0", "a1"]);
        assert_eq!(names(&pick(reversed, &HashMap::new(), 3)), ["a0", "b0", "a1"]);
    }

    #[test]
    fn takes_at_most_the_limit_and_every_claim_when_there_is_room() {
        let all = vec![
            due("a0", "a", 1.0),
            due("b0", "b", f64::NEG_INFINITY),
            due("a1", "a", f64::NAN),
        ];
        assert!(pick(all.clone(), &HashMap::new(), 0).is_empty());
        let mut every = names(&pick(all, &HashMap::new(), 10))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        every.sort();
        assert_eq!(every, ["a0", "a1", "b0"]);
        assert!(pick(Vec::new(), &HashMap::new(), 4).is_empty());
    }
}
