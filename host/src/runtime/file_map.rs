//! A read-only mapping of a whole cache file, unmapped when dropped: to
//! read it in place (its checksum) or ask which of its pages the page
//! cache holds, without copying it.

use std::fs::File;

/// All of a file, mapped read-only and private.
pub struct FileMap {
    ptr: *mut std::ffi::c_void,
    len: usize,
}

impl FileMap {
    /// Map all of `file`; none if it is empty.
    ///
    /// # Safety
    /// The file must not shrink while mapped (reading past its end would
    /// raise SIGBUS). Cache files are only ever replaced by renaming, never
    /// truncated in place: wasmtime maps them on the same terms.
    pub unsafe fn new(file: &File) -> std::io::Result<Option<FileMap>> {
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Ok(None);
        }
        // SAFETY: a fresh mapping of our own, unmapped in `drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                file,
                0,
            )
        }?;
        // Read page by page, never around: a read-around here would pull
        // the app's heap snapshot into the page cache with it (8 MiB at a
        // time on a disk with the usual `read_ahead_kb`), which the
        // snapshot's next load would take for pages its instances read
        // (`snapshot_pages`). Readers ask for what they read instead
        // ([`FileMap::prefetch`]).
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping just made.
        let _ = unsafe { rustix::mm::madvise(ptr, len, rustix::mm::Advice::Random) };
        Ok(Some(FileMap { ptr, len }))
    }

    /// Ask the kernel to read `ranges` of `file` (the mapped one) in, in
    /// large requests, and nothing around them.
    pub fn prefetch(file: &File, ranges: &[std::ops::Range<usize>]) {
        #[cfg(target_os = "linux")]
        for r in ranges {
            let (Ok(start), Some(len)) = (
                u64::try_from(r.start),
                std::num::NonZeroU64::new((r.end - r.start) as u64),
            ) else {
                continue;
            };
            let _ = rustix::fs::fadvise(file, start, Some(len), rustix::fs::Advice::WillNeed);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (file, ranges);
    }

    /// The file's bytes (reading them faults their pages in).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes, mapped until `self` is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; `bytes` borrows `self`,
        // so nothing refers to it any more.
        let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
    }
}
