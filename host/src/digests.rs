//! A component file's SHA-256 remembered by the file's identity on disk, so
//! loading a component seen before does not hash it again.
//!
//! Hashing was half of a cold tenant's load (about 12 ms of 24 for a 24 MB
//! hello component, SHA-NI included). The identity is what `stat` says of
//! the open file: device, inode, size, and modification and change times to
//! the nanosecond. On the local file systems listed in [`KEEPS_CTIME`], any
//! write changes the change time, which no user can set back, so a file
//! with the same identity has the same bytes, with one exception git's
//! index also guards against: a write within the same clock tick as the
//! recorded change time. An entry is therefore recorded only for a file
//! whose change time is a few seconds old (and not in the future); a newer
//! file is hashed again on every load until it is. Elsewhere (network and
//! FUSE file systems, whose times come from another clock or from the
//! file's own mtime, and read-only images, whose inode numbers and times
//! repeat from one image to the next) nothing is recorded and every load
//! hashes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::{bundle, cachefs};

/// How long a file must have been left alone before its digest is recorded:
/// more than the coarsest timestamp tick of a common file system (FAT's 2 s).
const SETTLED: Duration = Duration::from_secs(3);

/// Local file systems (`statfs` magic numbers) where the kernel itself sets
/// a file's change time on every write: ext2/3/4, XFS, Btrfs, tmpfs, F2FS,
/// overlayfs (over one of those) and ZFS.
const KEEPS_CTIME: [u32; 7] = [
    0xEF53,
    0x5846_5342,
    0x9123_683E,
    0x0102_1994,
    0xF2F5_2010,
    0x794C_7630,
    0x2FC1_2FC1,
];

/// What `stat` says of a file that changes with every write on the file
/// systems of [`KEEPS_CTIME`]: device, inode, size, and modification and
/// change times to the nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The identity of the file at `path` (following symlinks).
    pub fn of_path(path: &Path) -> std::io::Result<Identity> {
        std::fs::metadata(path).map(|m| Identity::of(&m))
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dev {} ino {} size {} mtime {}.{:09} ctime {}.{:09}",
            self.dev, self.ino, self.size, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

/// The SHA-256 of `file` (from its start) in hex: from the index in
/// `cache_dir` if this file was hashed before, unchanged, else hashed now
/// (and recorded once the file has settled). Its read position afterwards
/// is unspecified.
pub fn of_component(file: &mut File, cache_dir: &Path) -> std::io::Result<String> {
    of_component_at(file, cache_dir, SystemTime::now())
}

fn of_component_at(file: &mut File, cache_dir: &Path, now: SystemTime) -> std::io::Result<String> {
    if !keeps_ctime(file) {
        file.seek(SeekFrom::Start(0))?;
        return bundle::digest(file);
    }
    let meta = file.metadata()?;
    let identity = Identity::of(&meta).to_string();
    let entry = entry_path(cache_dir, &identity);
    if let Some(digest) = recorded(&entry, &identity) {
        return Ok(digest);
    }
    file.seek(SeekFrom::Start(0))?;
    let digest = bundle::digest(file)?;
    let changed = UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
    // Not in the future either: a change time ahead of this clock says
    // nothing about when the file settled.
    if now.duration_since(changed).is_ok_and(|age| age >= SETTLED) {
        // Best effort: without the entry the next load hashes again.
        let _ = record(&entry, &format!("{identity}\n{digest}\n"));
    }
    Ok(digest)
}

/// Whether `file` is on a file system in [`KEEPS_CTIME`].
fn keeps_ctime(file: &File) -> bool {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::fstatfs(file).is_ok_and(|st| KEEPS_CTIME.contains(&(st.f_type as u32)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        false
    }
}

/// Write an entry, its directory private like the rest of the cache (an
/// entry decides which compiled code runs for a file).
fn record(entry: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = entry.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    cachefs::write_atomic(entry, text.as_bytes())
}

/// Where the entry for `identity` lives: named by a hash of it, holding the
/// identity itself so a (theoretical) name collision is never trusted.
fn entry_path(cache_dir: &Path, identity: &str) -> PathBuf {
    let name = format!("{:x}", Sha256::digest(identity.as_bytes()));
    cache_dir.join("digests").join(&name[..32])
}

fn recorded(entry: &Path, identity: &str) -> Option<String> {
    let mut text = String::new();
    File::open(entry).ok()?.read_to_string(&mut text).ok()?;
    let (id, digest) = text.trim_end().split_once('\n')?;
    (id == identity && digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha(bytes: &[u8]) -> String {
        format!("{:x}", Sha256::digest(bytes))
    }

    #[test]
    fn a_settled_file_is_hashed_once_and_any_change_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = dir.path().join("app.wasm");
        std::fs::write(&path, b"version one").unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);

        let mut f = File::open(&path).unwrap();
        assert_eq!(
            of_component_at(&mut f, &cache, later).unwrap(),
            sha(b"version one")
        );
        if !keeps_ctime(&f) {
            assert!(!cache.join("digests").exists(), "never recorded here");
            return;
        }
        let mode = std::fs::metadata(cache.join("digests"))
            .unwrap()
            .permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077, 0);
        let entries: Vec<_> = std::fs::read_dir(cache.join("digests")).unwrap().collect();
        assert_eq!(entries.len(), 1, "recorded once settled");

        // The entry is what answers now: doctored, it is believed...
        let entry = entries[0].as_ref().unwrap().path();
        let text = std::fs::read_to_string(&entry).unwrap();
        let fake = "f".repeat(64);
        std::fs::write(&entry, text.replace(&sha(b"version one"), &fake)).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(of_component_at(&mut f, &cache, later).unwrap(), fake);

        // ...until the file changes in place, same size and inode, a clock
        // tick later as `SETTLED` ensures for a recorded file (a second here,
        // for file systems that keep whole seconds).
        std::thread::sleep(Duration::from_millis(1100));
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(b"version two").unwrap();
        drop(w);
        let mut f = File::open(&path).unwrap();
        assert_eq!(
            of_component_at(&mut f, &cache, later).unwrap(),
            sha(b"version two")
        );
    }

    #[test]
    fn a_file_changed_just_now_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = dir.path().join("app.wasm");
        std::fs::write(&path, b"fresh").unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(of_component(&mut f, &cache).unwrap(), sha(b"fresh"));
        assert!(
            !cache.join("digests").exists(),
            "a write in the same tick could follow"
        );
        // Nor one changed "later" than now, by another machine's clock.
        let earlier = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(
            of_component_at(&mut f, &cache, earlier).unwrap(),
            sha(b"fresh")
        );
        assert!(!cache.join("digests").exists());
    }

    #[test]
    fn an_unreadable_or_foreign_entry_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("e");
        std::fs::write(&entry, "dev 1 ino 2\nnot a digest\n").unwrap();
        assert_eq!(recorded(&entry, "dev 1 ino 2"), None);
        std::fs::write(&entry, format!("dev 9 ino 9\n{}\n", "a".repeat(64))).unwrap();
        assert_eq!(
            recorded(&entry, "dev 1 ino 2"),
            None,
            "another file's entry"
        );
        assert_eq!(recorded(&dir.path().join("missing"), "x"), None);
    }
}
