//! Keeps the pages of an app's heap snapshot that its requests never read
//! out of memory.
//!
//! wasmtime maps each instance's linear memory copy-on-write from the
//! artifact of the core module that defines it: the app's pre-initialised
//! heap, 13-14 MB for a hello app, its own file per app. Left alone, the
//! kernel reads ahead around every page fault on that mapping (`read_ahead_kb`
//! of the disk: 128 KiB to 8 MiB) and, on later faults, maps every cached
//! page in the 64 KiB around the faulting one. A request reads about half a
//! megabyte of the snapshot, scattered over all of it, so an instance ended
//! up mapping about 7.6 MiB of it, counted whole against each loaded app.
//!
//! So, for an artifact whose module defines a memory:
//! - when it has been compiled and written, its pages leave the page
//!   cache ([`forget_written`]);
//! - when it is loaded, wasmtime's own mapping of it is set to random
//!   access, the pages earlier instances read (what is cached) are
//!   recorded, and the rest (read ahead while wasmtime read its header,
//!   or by another program) leave the cache ([`on_load`]);
//! - when a long-lived instance has been created, before it runs, its
//!   copy-on-write mapping of the snapshot is set to random access too
//!   ([`advise_instance_mappings`]). wasmtime does not say where it mapped
//!   it, so it is looked up among the process's mappings: with
//!   `PROCMAP_QUERY` on Linux 6.11 and later, in `/proc/self/maps` before.
//!
//! Linux only: elsewhere both are no-ops.
//!
//! The kernel then reads only the pages an instance touches, and maps
//! around a fault only pages that some instance of that app has touched:
//! an app whose requests, taken together, read a third of its snapshot
//! has each new instance map more of it than one route alone would. Those
//! are shared page-cache pages, counted once in memory however many
//! instances map them.

#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use wasmtime::{ExternType, Module};

#[cfg(target_os = "linux")]
use crate::runtime::file_map::FileMap;

/// A loaded snapshot artifact, as the kernel names the mappings of it.
#[derive(Debug, Clone)]
pub struct SnapshotFile {
    dev: (u32, u32),
    ino: u64,
    /// The artifact's file name (its content hash): what still matches on
    /// file systems such as overlayfs, whose mappings show another inode.
    name: OsString,
}

impl SnapshotFile {
    /// The snapshot file with metadata `meta`, named `name`.
    #[cfg(test)]
    pub(crate) fn for_test(meta: &std::fs::Metadata, name: &str) -> Self {
        SnapshotFile {
            dev: (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev())),
            ino: meta.ino(),
            name: name.into(),
        }
    }

    fn matches(&self, m: &Mapping) -> bool {
        (m.dev == self.dev && m.ino == self.ino)
            || Path::new(OsStr::from_bytes(&m.path)).file_name() == Some(self.name.as_os_str())
    }
}

/// Advise the kernel about a module just loaded from `file` (at `path`),
/// whose pages in the page cache before wasmtime read it were `before`
/// ([`residency`]); the snapshot file to look for in its instances'
/// mappings if the module defines a memory, which wasmtime maps from the
/// artifact.
pub fn on_load(
    file: &File,
    path: &Path,
    module: &Module,
    before: Option<Vec<bool>>,
) -> Option<SnapshotFile> {
    if cfg!(not(target_os = "linux")) {
        return None;
    }
    let defines_memory = module
        .exports()
        .any(|e| matches!(e.ty(), ExternType::Memory(_)))
        && !module
            .imports()
            .any(|i| matches!(i.ty(), ExternType::Memory(_)));
    if !defines_memory {
        return None;
    }
    let image = module.image_range();
    let (start, end) = (image.start as usize, image.end as usize);
    advise_random(start, end);
    // Where the kernel cannot tell what was cached, the cache is left as
    // it is.
    #[cfg(target_os = "linux")]
    if let Some(before) = before {
        settle_page_cache(file, path, before);
    }
    let meta = file.metadata().ok()?;
    Some(SnapshotFile {
        dev: (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev())),
        ino: meta.ino(),
        name: path.file_name()?.to_owned(),
    })
}

