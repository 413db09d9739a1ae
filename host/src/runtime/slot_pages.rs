//! Keeps the snapshot pages that instances in reused slots write in few
//! enough runs that wasmtime's reset copies them all back.
//!
//! Between two instances in a slot ([`instance_slots`]), wasmtime 46 asks
//! the kernel (`PAGEMAP_SCAN`) for the runs of pages the last instance
//! wrote and copies the snapshot back over them, but it takes at most 32
//! runs: everything after the 32nd is unmapped, written or only read, and
//! the next instance faults it all in again. A hello request writes about
//! 75 pages in 56 runs scattered over its 13 MB snapshot (CPython's
//! interpreter state, and the counts and links of objects all over the
//! heap), so each fresh instance took about 140 page faults.
//!
//! So, now and then after an instance in a slot has served its request
//! and before it is reset, the pages written in each of the app's slots
//! are read from `/proc/self/pagemap` and added to those seen before, and
//! the smallest gaps between their runs are joined until at most
//! [`MAX_RUNS`] remain. Every page of those runs is then made private in
//! every slot with `MADV_POPULATE_WRITE`: a copy of the page the slot
//! maps, contents unchanged, which is why it is safe in a slot whose
//! instance is running. A page once private stays so (the reset copies it
//! back), so later resets copy those runs and unmap nothing.
//!
//! [`instance_slots`]: crate::runtime::instance_slots

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::runtime::instance_slots::KEEP_RESIDENT;
use crate::runtime::snapshot_pages::SnapshotFile;

/// Runs of snapshot pages kept, of the 32 wasmtime's reset copies back:
/// two are left for pages written outside the snapshot (the heap grown
/// past it). Fewer runs cost more pages copied at each reset: a hello
/// app's runs cover 230 pages at 30, 260 at 28 and 410 at 24.
const MAX_RUNS: usize = 30;

/// Bytes the joined runs may cover, at most: half of what wasmtime keeps
/// resident, so its scan never stops for size first. Each slot holds them
/// private while idle.
const MAX_BYTES: usize = KEEP_RESIDENT / 2;

/// One app's written snapshot pages, as seen in its slots.
pub struct SlotPages {
    files: Arc<[SnapshotFile]>,
    seen: Mutex<Vec<bool>>,
    finished: AtomicU64,
}

impl SlotPages {
    /// For instances that map their memory from `files`.
    pub fn new(files: Arc<[SnapshotFile]>) -> Self {
        SlotPages {
            files,
            seen: Mutex::default(),
            finished: AtomicU64::new(0),
        }
    }

    /// Call after an instance has served its request, before it is
    /// dropped (so its writes are still mapped). Looks at the slots after
    /// the first few instances and then ever more rarely, so a route
    /// first asked later is still taken in.
    pub fn after_instance(&self) {
        let n = self.finished.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 4 || n.is_power_of_two() || n.is_multiple_of(4096) {
            self.look();
        }
    }

    #[cfg(target_os = "linux")]
    fn look(&self) {
        // Another thread looking sees the same slots.
        let Ok(mut seen) = self.seen.try_lock() else {
            return;
        };
        let page = rustix::param::page_size();
        let pagemap = match std::fs::File::open("/proc/self/pagemap") {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("opening /proc/self/pagemap: {e}");
                return;
            }
        };
        // Each slot's snapshot mapping, the page of the file it starts
        // at (pages are counted in the file, so a mapping the kernel
        // split in two still lines up), and its private pages.
        let slots: Vec<(Range<usize>, usize, Vec<bool>)> =
            crate::runtime::snapshot_pages::instance_mappings(&self.files)
                .into_iter()
                .filter_map(|(m, offset)| {
                    let first = usize::try_from(offset).ok()? / page;
                    Some((m.clone(), first, private_pages(&pagemap, m)?))
                })
                .collect();
        for (_, first, private) in &slots {
            let end = first + private.len();
            if seen.len() < end {
                seen.resize(end, false);
            }
            seen[*first..end]
                .iter_mut()
                .zip(private)
                .for_each(|(s, &p)| *s |= p);
        }
        let Some(keep) = joined_runs(&seen, MAX_RUNS, MAX_BYTES / page) else {
            tracing::debug!(
                "the snapshot pages written in {} instance slots need more than {MAX_RUNS} runs within {} MiB: left to wasmtime's reset",
                slots.len(),
                MAX_BYTES >> 20
            );
            return;
        };
        for (mapping, first, private) in &slots {
            for run in &keep {
                let (lo, hi) = (run.start.max(*first), run.end.min(first + private.len()));
                if lo < hi {
                    populate(mapping, private, lo - first..hi - first);
                }
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn look(&self) {}
}

/// Which pages of the mapping `m` are private copies (written), from
/// `/proc/self/pagemap` (open as `pagemap`): present and neither file nor
/// shared pages.
#[cfg(target_os = "linux")]
fn private_pages(pagemap: &std::fs::File, m: Range<usize>) -> Option<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const FILE_OR_SHARED: u64 = 1 << 61;
    let page = rustix::param::page_size();
    let pages = (m.end - m.start) / page;
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, (m.start / page * 8) as u64)
        .inspect_err(|e| tracing::debug!("reading /proc/self/pagemap: {e}"))
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let e = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
                e & PRESENT != 0 && e & FILE_OR_SHARED == 0
            })
            .collect(),
    )
}

