//! The guests' monotonic clock: the machine's, counted from a base past
//! every reading an app can have taken while it was imported at build time.

use std::time::Duration;

use wasmtime_wasi::HostMonotonicClock;

use crate::config;

/// Where instances' readings start. The snapshot holds what the app read
/// at import (a TTL cache's stamp, a "started at" for uptimes), taken on
/// the build's own clock, which started with its pre-initialisation and
/// is stopped at `--build-timeout` (a day at most). A clock starting at
/// zero in each instance went backwards from those readings: a cache
/// stamped at import never expired, `monotonic() - started` was negative.
pub const BASE: Duration = config::BUILD_TIMEOUT.max.saturating_mul(2);

/// `wasi:clocks/monotonic-clock` for every instance: the machine's own
/// monotonic clock (`CLOCK_MONOTONIC`, as native Python reads it), so
/// instances, processes and restarts agree, moved past every reading the
/// snapshot can hold.
pub struct GuestMonotonic;

impl HostMonotonicClock for GuestMonotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let since_boot = Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        );
        // u64 nanoseconds last 584 years.
        u64::try_from((BASE + since_boot).as_nanos()).unwrap_or(u64::MAX)
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
