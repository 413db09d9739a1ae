//! Finding a file under a mount's directory through a cap-std handle, so
//! `..`, absolute paths and symlinks that lead outside are refused by the
//! resolver itself.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use cap_std::fs::Dir;

use super::path::Target;
use super::StaticMount;
use crate::runtime::WarnEvery;

/// Served for a path that ends in `/`.
const INDEX: &str = "index.html";

/// A mount as lookups see it: its directory's path, opened at each lookup.
#[derive(Debug)]
pub(super) struct Place {
    pub(super) mount: StaticMount,
    /// The operator's problems (the directory gone, a file the server may
    /// not read) are logged at most once a minute per mount.
    pub(super) warned: WarnEvery,
}

pub(super) enum Found {
    Missing,
    /// The server's user may not read the file or search a directory on
    /// its way (`EACCES`, `EPERM`).
    Forbidden,
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

pub(super) fn lookup(place: &Place, target: Target) -> Found {
    let mount = &place.mount;
    let dir = match Dir::open_ambient_dir(&mount.dir, cap_std::ambient_authority()) {
        Ok(dir) => dir,
        Err(e) => {
            let found = failed(place, Path::new(""), &e);
            if matches!(found, Found::Missing) && place.warned.due() {
                tracing::warn!(
                    "static mount {}={}: the directory cannot be opened ({e}); answered 404 (logged at most once a minute)",
                    mount.prefix,
                    mount.dir.display()
                );
            }
            return found;
        }
    };
    if target.slash {
        return open_file(place, &dir, target.rel.join(INDEX));
    }
    let is_dir =
        target.rel.as_os_str().is_empty() || dir.metadata(&target.rel).is_ok_and(|m| m.is_dir());
    if is_dir {
        return match dir.metadata(target.rel.join(INDEX)) {
            Ok(m) if m.is_file() => Found::Directory,
            _ => Found::Missing,
        };
    }
    open_file(place, &dir, target.rel)
}

fn open_file(place: &Place, dir: &Dir, rel: PathBuf) -> Found {
    // stat before open: opening a FIFO or device would block or have side
    // effects; only regular files are served.
    match dir.metadata(&rel) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Found::Missing,
        Err(e) => return failed(place, &rel, &e),
    }
    let file = match dir.open(&rel) {
        Ok(f) => f.into_std(),
        Err(e) => return failed(place, &rel, &e),
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

/// What a failed open or stat of `rel` answers. Missing files are routine:
/// 404 with at most a debug line. A symlink leading out of the directory
/// is a 404 too, with a warning, as is a permission the operator forgot
/// (403) and running out of descriptors (503).
fn failed(place: &Place, rel: &Path, e: &std::io::Error) -> Found {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        tracing::warn!(
            "static file {}: {e}; answered 503 (raise the open-files limit: ulimit -n, LimitNOFILE)",
            shown(place, rel)
        );
        return Found::NoDescriptors;
    }
    // cap-std reports a path that would leave the directory as
    // PermissionDenied too; only the kernel's own refusal is the
    // operator's file mode.
    if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
        warn_now_and_then(place, rel, e, 403, "make it readable by the server's user");
        return Found::Forbidden;
    }
    // cap-std's refusal of a way out carries no errno. A client cannot
    // spell one (`..` segments are refused before any lookup), so a
    // symlink in the tree is absolute or climbs above it (cap-std refuses
    // both, even for a target back inside): a deploy made of links
    // (`collectstatic --link`) would otherwise get only silent 404s.
    if e.kind() == ErrorKind::PermissionDenied && e.raw_os_error().is_none() {
        let why = "a symlink on its path is absolute or climbs out of the directory (even to come \
                   back in), and such links are never followed";
        let fix = "make the links relative and inside the directory, copy the files in, or mount \
                   the directory they point into";
        warn_now_and_then(place, rel, why, 404, fix);
        return Found::Missing;
    }
    if e.kind() != ErrorKind::NotFound {
        tracing::debug!("static file {}: {e}", shown(place, rel));
    }
    Found::Missing
}

/// Tell the operator, at most once a minute per mount, why `rel` was
/// answered `status` and how to `fix` it.
fn warn_now_and_then(
    place: &Place,
    rel: &Path,
    why: impl std::fmt::Display,
    status: u16,
    fix: &str,
) {
    if place.warned.due() {
        tracing::warn!(
            "static file {} under {}: {why}; answered {status} ({fix}; logged at most once a minute)",
            shown(place, rel),
            place.mount.dir.display()
        );
    }
}

/// The URL path of `rel` as a log line may hold it: decoded from the
/// client's target, so its control characters are spelt out (a `%0A`
/// began a forged line, round DO).
fn shown(place: &Place, rel: &Path) -> String {
    crate::runtime::visible(&format!("{}{}", place.mount.prefix, rel.display())).into_owned()
}

/// Whether an HTTP date can say `t`: from 1970 to the year 9999
/// (`httpdate` panics outside). A file dated otherwise is served without
/// `Last-Modified`.
fn http_date_holds(t: SystemTime) -> bool {
    const YEAR_10000: u64 = 253_402_300_800;
    t.duration_since(SystemTime::UNIX_EPOCH)
        .is_ok_and(|d| d.as_secs() < YEAR_10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_permission_is_403_and_a_missing_file_404() {
        let place = Place {
            mount: StaticMount {
                prefix: "/s/".into(),
                dir: "/nowhere".into(),
            },
            warned: WarnEvery::default(),
        };
        let of = |errno| {
            failed(
                &place,
                Path::new("a"),
                &std::io::Error::from_raw_os_error(errno),
            )
        };
        assert!(matches!(of(libc::EACCES), Found::Forbidden));
        assert!(matches!(of(libc::EPERM), Found::Forbidden));
        assert!(matches!(of(libc::ENOENT), Found::Missing));
        assert!(matches!(of(libc::ENOTDIR), Found::Missing));
        assert!(matches!(of(libc::EMFILE), Found::NoDescriptors));
        // cap-std's own refusal of a way out is not the operator's mode.
        let escape = std::io::Error::new(ErrorKind::PermissionDenied, "outside");
        assert!(matches!(
            failed(&place, Path::new("a"), &escape),
            Found::Missing
        ));
    }
}