/// Make the pages of `run` (counted from the start of `mapping`) that are
/// not `private` yet so.
#[cfg(target_os = "linux")]
fn populate(mapping: &Range<usize>, private: &[bool], run: Range<usize>) {
    let page = rustix::param::page_size();
    let missing = crate::runtime::snapshot_pages::runs(
        &private[run.clone()],
        &private[run.clone()],
        |p, _| !p,
    );
    for r in missing {
        let start = mapping.start + (run.start + r.start) * page;
        // SAFETY: populating writes nothing the slot's memory does not
        // already hold (see the module's comment); a mapping gone since
        // it was listed fails with ENOMEM, which is ignored.
        let done = unsafe {
            rustix::mm::madvise(
                start as *mut _,
                r.len() * page,
                rustix::mm::Advice::LinuxPopulateWrite,
            )
        };
        if let Err(e) = done {
            tracing::debug!("madvise(POPULATE_WRITE) at {start:#x}: {e}");
        }
    }
}

/// The runs of `pages` with the smallest gaps between them joined until
/// at most `max_runs` are left; `None` if that would cover more than
/// `max_pages`. Then no run is kept at all: wasmtime's reset would unmap
/// what lies past its 32nd run anyway, and the pages copied back in the
/// runs before it cost about what the faults past it do (measured on
/// Flask, whose request writes 233 pages in 190 runs).
fn joined_runs(pages: &[bool], max_runs: usize, max_pages: usize) -> Option<Vec<Range<usize>>> {
    let runs = crate::runtime::snapshot_pages::runs(pages, pages, |p, _| p);
    let mut covered: usize = runs.iter().map(|r| r.len()).sum();
    // Gap `i` lies between runs `i` and `i + 1`.
    let mut gaps: Vec<(usize, usize)> = runs
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].start - w[0].end, i))
        .collect();
    gaps.sort_unstable();
    let joins = runs.len().saturating_sub(max_runs);
    let mut join = vec![false; gaps.len()];
    for &(len, i) in &gaps[..joins] {
        join[i] = true;
        covered += len;
    }
    if covered > max_pages {
        return None;
    }
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, run) in runs.into_iter().enumerate() {
        match out.last_mut() {
            Some(last) if i > 0 && join[i - 1] => last.end = run.end,
            _ => out.push(run),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(runs: &[Range<usize>], len: usize) -> Vec<bool> {
        (0..len)
            .map(|i| runs.iter().any(|r| r.contains(&i)))
            .collect()
    }

    #[test]
    fn the_smallest_gaps_are_joined_first() {
        let p = pages(&[0..1, 3..4, 10..12, 13..14, 30..31], 40);
        let joined = |max_runs| joined_runs(&p, max_runs, 100).unwrap();
        assert_eq!(joined(5), [0..1, 3..4, 10..12, 13..14, 30..31]);
        assert_eq!(joined(4), [0..1, 3..4, 10..14, 30..31]);
        assert_eq!(joined(3), [0..4, 10..14, 30..31]);
        assert_eq!(joined(2), [0..14, 30..31]);
        assert_eq!(joined(1).len(), 1);
        assert_eq!(joined(1)[0], 0..31);
        assert_eq!(joined_runs(&[false; 8], 1, 100), Some(vec![]));
    }

    #[test]
    fn nothing_is_kept_if_the_joined_runs_would_cover_too_many_pages() {
        let p = pages(&[0..1, 3..4, 10..12, 13..14, 30..31], 40);
        // 10..14 and 0..4 cover 8 pages with 30..31.
        assert_eq!(joined_runs(&p, 3, 9), Some(vec![0..4, 10..14, 30..31]));
        assert_eq!(joined_runs(&p, 3, 8), None);
        assert_eq!(joined_runs(&p, 5, 5), None, "written pages alone");
    }

    /// Scattered written pages of a private file mapping, as a slot holds
    /// of its snapshot, end up in few runs of private pages whose contents
    /// are the file's, and the pages written keep what was written.
    #[cfg(target_os = "linux")]
    #[test]
    fn scattered_writes_become_few_private_runs_with_contents_unchanged() {
        let page = rustix::param::page_size();
        let len = 256 * page;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("snap-2.cwasm");
        // Mapped from 4 pages into the file, as wasmtime maps a snapshot
        // from within its artifact.
        let skip = 4 * page;
        let whole: Vec<u8> = (0..skip + len).map(|i| (i / page) as u8).collect();
        std::fs::write(&path, &whole).unwrap();
        let bytes = &whole[skip..];
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private mapping that nothing else uses.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                skip as u64,
            )
        }
        .unwrap() as *mut u8;
        let mapping = ptr as usize..ptr as usize + len;
        let written: Vec<usize> = (0..60).map(|i| 3 + i * 4).collect();
        for &p in &written {
            // SAFETY: inside the mapping.
            unsafe { *ptr.add(p * page + 1) = 0xee };
        }
        let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
        let before = private_pages(&pagemap, mapping.clone()).unwrap();
        assert_eq!(
            crate::runtime::snapshot_pages::runs(&before, &before, |p, _| p).len(),
            60
        );
        let meta = file.metadata().unwrap();
        let slots = SlotPages::new(Arc::from([SnapshotFile::for_test(&meta, "snap-2.cwasm")]));
        slots.after_instance();
        let after = private_pages(&pagemap, mapping.clone()).unwrap();
        let runs = crate::runtime::snapshot_pages::runs(&after, &after, |p, _| p);
        assert_eq!(runs.len(), MAX_RUNS, "{runs:?}");
        assert!(
            written.iter().all(|&p| after[p]),
            "a written page is private"
        );
        // SAFETY: inside the mapping, which no one else writes.
        let now = unsafe { std::slice::from_raw_parts(ptr, len) };
        for (i, (n, b)) in now.iter().zip(bytes).enumerate() {
            let expect = if written.contains(&(i / page)) && i % page == 1 {
                0xee
            } else {
                *b
            };
            assert_eq!(*n, expect, "byte {i}");
        }
        // SAFETY: mapped above, not used after.
        unsafe { rustix::mm::munmap(ptr as *mut _, len).unwrap() };
    }
}
