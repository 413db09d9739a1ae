//! How an engine's instances get their memory, tables and stacks: mapped
//! afresh for each instance, or from slots reserved once and reused, which
//! makes `run --isolation request` (one fresh instance per request) cheaper.
//!
//! A fresh instance mapped afresh faults in every snapshot page its request
//! touches (about 200 faults for a hello request) and unmaps them all after
//! it: more than half of its CPU. wasmtime's pooling allocator keeps a
//! slot's mapping between instances of the same module and, with
//! `PAGEMAP_SCAN` (Linux 6.7+), copies back only the pages the last
//! instance wrote, so the next one finds most pages mapped already. It
//! needs every count fixed when the engine is made, so it is used only
//! where the counts are known: one app, a bounded number of workers.

use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::{Isolation, Limits};

/// Slots reserved per worker: its request's instance, the spare made
/// after a response, and as many again for the old app of a SIGHUP
/// restart draining beside the new one, doubled for margin.
const SLOTS_PER_WORKER: u32 = 4;

/// Slots for instances outside any worker: the first instance made before
/// the port is bound, a spare parked by a request that left, and margin.
const SLOTS_BESIDE_WORKERS: u32 = 8;

/// The address space one slot reserves, about: two memories of 4 GiB
/// (the most a 32-bit memory can grow to) and their guards, tables and a
/// stack.
const SLOT_GIB: u64 = 8;

/// More slots than this and instances are mapped afresh instead: 128 are
/// 1 TiB of the 128 TiB a process has. Reached above 30 workers.
const MAX_SLOTS: u32 = 128;

/// The bytes of linear memory, from its start, whose pages a slot keeps
/// mapped and copies back (or zeroes, above the snapshot) after an
/// instance; pages written past it are unmapped as without slots, and
/// faulted in again by the next instance. It must reach past the heap a
/// request writes: a Flask app's snapshot ends at 21 MB and its requests
/// write up to 26 MB (at 8 or 16 MiB, about 400 faults per request
/// remained). A hello request writes about 0.3 MiB, a Flask one about 1
/// MiB of the snapshot and 4.8 MiB above it, and `slot_pages` may add
/// the pages between those, up to half of this in all; the copies are
/// private memory each slot holds while idle.
pub const KEEP_RESIDENT: usize = 32 << 20;

/// Where an engine's instances get their memory, tables and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Mapped for each instance and unmapped after it: any number of apps
    /// and instances (`serve`, `exec`, pooled `run`).
    OnDemand,
    /// From this many slots reserved when the engine is made and reused.
    Slots(u32),
}

impl Allocation {
    /// For `run` of one app with `limits`: slots under request isolation,
    /// where every request makes an instance, if a bounded number covers
    /// every instance the app can have at once; else mapped on demand.
    pub fn for_run(limits: &Limits) -> Allocation {
        let scan = PoolingAllocationConfig::is_pagemap_scan_available();
        let swap = swap_in_use();
        let allocation = Allocation::for_one_app(limits.isolation, limits.workers, scan, swap);
        match allocation {
            // Said once the engine has reserved them (`engine::new_engine`).
            Allocation::Slots(_) => {}
            Allocation::OnDemand if limits.isolation == Isolation::Request => tracing::info!(
                "instances are mapped afresh for each request ({})",
                if !scan {
                    "no PAGEMAP_SCAN: Linux before 6.7, or /proc/self/pagemap not readable"
                } else if swap {
                    "swap is on, or /proc/swaps cannot be read: a reused slot would keep \
                     the pages of the last instance that were swapped out"
                } else {
                    "more than 30 workers"
                }
            ),
            Allocation::OnDemand => {}
        }
        allocation
    }

    /// Without PAGEMAP_SCAN (`scan`) a slot's reset would unmap every page
    /// an instance touched, or copy back all it keeps: no cheaper than
    /// mapping afresh (0.97 ms against 1.01 ms per hello instance, and
    /// 1.7 ms keeping 64 MiB, measured), so slots are not worth their
    /// fixed counts. With `swap` a reset is not safe: wasmtime 46 resets
    /// the written pages the scan finds present, and a written page
    /// swapped out is not present, so it is neither copied back nor
    /// unmapped, and the next instance in the slot would read what the
    /// last one wrote there (wasmtime pull request 14357, open).
    fn for_one_app(isolation: Isolation, workers: usize, scan: bool, swap: bool) -> Allocation {
        if isolation != Isolation::Request || !scan || swap {
            return Allocation::OnDemand;
        }
        u32::try_from(workers)
            .ok()
            .and_then(|w| w.checked_mul(SLOTS_PER_WORKER))
            .and_then(|n| n.checked_add(SLOTS_BESIDE_WORKERS))
            .filter(|&n| n <= MAX_SLOTS)
            .map_or(Allocation::OnDemand, Allocation::Slots)
    }

