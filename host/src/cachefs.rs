//! Publishing into the shared cache: a directory is filled under a unique
//! temporary name beside its destination and renamed into place whole, so
//! concurrent builds and starts (two terminals, CI and a developer) never
//! see half a tree or remove each other's.

use std::path::Path;

use anyhow::{Context, Result};

/// Whether an error comes down to the process running short of file
/// descriptors or memory: a passing condition, not a damaged cache entry
/// to remove.
pub fn short_of_resources<'a>(
    mut chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> bool {
    chain.any(|e| {
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| [libc::EMFILE, libc::ENFILE, libc::ENOMEM].contains(&code))
    })
}

/// Whether an error comes down to a file or directory not found: in the
/// cache, one removed while it was being used (a cache cleaner).
pub fn not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    })
}

/// A fresh, uniquely named directory beside `dest` to fill before
/// [`publish`]; removed when dropped unless published.
pub fn staging(dest: &Path) -> Result<tempfile::TempDir> {
    let parent = dest.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dest
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    tempfile::Builder::new()
        .prefix(&format!(".{name}{PARTIAL}"))
        .tempdir_in(parent)
        .with_context(|| format!("creating a staging directory in {}", parent.display()))
}

/// Move the filled `staged` directory to `dest`, unless another process
/// already put a complete one there (then ours is discarded). A stale,
/// incomplete `dest` is replaced.
pub fn publish(staged: &Path, dest: &Path, complete: impl Fn(&Path) -> bool) -> Result<()> {
    for _ in 0..3 {
        if complete(dest) {
            let _ = std::fs::remove_dir_all(staged);
            return Ok(());
        }
        match std::fs::rename(staged, dest) {
            Ok(()) => return Ok(()),
            // A complete tree may have landed between the check and now:
            // the next round sees it; an incomplete one is cleared.
            Err(_) if complete(dest) => continue,
            Err(_) => {
                let _ = std::fs::remove_dir_all(dest);
            }
        }
    }
    std::fs::rename(staged, dest).with_context(|| format!("publishing {}", dest.display()))
}

/// Move directory `from` to `to` (a fresh name): renamed, or copied and
/// removed when `to` is on another file system (a cache on its own volume,
/// the scratch directory under `TMPDIR`).
pub fn move_tree(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            if let Err(e) = copy_tree(from, to) {
                // A full disk must not keep half a copy.
                let _ = std::fs::remove_dir_all(to);
                return Err(e).with_context(|| format!("copying {}", from.display()));
            }
            std::fs::remove_dir_all(from).with_context(|| format!("removing {}", from.display()))
        }
        moved => moved.with_context(|| format!("moving {}", from.display())),
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Write a file so readers see the old file or the whole new one.
pub fn write_atomic(dest: &Path, data: &[u8]) -> Result<()> {
    // On disk before it is renamed into place: a crash must not leave a
    // name whose content was never written (wasmtime maps compiled code
    // from these files). Clean pages also leave the page cache when asked
    // (`snapshot_pages`).
    write_renamed(dest, data, true, 0o644)
}

/// As [`write_atomic`], for compiled code: read-only, since a process
/// maps it and a write in place (a restore with `cp` over it, a
/// truncation) would change or remove code and memory under every
/// running instance. Replacing it whole (rename) or removing it is safe.
pub fn write_compiled(dest: &Path, data: &[u8]) -> Result<()> {
    write_renamed(dest, data, true, 0o444)
}

/// As [`write_atomic`] without waiting for the disk, for a hint whose
/// reader checks it and ignores a damaged one: it is written while an app
/// loads, where a sync can take tens of milliseconds.
pub fn write_hint(dest: &Path, data: &[u8]) -> Result<()> {
    write_renamed(dest, data, false, 0o644)
}

/// What names a staging directory ([`staging`]) after its destination.
const PARTIAL: &str = ".partial-";

/// Refuse, before the work, to write about `needed` bytes into `dir`
/// when its filesystem has less free: `doing` is what would write them.
pub fn ensure_room(dir: &Path, needed: u64, doing: &str) -> Result<()> {
    let Ok(fs) = rustix::fs::statvfs(dir) else {
        return Ok(());
    };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free < needed {
        anyhow::bail!(
            "the cache {} has {} MiB free, and {doing} writes about {} MiB there: free some \
             space, or point --cache-dir at a larger disk",
            dir.display(),
            free >> 20,
            needed.div_ceil(1 << 20)
        );
    }
    Ok(())
}

/// The cache directories [`staging`] directories are made in: unpacked
/// files, resolved dependencies, the exported standard library.
const STAGED_IN: &[&str] = &["files", "deps", "stdlib"];

/// The cache directories [`write_renamed`] writes temporary files in.
const WRITTEN_IN: &[&str] = &["", "shells", "modules", "digests"];

/// A temporary file older than this was left by a process killed while
/// writing it: writing one takes seconds at most.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Remove the temporary files processes killed while writing to `cache`
/// left there (an artifact is tens of megabytes: an OOM-killed pod's
/// cache would otherwise grow at every crash), and the staging
/// directories they left (`files/.NAME.partial-*`, up to `--max-unpacked`
/// each; a pip run's in `deps/`); returns how many.
pub fn remove_stale_temps(cache: &Path) -> usize {
    let mut removed = 0;
    let stale = |m: &std::fs::Metadata| {
        m.modified()
            .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_AFTER))
    };
    for entry in STAGED_IN
        .iter()
        .filter_map(|sub| std::fs::read_dir(cache.join(sub)).ok())
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        let partial =
            name.starts_with(b".") && name.windows(PARTIAL.len()).any(|w| w == PARTIAL.as_bytes());
        if partial
            && entry.metadata().is_ok_and(|m| m.is_dir() && stale(&m))
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    for sub in WRITTEN_IN {
        let Ok(entries) = std::fs::read_dir(cache.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let temp = entry.file_name().as_encoded_bytes().starts_with(b".tmp")
                && entry.metadata().is_ok_and(|m| m.is_file() && stale(&m));
            if temp && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(
            "removed {removed} temporary files from {}, left by processes killed while writing them",
            cache.display()
        );
    }
    removed
}