/// Drop from the page cache the artifact just written at `path`, whole:
/// what is cached of it at its next load is then what loads and requests
/// read ([`on_load`]), never the compile's copy. Its pages are clean
/// (`cachefs::write_atomic` syncs), so the kernel can drop them.
pub fn forget_written(path: &Path) {
    #[cfg(target_os = "linux")]
    match File::open(path) {
        Ok(file) => {
            if let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed) {
                tracing::debug!("fadvise(DONTNEED) on {}: {e}", path.display());
            }
        }
        Err(e) => tracing::debug!("opening {}: {e}", path.display()),
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

/// Set every private writable mapping of one of `files` to random access:
/// the snapshot mappings of instances created since the last call (the
/// others already are). Call it after instantiating, before the instance
/// runs.
pub fn advise_instance_mappings(files: &[SnapshotFile]) {
    #[cfg(target_os = "linux")]
    advise_on_linux(files);
    #[cfg(not(target_os = "linux"))]
    let _ = files;
}

#[cfg(target_os = "linux")]
fn advise_on_linux(files: &[SnapshotFile]) {
    for (m, _) in instance_mappings(files) {
        advise_random(m.start, m.end);
    }
}

/// The address ranges of this process's private writable mappings of
/// one of `files`, each with the file offset it starts at: the snapshot
/// mappings of its live instances and, with instance slots, of the slots
/// that last held one.
#[cfg(target_os = "linux")]
pub fn instance_mappings(files: &[SnapshotFile]) -> Vec<(Range<usize>, u64)> {
    if files.is_empty() {
        return Vec::new();
    }
    let mappings = match procmap_query::writable_file_mappings() {
        Ok(m) => m,
        // Before Linux 6.11 (ENOTTY) or where /proc forbids the ioctl.
        Err(_) => match std::fs::read("/proc/self/maps") {
            Ok(text) => parse_maps(&text),
            Err(e) => {
                tracing::debug!("cannot read /proc/self/maps: {e}");
                return Vec::new();
            }
        },
    };
    mappings
        .into_iter()
        .filter(|m| files.iter().any(|f| f.matches(m)))
        .map(|m| (m.start..m.end, m.offset))
        .collect()
}

/// Which pages of `file` are in the page cache, one flag per page (none
/// where the kernel cannot tell). Call it before wasmtime maps and reads
/// the file, for [`on_load`].
#[cfg(target_os = "linux")]
pub fn residency(file: &File) -> Option<Vec<bool>> {
    // SAFETY: a compiled artifact of the cache (see `FileMap::new`); its
    // pages are never read (mincore does not fault them in).
    let map = unsafe { FileMap::new(file) }.ok()??;
    let start = map.bytes().as_ptr() as usize;
    mincore(start, start + map.bytes().len())
}

/// Elsewhere the page cache is left alone.
#[cfg(not(target_os = "linux"))]
pub fn residency(_file: &File) -> Option<Vec<bool>> {
    None
}

/// Leave in the page cache the snapshot pages instances will read, and
/// only those: wasmtime's reading of the header may have read ahead far
/// around it, and what was cached `before` it says what is known.
/// - Most of the file was cached (more than three quarters): another
///   program read it whole (a copy, a backup); nothing says which pages
///   instances read. A just-compiled artifact is not such a file: its
///   pages were dropped once written ([`forget_written`]), so how much
///   of the cache requests fill is never mistaken for a compile (a
///   router app's first requests read 23-36% of its snapshot).
/// - None was (after a reboot, or once evicted): nothing is known either.
/// - Otherwise what is cached is what instances read since it was last
///   dropped (a few percent of it), which the next ones will read too:
///   it is recorded next to the artifact (`.hot`), for the first two
///   cases, where the recorded pages are read back in ahead of the first
///   request instead of one by one as it faults them.
///
/// Only pages no mapping holds are dropped: wasmtime's header and
/// metadata stay.
#[cfg(target_os = "linux")]
fn settle_page_cache(file: &File, path: &Path, before: Vec<bool>) {
    use rustix::fs::Advice;
    let wanted = if tells_what_was_read(&before) {
        record_hot(path, before)
    } else {
        recorded_hot(path, before.len()).unwrap_or_else(|| vec![false; before.len()])
    };
    let Some(now) = residency(file) else { return };
    let page = rustix::param::page_size();
    let bytes = |r: Range<usize>| r.start * page..r.end * page;
    for r in runs(&now, &wanted, |now, wanted| now && !wanted) {
        fadvise(file, path, bytes(r), Advice::DontNeed);
    }
    for r in runs(&now, &wanted, |now, wanted| wanted && !now) {
        fadvise(file, path, bytes(r), Advice::WillNeed);
    }
}

/// For a module expanded from a delta (`module_deltas`) into `file`, its
/// pages all cached (just written, and synced so they can be dropped):
/// drop them, then read back in, ahead, the pages instances of its
/// earlier expansions read, recorded next to the delta at `path`
/// ([`record_read`]). So a fault maps around it only pages instances read,
/// and the first request does not read them from disk one by one. Not
/// kept and the rest dropped: the kernel writes a file in folios of many
/// pages, and drops none of a folio only partly advised.
pub fn settle_expanded(file: &File, path: &Path) {
    #[cfg(target_os = "linux")]
    {
        let Some(now) = residency(file) else { return };
        let wanted = recorded_hot(path, now.len());
        let page = rustix::param::page_size();
        fadvise(
            file,
            path,
            0..now.len() * page,
            rustix::fs::Advice::DontNeed,
        );
        let none = vec![false; now.len()];
        for r in runs(&wanted.unwrap_or_default(), &none, |wanted, _| wanted) {
            let bytes = r.start * page..r.end * page;
            fadvise(file, path, bytes, rustix::fs::Advice::WillNeed);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, path);
}

/// Record which pages of an expanded module's `file` are cached, when it
/// is unloaded: what its instances read (with what was kept for them), for
/// its next expansion ([`settle_expanded`]). The file is gone after.
pub fn record_read(file: &File, path: &Path) {
    #[cfg(target_os = "linux")]
    {
        // Dropped before any request, or evicted, says nothing.
        if let Some(now) = residency(file).filter(|now| tells_what_was_read(now)) {
            record_hot(path, now);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, path);
}

/// Whether the pages of a snapshot artifact the page cache holds say which
/// ones instances read: not when none are (after a reboot, an eviction, a
/// drop before any request), nor when most are (another program read it
/// whole, or the kernel kept what was written).
fn tells_what_was_read(cached: &[bool]) -> bool {
    let n = cached.iter().filter(|&&c| c).count();
    n > 0 && n * 4 <= cached.len() * 3
}

/// The pages recorded as read in the `.hot` file beside the artifact at
/// `path`, if it is one for a file of `pages` pages.
fn recorded_hot(path: &Path, pages: usize) -> Option<Vec<bool>> {
    // Bounded, and only a regular file: a FIFO there hung every cold
    // load queued behind this one (probe round CZ).
    crate::config::read_small_file(&path.with_extension("hot"))
        .ok()
        .and_then(|b| read_hot(&b, pages))
}

/// Add `read` to the pages recorded beside the artifact at `path` (a route
/// not asked this time is still read ahead next time), writing the record
/// if that changed it; the pages recorded now.
fn record_hot(path: &Path, mut read: Vec<bool>) -> Vec<bool> {
    let recorded = recorded_hot(path, read.len());
    if let Some(r) = &recorded {
        read.iter_mut().zip(r).for_each(|(m, &r)| *m |= r);
    }
    if recorded.as_ref() != Some(&read) {
        let hot_path = path.with_extension("hot");
        if let Err(e) = crate::cachefs::write_hint(&hot_path, &write_hot(&read)) {
            tracing::debug!("recording {}: {e:#}", hot_path.display());
        }
    }
    read
}

/// The maximal runs of page indices where `pick(a[i], b[i])`.
pub(crate) fn runs(a: &[bool], b: &[bool], pick: impl Fn(bool, bool) -> bool) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
        if !pick(a, b) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.end == i => last.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// The first line of a `.hot` file; a bitmap of its pages follows.
const HOT_HEADER: &str = "rsgi-wasm hot pages 1";

fn write_hot(pages: &[bool]) -> Vec<u8> {
    let mut out = format!("{HOT_HEADER} {}\n", pages.len()).into_bytes();
    out.extend(pages.chunks(8).map(|c| {
        c.iter()
            .enumerate()
            .fold(0u8, |b, (i, &p)| b | (u8::from(p) << i))
    }));
    out
}

/// A `.hot` file's pages, if it is one for a file of `pages` pages.
fn read_hot(bytes: &[u8], pages: usize) -> Option<Vec<bool>> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let count: usize = header.strip_prefix(HOT_HEADER)?.trim_start().parse().ok()?;
    let bitmap = &bytes[newline + 1..];
    if count != pages || bitmap.len() != pages.div_ceil(8) {
        return None;
    }
    Some(
        (0..pages)
            .map(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
            .collect(),
    )
}

/// `posix_fadvise` over a byte range of `file`.
#[cfg(target_os = "linux")]
fn fadvise(file: &File, path: &Path, range: Range<usize>, advice: rustix::fs::Advice) {
    let Some(len) = std::num::NonZeroU64::new(range.len() as u64) else {
        return;
    };
    if let Err(e) = rustix::fs::fadvise(file, range.start as u64, Some(len), advice) {
        tracing::debug!("fadvise({advice:?}) on {}: {e}", path.display());
    }
}

/// Page-cache residency of the mapped range `start..end`, a flag a page.
#[cfg(target_os = "linux")]
fn mincore(start: usize, end: usize) -> Option<Vec<bool>> {
    let page = rustix::param::page_size();
    let start = start & !(page - 1);
    let mut vec = vec![0u8; end.saturating_sub(start).div_ceil(page)];
    // SAFETY: `start..end` is a live mapping and `vec` has a byte per page.
    let rc = unsafe { libc::mincore(start as *mut _, end - start, vec.as_mut_ptr()) };
    (rc == 0).then(|| vec.iter().map(|b| b & 1 != 0).collect())
}

/// `madvise(MADV_RANDOM)` over the pages of `start..end`.
fn advise_random(start: usize, end: usize) {
    let page = rustix::param::page_size();
    let start = start & !(page - 1);
    if end <= start {
        return;
    }
    // SAFETY: advice about how to page, not a change of contents or
    // protection; the range lies in mappings the caller keeps alive.
    if let Err(e) =
        unsafe { rustix::mm::madvise(start as *mut _, end - start, rustix::mm::Advice::Random) }
    {
        tracing::debug!("madvise(RANDOM) at {start:#x}: {e}");
    }
}

/// A private writable file mapping of this process.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    /// Where in the file it starts.
    offset: u64,
    dev: (u32, u32),
    ino: u64,
    path: Vec<u8>,
}

/// The private writable file mappings listed in `/proc/self/maps` text.
fn parse_maps(text: &[u8]) -> Vec<Mapping> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            // start-end perms offset major:minor inode [path]
            let mut fields = line.splitn(6, |&b| b == b' ');
            let range = std::str::from_utf8(fields.next()?).ok()?;
            let perms = fields.next()?;
            let offset = std::str::from_utf8(fields.next()?).ok()?;
            let dev = std::str::from_utf8(fields.next()?).ok()?;
            let ino: u64 = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
            let path = fields.next().unwrap_or_default().trim_ascii_start();
            if !perms.starts_with(b"rw") || perms.get(3) != Some(&b'p') || ino == 0 {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let (major, minor) = dev.split_once(':')?;
            Some(Mapping {
                start: usize::from_str_radix(start, 16).ok()?,
                end: usize::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                dev: (
                    u32::from_str_radix(major, 16).ok()?,
                    u32::from_str_radix(minor, 16).ok()?,
                ),
                ino,
                path: path.to_vec(),
            })
        })
        .collect()
}

