//! The process's allocator, mimalloc, and handing what a compile freed
//! back to the kernel.
//!
//! perf showed glibc's malloc (free lists, consolidation) at ~9% of a
//! pooled hello request; with mimalloc hello at c=32 rose ~4% in A/B runs.
//!
//! mimalloc returns freed memory to the kernel only after a delay (a
//! second), and only when the thread that owns it next allocates or
//! frees. A compile frees hundreds of megabytes across Cranelift's worker
//! threads, which then sit idle, so a `serve` that compiled 60 new apps
//! kept 200 MiB of freed memory (PSS 290-325 MiB, against 139 MiB for the
//! same apps loaded from the cache). [`handing_back`] makes that delay
//! zero while a compile runs and collects the compiling thread's heap
//! after it: 164 MiB.

use std::ffi::{c_int, c_long};
use std::sync::Mutex;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own API, linked in with it. `libmimalloc-sys` declares these
// only with its `extended` feature, which brings a crate for C types.
unsafe extern "C" {
    fn mi_collect(force: bool);
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// `mi_option_purge_delay` in the `mi_option_t` of mimalloc v3 (what
/// `libmimalloc-sys` 0.1 builds by default; v2 has it at the same index),
/// in milliseconds.
const PURGE_DELAY: c_int = 15;

/// Compiles running, and the purge delay from before the first of them.
static COMPILING: Mutex<(usize, c_long)> = Mutex::new((0, 0));

/// Run `f`, a compile, with what it frees handed back to the kernel at
/// once instead of kept for reuse by threads that will not run again soon.
pub fn handing_back<T>(f: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            let mut c = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
            c.0 -= 1;
            if c.0 == 0 {
                // SAFETY: plain calls into mimalloc, which allows options
                // to change while it runs.
                unsafe { mi_option_set(PURGE_DELAY, c.1) };
            }
            drop(c);
            // SAFETY: as above; collects only this thread's heap.
            unsafe { mi_collect(true) };
        }
    }
    {
        let mut c = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 == 0 {
            // SAFETY: as above.
            c.1 = unsafe { mi_option_get(PURGE_DELAY) };
            unsafe { mi_option_set(PURGE_DELAY, 0) };
        }
        c.0 += 1;
    }
    let _restore = Restore;
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_is_zero_while_compiling_and_as_before_after() {
        // SAFETY: reading an option.
        let get = || unsafe { mi_option_get(PURGE_DELAY) };
        // mimalloc v3's default: another number would mean the option's
        // index moved in another mimalloc.
        assert_eq!(get(), 1000);
        let inside = handing_back(|| (get(), handing_back(get)));
        assert_eq!(inside, (0, 0));
        assert_eq!(get(), 1000);
        // Restored after a panic too.
        let caught = std::panic::catch_unwind(|| handing_back(|| panic!("in a compile")));
        assert!(caught.is_err());
        assert_eq!(get(), 1000);
    }
}
