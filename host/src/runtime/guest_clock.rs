//! The guests' monotonic clock: the host's, counted from a base past every
//! reading an app can have taken while it was imported at build time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime_wasi::HostMonotonicClock;

use crate::config;

/// Where instances' readings start. The snapshot holds what the app read
/// at import (a TTL cache's stamp, a "started at" for uptimes), taken on
/// the build's own clock, which started with its pre-initialisation and
/// is stopped at `--build-timeout` (a day at most). A clock starting at
/// zero in each instance went backwards from those readings: a cache
/// stamped at import never expired, `monotonic() - started` was negative.
pub const BASE: Duration = config::BUILD_TIMEOUT.max.saturating_mul(2);

/// `wasi:clocks/monotonic-clock` for every instance of this process: one
/// origin, so instances agree, and never behind what the snapshot read.
pub struct GuestMonotonic;

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl HostMonotonicClock for GuestMonotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years.
        u64::try_from((BASE + origin().elapsed()).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_start_past_any_build_and_go_forward() {
        let first = GuestMonotonic.now();
        assert!(first >= BASE.as_nanos() as u64);
        assert!(BASE > config::BUILD_TIMEOUT.max);
        assert!(GuestMonotonic.now() >= first);
    }
}