/// The same list through the `PROCMAP_QUERY` ioctl (Linux 6.11), which
/// returns only the matching mappings instead of formatting all of them.
#[cfg(target_os = "linux")]
mod procmap_query {
    use super::{io, File, Mapping};
    use linux_raw_sys::general::{
        procmap_query, procmap_query_flags::PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        procmap_query_flags::PROCMAP_QUERY_FILE_BACKED_VMA,
        procmap_query_flags::PROCMAP_QUERY_VMA_SHARED,
        procmap_query_flags::PROCMAP_QUERY_VMA_WRITABLE,
    };
    use rustix::io::Errno;
    use rustix::ioctl::{opcode, Updater};

    const QUERY: rustix::ioctl::Opcode = opcode::read_write::<procmap_query>(b'f', 17);

    pub(super) fn writable_file_mappings() -> io::Result<Vec<Mapping>> {
        let maps = File::open("/proc/self/maps")?;
        let mut found = Vec::new();
        let mut name = vec![0u8; 4096];
        let mut addr = 0u64;
        loop {
            // SAFETY: a plain C struct; all zeroes is a valid value.
            let mut q: procmap_query = unsafe { std::mem::zeroed() };
            q.size = size_of::<procmap_query>() as u64;
            q.query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA as u64
                | PROCMAP_QUERY_FILE_BACKED_VMA as u64
                | PROCMAP_QUERY_VMA_WRITABLE as u64;
            q.query_addr = addr;
            q.vma_name_addr = name.as_mut_ptr() as u64;
            q.vma_name_size = name.len() as u32;
            // SAFETY: PROCMAP_QUERY reads and writes exactly this struct,
            // and writes at most `vma_name_size` bytes to `name`.
            match unsafe { rustix::ioctl::ioctl(&maps, Updater::<QUERY, _>::new(&mut q)) } {
                Ok(()) => {}
                Err(Errno::NOENT) => return Ok(found),
                Err(e) => return Err(e.into()),
            }
            if q.vma_end <= addr {
                return Ok(found);
            }
            addr = q.vma_end;
            if q.vma_flags & PROCMAP_QUERY_VMA_SHARED as u64 != 0 {
                continue;
            }
            // The size includes the terminating NUL.
            let len = (q.vma_name_size as usize).saturating_sub(1).min(name.len());
            found.push(Mapping {
                start: q.vma_start as usize,
                end: q.vma_end as usize,
                offset: q.vma_offset,
                dev: (q.dev_major, q.dev_minor),
                ino: q.inode,
                path: name[..len].to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_hot_files() {
        let a = [true, true, false, true, false, false, true];
        let b = [false; 7];
        assert_eq!(runs(&a, &b, |a, b| a && !b), [0..2, 3..4, 6..7]);
        assert_eq!(runs(&a, &b, |a, _| !a), [2..3, 4..6]);
        let pages: Vec<bool> = (0..21).map(|i| i % 3 == 0 || i == 20).collect();
        let file = write_hot(&pages);
        assert_eq!(read_hot(&file, 21), Some(pages.clone()));
        assert_eq!(read_hot(&file, 22), None, "another file's record");
        assert_eq!(read_hot(&file[..file.len() - 1], 21), None, "truncated");
        assert_eq!(read_hot(b"garbage", 21), None);
    }

    #[test]
    fn a_hot_record_that_is_no_file_or_huge_is_ignored_unread() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("a.cwasm");
        // A FIFO would block the read (and every cold load behind it).
        let fifo = std::process::Command::new("mkfifo")
            .arg(artifact.with_extension("hot"))
            .status()
            .unwrap();
        assert!(fifo.success());
        assert_eq!(recorded_hot(&artifact, 21), None);
        // A sparse 4 GiB file would be read whole into memory.
        std::fs::remove_file(artifact.with_extension("hot")).unwrap();
        let huge = std::fs::File::create(artifact.with_extension("hot")).unwrap();
        huge.set_len(4 << 30).unwrap();
        assert_eq!(recorded_hot(&artifact, 21), None);
    }

    #[test]
    fn maps_lines_yield_only_private_writable_file_mappings() {
        let text = b"\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 42 /usr/bin/x
7f05082f0000-7f0509190000 rw-p 0003e000 fe:00 5555699                    /cache/modules/abc-1.cwasm
7f0509190000-7f0509200000 rw-p 00000000 00:00 0 
7f0509200000-7f0509300000 rw-s 00000000 00:01 77 /dev/shm/x
7f0509300000-7f0509400000 rw-p 00000000 103:0a 9 /with space/y (deleted)
";
        let found = parse_maps(text);
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x7f05082f0000,
                    end: 0x7f0509190000,
                    offset: 0x3e000,
                    dev: (0xfe, 0),
                    ino: 5555699,
                    path: b"/cache/modules/abc-1.cwasm".to_vec(),
                },
                Mapping {
                    start: 0x7f0509300000,
                    end: 0x7f0509400000,
                    offset: 0,
                    dev: (0x103, 0x0a),
                    ino: 9,
                    path: b"/with space/y (deleted)".to_vec(),
                },
            ]
        );
    }

