//! A component file's SHA-256 remembered by the file's identity on disk, so
//! loading a component seen before does not hash it again.
//!
//! Hashing was half of a cold tenant's load (about 12 ms of 24 for a 24 MB
//! hello component, SHA-NI included). The identity is what `stat` says of
//! the open file: device, inode, size, and modification and change times to
//! the nanosecond. Any write changes the change time, which no user can set
//! back, so a file with the same identity has the same bytes, with one
//! exception git's index also guards against: a write within the same clock
//! tick as the recorded change time. An entry is therefore recorded only
//! for a file whose change time is a few seconds old; a newer file is
//! hashed again on every load until it is.

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

/// The SHA-256 of `file` (from its start) in hex: from the index in
/// `cache_dir` if this file was hashed before, unchanged, else hashed now
/// (and recorded once the file has settled). Its read position afterwards
/// is unspecified.
pub fn of_component(file: &mut File, cache_dir: &Path) -> std::io::Result<String> {
    of_component_at(file, cache_dir, SystemTime::now())
}

fn of_component_at(file: &mut File, cache_dir: &Path, now: SystemTime) -> std::io::Result<String> {
    let meta = file.metadata()?;
    let identity = format!(
        "dev {} ino {} size {} mtime {}.{:09} ctime {}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
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
    if now.duration_since(changed).is_ok_and(|age| age >= SETTLED) {
        // Best effort: without the entry the next load hashes again.
        let _ = cachefs::write_atomic(&entry, format!("{identity}\n{digest}\n").as_bytes());
    }
    Ok(digest)
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
        let entries: Vec<_> = std::fs::read_dir(cache.join("digests")).unwrap().collect();
        assert_eq!(entries.len(), 1, "recorded once settled");

        // The entry is what answers now: doctored, it is believed...
        let entry = entries[0].as_ref().unwrap().path();
        let text = std::fs::read_to_string(&entry).unwrap();
        let fake = "f".repeat(64);
        std::fs::write(&entry, text.replace(&sha(b"version one"), &fake)).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(of_component_at(&mut f, &cache, later).unwrap(), fake);

        // ...until the file changes in place, same size and inode (a clock
        // tick later, as `SETTLED` ensures for a recorded file).
        std::thread::sleep(Duration::from_millis(20));
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
