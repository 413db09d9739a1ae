//! Finding a file under a mount's directory through its cap-std handle, so
//! `..`, absolute paths and symlinks that lead outside are refused by the
//! resolver itself.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cap_std::fs::Dir;

use super::path::Target;

/// Served for a path that ends in `/`.
const INDEX: &str = "index.html";

pub(super) enum Found {
    Missing,
    /// The process is out of file descriptors (`EMFILE`, `ENFILE`).
    NoDescriptors,
    /// A directory with an `index.html`, asked for without the trailing
    /// slash: redirect so relative links in the page resolve.
    Directory,
    File {
        file: std::fs::File,
        size: u64,
        modified: Option<SystemTime>,
        /// For the content type.
        rel: PathBuf,
    },
}

pub(super) fn lookup(dir: &Dir, target: Target) -> Found {
    if target.slash {
        return open_file(dir, target.rel.join(INDEX));
    }
    let is_dir =
        target.rel.as_os_str().is_empty() || dir.metadata(&target.rel).is_ok_and(|m| m.is_dir());
    if is_dir {
        return match dir.metadata(target.rel.join(INDEX)) {
            Ok(m) if m.is_file() => Found::Directory,
            _ => Found::Missing,
        };
    }
    open_file(dir, target.rel)
}

fn open_file(dir: &Dir, rel: PathBuf) -> Found {
    // stat before open: opening a FIFO or device would block or have side
    // effects; only regular files are served.
    match dir.metadata(&rel) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Found::Missing,
        Err(e) => {
            log_lookup_error(&rel, &e);
            return Found::Missing;
        }
    }
    let file = match dir.open(&rel) {
        Ok(f) => f.into_std(),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            tracing::warn!(
                "static file {}: {e}; answered 503 (raise the open-files limit: ulimit -n, LimitNOFILE)",
                rel.display()
            );
            return Found::NoDescriptors;
        }
        Err(e) => {
            log_lookup_error(&rel, &e);
            return Found::Missing;
        }
    };
    // The opened file's own metadata, in case the name changed in between.
    match file.metadata() {
        Ok(meta) if meta.is_file() => Found::File {
            file,
            size: meta.len(),
            modified: meta.modified().ok().filter(|&t| http_date_holds(t)),
            rel,
        },
        _ => Found::Missing,
    }
}

/// Whether an HTTP date can say `t`: from 1970 to the year 9999
/// (`httpdate` panics outside). A file dated otherwise is served without
/// `Last-Modified`.
fn http_date_holds(t: SystemTime) -> bool {
    const YEAR_10000: u64 = 253_402_300_800;
    t.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() < YEAR_10000)
}

fn log_lookup_error(rel: &Path, e: &std::io::Error) {
    // Missing files are routine; escapes and permission problems are worth
    // a line when debugging a deployment, but are still just 404 to clients.
    if e.kind() != std::io::ErrorKind::NotFound {
        tracing::debug!("static file {}: {e}", rel.display());
    }
}
