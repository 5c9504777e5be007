//! The wall clock as Unix seconds: the stamp's timestamp, certificate and
//! claim times. One place, so every part reads it the same way (a clock
//! before 1970 reads 0).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// [`unix_secs`] as a signed number, for arithmetic with other timestamps.
pub fn unix_now() -> i64 {
    i64::try_from(unix_secs()).unwrap_or(i64::MAX)
}