fn write_renamed(dest: &Path, data: &[u8], sync: bool, mode: u32) -> Result<()> {
    let dir = dest.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let writing = || format!("writing {}", dest.display());
    // Readable as the umask allows, like any file a build writes (`build
    // -o` too): a service user must read the app. Never writable by
    // others, whatever the umask: compiled code is loaded from these.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)
        .with_context(writing)?;
    std::io::Write::write_all(&mut tmp, data).with_context(writing)?;
    if sync {
        tmp.as_file().sync_data().with_context(writing)?;
    }
    tmp.persist(dest).with_context(writing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_the_disk_has_no_room_for_is_refused_saying_what_is_free() {
        let dir = tempfile::tempdir().unwrap();
        ensure_room(dir.path(), 1 << 20, "unpacking").unwrap();
        let e = ensure_room(dir.path(), u64::MAX / 2, "unpacking the app's files").unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("MiB free, and unpacking the app's files writes about")
                && e.contains("--cache-dir"),
            "{e}"
        );
    }

    #[test]
    fn temporary_files_left_by_a_killed_writer_are_removed_once_stale() {
        let cache = tempfile::tempdir().unwrap();
        let modules = cache.path().join("modules");
        std::fs::create_dir(&modules).unwrap();
        let old = modules.join(".tmpAbC123");
        let new = modules.join(".tmpXyZ789");
        let kept = modules.join("0a1b.cwasm");
        for f in [&old, &new, &kept] {
            std::fs::write(f, b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * STALE_AFTER;
        for f in [&old, &kept] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        // An unpack's staging, and a pip run's (a `run --reload` rebuild
        // cut by the server's exit).
        let staged = [
            "files/.0a1b.partial-Xy12/python",
            "deps/.4f72.partial-2xx9/site-packages",
        ]
        .map(|p| cache.path().join(p));
        for dir in &staged {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join("os.py"), b"x").unwrap();
            std::fs::File::open(dir.parent().unwrap())
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        assert_eq!(remove_stale_temps(cache.path()), 3);
        assert!(!old.exists() && new.exists() && kept.exists());
        assert!(staged.iter().all(|d| !d.parent().unwrap().exists()));
    }

    #[test]
    fn a_tree_is_moved_whole() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        std::fs::create_dir_all(from.join("pkg/sub")).unwrap();
        std::fs::write(from.join("pkg/sub/m.py"), "x = 1\n").unwrap();
        std::os::unix::fs::symlink("sub/m.py", from.join("pkg/link.py")).unwrap();
        // The copy a move across file systems falls back to.
        let copied = dir.path().join("copied");
        copy_tree(&from, &copied).unwrap();
        assert_eq!(
            std::fs::read(copied.join("pkg/link.py")).unwrap(),
            b"x = 1\n"
        );
        assert!(std::fs::symlink_metadata(copied.join("pkg/link.py"))
            .unwrap()
            .is_symlink());
        let to = dir.path().join("to");
        move_tree(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read(to.join("pkg/sub/m.py")).unwrap(), b"x = 1\n");
    }

    #[test]
    fn compiled_code_is_written_read_only_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("m.cwasm");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        write_compiled(&artifact, b"one").unwrap();
        assert_eq!(mode(&artifact), 0o444);
        write_compiled(&artifact, b"two").unwrap();
        assert_eq!(std::fs::read(&artifact).unwrap(), b"two");
        write_atomic(&dir.path().join("m.sum"), b"sum").unwrap();
        assert_eq!(mode(&dir.path().join("m.sum")), 0o644);
        // Where it could not be written, the error names it.
        let missing = dir.path().join("gone").join("m.cwasm");
        std::fs::write(dir.path().join("gone"), b"a file, not a directory").unwrap();
        let e = format!("{:#}", write_compiled(&missing, b"x").unwrap_err());
        assert!(e.contains("gone"), "{e}");
    }

    #[test]
    fn running_short_of_descriptors_is_not_damage() {
        let err = |code| anyhow::Error::from(std::io::Error::from_raw_os_error(code)).context("x");
        assert!(short_of_resources(err(libc::EMFILE).chain()));
        assert!(short_of_resources(err(libc::ENOMEM).chain()));
        assert!(!short_of_resources(err(libc::ENOENT).chain()));
    }

    #[test]
    fn the_first_complete_tree_wins_and_stale_ones_are_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("tree");
        let done = |d: &Path| d.join("done").is_file();
        let fill = |tag: &str| {
            let s = staging(&dest).unwrap().keep();
            std::fs::write(s.join("done"), tag).unwrap();
            s
        };
        let (a, b) = (fill("a"), fill("b"));
        assert_ne!(a, b, "unique staging names");
        publish(&a, &dest, done).unwrap();
        publish(&b, &dest, done).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("done")).unwrap(), "a");
        assert!(!b.exists(), "the loser's copy is removed");
        // An incomplete leftover is replaced.
        std::fs::remove_file(dest.join("done")).unwrap();
        let c = fill("c");
        publish(&c, &dest, done).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("done")).unwrap(), "c");
    }
}
