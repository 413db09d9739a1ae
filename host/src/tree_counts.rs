//! What each shared tree of the `files` cache held when it was unpacked
//! (its regular files and their bytes), and the check, once per process,
//! that it still does.
//!
//! A cache cleaner that prunes files by age (systemd-tmpfiles, `find
//! -mtime +30 -delete`) leaves a tree whose directory is there and whose
//! files are not; an app would fail at whatever import or template read
//! reaches a missing one, long after it started. A tree that no longer
//! matches its count is unpacked again from the component instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

    fn parse(text: &str) -> Option<Tally> {
        let (files, bytes) = text.trim_end().split_once(' ')?;
        Some(Tally {
            files: files.parse().ok()?,
            bytes: bytes.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files of {} bytes", self.files, self.bytes)
    }
}

/// Trees found whole by this process: a tree shared by every app is
/// walked once, not at each app's load.
static WHOLE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Where the tally of `tree` is kept: beside it, as the tree itself is
/// mounted into guests.
fn record_of(tree: &Path) -> PathBuf {
    let mut name = tree.as_os_str().to_owned();
    name.push(".count");
    PathBuf::from(name)
}

/// Keep `tally`, counted from the archive, as what `tree` holds. A record
/// saying otherwise (edited, or damaged into other numbers) is replaced,
/// or every later load would take the tree for damaged.
pub fn record(tree: &Path, tally: Tally) -> Result<()> {
    let path = record_of(tree);
    let kept = std::fs::read_to_string(&path).ok();
    if kept.as_deref().and_then(Tally::parse) == Some(tally) {
        return Ok(());
    }
    crate::cachefs::write_atomic(
        &path,
        format!("{} {}\n", tally.files, tally.bytes).as_bytes(),
    )
    .with_context(|| format!("recording what {} holds", tree.display()))
}

/// Whether `tree` holds what `tally` says (walked once per process).
pub fn holds(tree: &Path, tally: Tally) -> bool {
    if whole(tree) {
        return true;
    }
    let found = walk(tree).is_ok_and(|t| t == tally);
    if found {
        mark_whole(tree);
    }
    found
}

/// Fails, as not found, if `tree` no longer holds what its record says.
/// A tree with no record (unpacked by an older version) passes.
pub fn check(tree: &Path) -> std::io::Result<()> {
    if whole(tree) {
        return Ok(());
    }
    let recorded = match std::fs::read_to_string(record_of(tree)) {
        Ok(text) => Tally::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // A damaged record is as good as none: the next unpack writes another
    // only where none is, so let it be read as "unknown", not as damage
    // that would unpack the tree at every load.
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let found = walk(tree)?;
    if found != recorded {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} holds {found} where {recorded} were unpacked: files were removed from the cache, or changed",
                tree.display()
            ),
        ));
    }
    mark_whole(tree);
    Ok(())
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

fn whole(tree: &Path) -> bool {
    WHOLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(tree))
}

fn mark_whole(tree: &Path) {
    WHOLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(tree.to_owned());
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
        // No record yet: unknown, passes.
        check(&tree).unwrap();
        record(&tree, tally).unwrap();
        assert!(holds(&tree, tally));
        check(&tree).unwrap();
        // Checked once per process: a later removal is seen by the next
        // process (or after the tree is set aside).
        forget(&tree);
        std::fs::remove_file(tree.join("pkg/sub/b.txt")).unwrap();
        let e = check(&tree).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .contains("holds 1 files of 6 bytes where 2 files of 9 bytes were unpacked"),
            "{e}"
        );
        assert!(!holds(&tree, tally));
        // A changed size is damage too.
        std::fs::write(tree.join("pkg/sub/b.txt"), "be").unwrap();
        assert!(check(&tree).is_err());
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
    fn a_record_with_other_numbers_is_replaced_by_the_archive_s() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("bb");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("m.py"), "x").unwrap();
        let mut tally = Tally::default();
        tally.add(1);
        std::fs::write(record_of(&tree), "7 700\n").unwrap();
        assert!(check(&tree).is_err());
        record(&tree, tally).unwrap();
        check(&tree).unwrap();
    }

    #[test]
    fn a_damaged_record_reads_as_none() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("aa");
        std::fs::create_dir(&tree).unwrap();
        for bad in ["", "x y", "1", "1 2 3", "-1 2"] {
            std::fs::write(record_of(&tree), bad).unwrap();
            check(&tree).unwrap();
        }
        assert_eq!(Tally::parse("2 9\n"), Some(Tally { files: 2, bytes: 9 }));
    }
}
