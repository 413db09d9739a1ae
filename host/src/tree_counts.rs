//! What each shared tree of the `files` cache held when it was unpacked
//! (its regular files and their bytes, kept beside each component's
//! index by `bundle`), and the check, at load and every 30 s while an
//! app is loaded, that it still does.
//!
//! A cache cleaner that prunes files by age (systemd-tmpfiles, `find
//! -mtime +30 -delete`) leaves a tree whose directory is there and whose
//! files are not; an app would fail at whatever import or template read
//! reaches a missing one, long after it started. A tree that no longer
//! matches its count is unpacked again from the component instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Regular files and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    files: u64,
    bytes: u64,
}

impl Tally {
    /// Count one more regular file of `len` bytes.
    pub fn add(&mut self, len: u64) {
        self.files += 1;
        self.bytes += len;
    }

    /// About what the files take on disk: their bytes, and a block each.
    pub fn on_disk(&self) -> u64 {
        self.bytes.saturating_add(self.files.saturating_mul(4096))
    }

    /// A tally as `Display` writes it (`FILES BYTES`).
    pub fn parse(text: &str) -> Option<Tally> {
        let (files, bytes) = text.trim_end().split_once(' ')?;
        Some(Tally {
            files: files.parse().ok()?,
            bytes: bytes.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.files, self.bytes)
    }
}

/// How long a tree found whole is taken to be so before the next load
/// walks it again: a tree every app shares is walked at most this often,
/// and a file pruned while the server runs is noticed at an app's next
/// load this long after at most.
const WHOLE_FOR: Duration = Duration::from_secs(2);

/// Trees found whole, when, and what they held then.
static WHOLE: Mutex<Option<HashMap<PathBuf, (Instant, Tally)>>> = Mutex::new(None);

/// Fails, as not found, if `tree` no longer holds what `tally` says.
pub fn check(tree: &Path, tally: Tally) -> std::io::Result<()> {
    if whole(tree) {
        return Ok(());
    }
    let found = walk(tree)?;
    if found != tally {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} holds {} files of {} bytes where {} files of {} bytes were unpacked: \
                 files were removed from the cache, or changed",
                tree.display(),
                found.files,
                found.bytes,
                tally.files,
                tally.bytes
            ),
        ));
    }
    mark_whole(tree, tally);
    Ok(())
}

/// Whether `tree` still holds what a load found in it (true for a tree
/// no load counted): for the running apps' periodic look, which walks a
/// tree many apps share once, as [`check`] takes a tree found whole
/// lately for whole.
pub fn still_whole(tree: &Path) -> bool {
    found_whole(tree).is_none_or(|(_, tally)| check(tree, tally).is_ok())
}

/// Move a tree that no longer holds what it should out of the way of a
/// new copy. It is renamed, not removed: instances of other apps, in this
/// process or another, may have it mounted and keep reading what is left.
pub fn set_aside(tree: &Path) -> Result<()> {
    let name = tree.file_name().context("a tree has a name")?;
    let aside = tree.with_file_name(format!(
        ".damaged-{}-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    match std::fs::rename(tree, &aside) {
        Ok(()) => {
            tracing::warn!(
                "{} no longer held what was unpacked into it; moved to {} (remove it once no server started before now is running) and unpacked again",
                tree.display(),
                aside.display()
            );
            forget(tree);
            Ok(())
        }
        // Another process set it aside first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("moving {} aside", tree.display())),
    }
}

/// When `tree` was last found whole, and what it held then.
fn found_whole(tree: &Path) -> Option<(Instant, Tally)> {
    WHOLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|s| s.get(tree).copied())
}

fn whole(tree: &Path) -> bool {
    found_whole(tree).is_some_and(|(at, _)| at.elapsed() < WHOLE_FOR)
}

fn mark_whole(tree: &Path, tally: Tally) {
    WHOLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(tree.to_owned(), (Instant::now(), tally));
}

fn forget(tree: &Path) {
    if let Some(s) = WHOLE.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        s.remove(tree);
    }
}

/// The regular files below `tree` (symlinks not followed) and their bytes.
fn walk(tree: &Path) -> std::io::Result<Tally> {
    let mut tally = Tally::default();
    let mut dirs = vec![tree.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                tally.add(entry.metadata()?.len());
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_missing_a_file_fails_its_check_and_is_set_aside_intact() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("0f3e");
        std::fs::create_dir_all(tree.join("pkg/sub")).unwrap();
        std::fs::write(tree.join("pkg/a.py"), "a = 1\n").unwrap();
        std::fs::write(tree.join("pkg/sub/b.txt"), "bee").unwrap();
        std::os::unix::fs::symlink("a.py", tree.join("pkg/link.py")).unwrap();
        let mut tally = Tally::default();
        tally.add(6);
        tally.add(3);
        assert_eq!(Tally::parse(&tally.to_string()), Some(tally));
        // A tree no load counted is taken as it is.
        assert!(still_whole(&tree));
        assert!(check(&tree, tally).is_ok());
        // Found whole a moment ago: not walked again yet.
        std::fs::remove_file(tree.join("pkg/sub/b.txt")).unwrap();
        check(&tree, tally).unwrap();
        // Past the window, the periodic look walks it against its count.
        WHOLE
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .get_mut(&tree)
            .unwrap()
            .0 -= 2 * WHOLE_FOR;
        assert!(!still_whole(&tree));
        forget(&tree);
        let e = check(&tree, tally).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("holds 1 files of 6 bytes where 2 files of 9 bytes were unpacked"),
            "{e}"
        );
        assert!(check(&tree, tally).is_err());
        // A changed size is damage too.
        std::fs::write(tree.join("pkg/sub/b.txt"), "be").unwrap();
        assert!(check(&tree, tally).is_err());
        set_aside(&tree).unwrap();
        assert!(!tree.exists());
        let aside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".damaged-0f3e-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(root.path().join(&aside[0]).join("pkg/a.py").is_file());
        // Set aside by another process first: nothing to do.
        set_aside(&tree).unwrap();
    }

    #[test]
    fn counts_read_back_and_anything_else_is_refused() {
        assert_eq!(Tally::parse("2 9"), Some(Tally { files: 2, bytes: 9 }));
        for bad in ["", "x y", "1", "1 2 3", "-1 2", " 1 2"] {
            assert_eq!(Tally::parse(bad), None, "{bad:?}");
        }
    }
}