    /// About how much address space the slots reserve, in GiB.
    pub fn reserved_gib(self) -> u64 {
        match self {
            Allocation::OnDemand => 0,
            Allocation::Slots(n) => u64::from(n) * SLOT_GIB,
        }
    }

    /// Set `config` to allocate this way.
    pub fn apply(self, config: &mut Config) {
        if let Allocation::Slots(n) = self {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(slots(n)));
        }
    }
}

/// Whether this machine may swap: a swap area listed in `/proc/swaps`, or
/// that file unreadable. Read when the engine is made: a `swapon` after
/// it is not seen (docs/security.md, "Request isolation").
fn swap_in_use() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |list| swaps_listed(&list))
}

/// Whether `/proc/swaps` text lists an area below its header line.
fn swaps_listed(list: &str) -> bool {
    list.lines().skip(1).any(|line| !line.trim().is_empty())
}

/// The pooling allocator's configuration for `n` instances at once.
fn slots(n: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    // What a component is checked against when it loads: far above what
    // componentize-py makes (14 core instances, one memory, a function
    // table of 5,000-20,000 slots, 0.5 MB of instance state), so no app is
    // refused for its shape. These are limits, not reservations.
    pool.max_core_instance_size(64 << 20)
        .max_component_instance_size(256 << 20)
        .max_tables_per_module(16)
        .max_memories_per_module(4)
        .table_elements(1 << 20);
    // What is reserved: address space only until used.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(64))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(16))
        .total_stacks(n)
        .table_keep_resident(1 << 20)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(Enabled::Yes);
    pool
}

/// What to tell an operator whose engine could not reserve `allocation`'s
/// slots: the process's address-space cap, if it has one.
pub fn reservation_failed(allocation: Allocation, e: &wasmtime::Error) -> String {
    let cap = rustix::process::getrlimit(rustix::process::Resource::As)
        .current
        .map(|bytes| {
            format!(
                ", over this process's address-space limit of {:.1} GiB (`ulimit -v`, systemd's LimitAS=)",
                bytes as f64 / f64::from(1u32 << 30)
            )
        })
        .unwrap_or_default();
    format!(
        "reserving instance slots (about {} GiB of address space, no memory) failed{cap}: {e:#}; each instance is mapped afresh instead, about a third slower",
        allocation.reserved_gib()
    )
}

/// Whether `e` (from instantiating) says every slot of a kind is taken:
/// by the text of wasmtime's `PoolConcurrencyLimitError` (as the log shows
/// it), whatever error types wrap it on the way here.
pub fn all_taken(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("maximum concurrent limit of")
}

/// Whether `e` (from loading a compiled artifact) says it does not fit the
/// slots' limits, rather than that the artifact is damaged.
pub fn does_not_fit(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|cause| cause.to_string().contains("pooling allocator"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_request_isolation_with_bounded_workers_gets_slots() {
        assert_eq!(
            Allocation::for_one_app(Isolation::Pooled, 1, true, false),
            Allocation::OnDemand
        );
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, 1, true, false),
            Allocation::Slots(12)
        );
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, 30, true, false),
            Allocation::Slots(128)
        );
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, 31, true, false),
            Allocation::OnDemand
        );
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, usize::MAX, true, false),
            Allocation::OnDemand
        );
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, 1, false, false),
            Allocation::OnDemand
        );
    }

    #[test]
    fn no_slots_where_a_written_page_could_be_swapped_out() {
        assert_eq!(
            Allocation::for_one_app(Isolation::Request, 1, true, true),
            Allocation::OnDemand
        );
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swaps_listed(header));
        assert!(!swaps_listed(""));
        assert!(swaps_listed(&format!(
            "{header}/swapfile                               file\t\t1048572\t\t0\t\t-2\n"
        )));
        assert!(swaps_listed(&format!(
            "{header}/dev/zram0                              partition\t4194300\t\t0\t\t100\n"
        )));
    }

    #[test]
    fn only_a_taken_slot_is_worth_waiting_for() {
        let taken =
            anyhow::anyhow!("maximum concurrent limit of 24 for component instances reached")
                .context("instantiating");
        assert!(all_taken(&taken));
        assert!(!all_taken(&anyhow::anyhow!("out of bounds memory access")));
    }

    #[test]
    fn an_engine_with_slots_can_be_made() {
        if !PoolingAllocationConfig::is_pagemap_scan_available() {
            return; // `Enabled::Yes` refuses an engine without it
        }
        let mut config = Config::new();
        Allocation::Slots(12).apply(&mut config);
        wasmtime::Engine::new(&config).unwrap();
    }
}
