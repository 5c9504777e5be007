//! Properties of the request path's hostile-input handling, checked on
//! inputs a fuzzer makes: each module is one property set, `check` panics
//! when a property fails, and `run` builds the input from raw bytes
//! (`arbitrary`), so the same function serves `cargo fuzz`
//! (`fuzz_targets/`, `scripts/fuzz.sh`) and the replay of the stored
//! inputs and a fixed-seed sweep in `tests/replay.rs` (run by
//! `scripts/test.sh`).
//!
//! - [`forward`]: a connection's requests through the header policy with
//!   the connection's memos: the stamp verifies for the host and tenant
//!   routed, no client tenant header survives, the forwarding headers
//!   describe this request and no earlier one.
//! - [`stamp`]: the stamp contract: whatever is signed verifies, anything
//!   changed does not, and no input panics the verifier.
//! - [`host`]: host normalisation is idempotent, a fixed point of the
//!   stamp's own normalisation, and the connection memo answers as a
//!   fresh normalisation would.
//! - [`ws`]: the WebSocket frame tracker reads the same frame boundaries
//!   however the writes are split.
//! - [`table`]: the host table under the tenant cache answers a host only
//!   with what was written for that exact host, within its bound.
//! - [`paths`]: a path exempt from the HTTPS redirect stays under its
//!   exemption as a backend resolves it; challenge tokens are one segment.
//! - [`config`]: any configuration text is refused or accepted, never a
//!   panic.

pub mod config;
pub mod forward;
pub mod host;
pub mod paths;
pub mod stamp;
pub mod table;
pub mod ws;

/// Checks `check` on the input of `T` that `data` encodes (a target's
/// `run`; bytes that encode none are skipped).
pub fn run<'a, T: arbitrary::Arbitrary<'a>>(data: &'a [u8], check: fn(&T)) {
    if let Some(input) = input::<T>(data) {
        check(&input);
    }
}

/// One of a target's list of realistic values (by index), or anything.
#[derive(Debug, arbitrary::Arbitrary)]
pub enum Choice {
    Known(u8),
    Raw(String),
}

impl Choice {
    pub fn pick<'a>(&'a self, known: &[&'a str]) -> &'a str {
        match self {
            Choice::Known(i) => known[usize::from(*i) % known.len()],
            Choice::Raw(s) => s,
        }
    }
}

/// The input of `T` that `data` encodes, if any (a fuzzer's bytes that
/// run out early still make one; `None` only for a malformed encoding).
pub fn input<'a, T: arbitrary::Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(arbitrary::Unstructured::new(data)).ok()
}

/// The input `data` encodes, as text (`tests/replay.rs`'s `show`).
pub fn show<'a, T: arbitrary::Arbitrary<'a> + std::fmt::Debug>(data: &'a [u8]) -> String {
    format!("{:#?}", input::<T>(data))
}