    /// A private writable mapping of a file in this process, as wasmtime
    /// makes of a snapshot, is found (by the ioctl where the kernel has it,
    /// and in /proc/self/maps) and set to random access.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_private_file_mapping_is_found_and_set_to_random_access() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let path = dir.join("snap-1.cwasm");
        std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: a fresh private mapping that nothing else uses.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                64 * 1024,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
        }
        .unwrap() as usize;
        let meta = file.metadata().unwrap();
        let snap = SnapshotFile {
            dev: (rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev())),
            ino: meta.ino(),
            name: "snap-1.cwasm".into(),
        };
        let in_maps = parse_maps(&std::fs::read("/proc/self/maps").unwrap());
        assert!(in_maps.iter().any(|m| m.start == ptr && snap.matches(m)));
        if let Ok(queried) = procmap_query::writable_file_mappings() {
            let m = queried.iter().find(|m| m.start == ptr).expect("listed");
            assert!(snap.matches(m), "{m:?}");
            assert!(m.path.ends_with(b"snap-1.cwasm"), "{m:?}");
            assert_eq!(m.offset, 0, "{m:?}");
        }
        let flags = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let head = format!("{ptr:x}-");
            let block = smaps.split_once(&head).unwrap().1;
            let line = block.lines().find(|l| l.starts_with("VmFlags:")).unwrap();
            line.split_whitespace().any(|f| f == "rr")
        };
        assert!(!flags());
        advise_instance_mappings(std::slice::from_ref(&snap));
        assert!(flags(), "the mapping is not set to random access");
        // SAFETY: mapped above, not used after.
        unsafe { rustix::mm::munmap(ptr as *mut _, 64 * 1024).unwrap() };
    }
}
