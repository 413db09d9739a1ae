//! Scratch directories on the host (an app's or an instance's private
//! /tmp) and their removal, however deep a guest nested them.

use anyhow::{Context, Result};

/// A new private /tmp for `app` on the host.
pub fn scratch_dir(app: &str) -> Result<ScratchDir> {
    use std::os::unix::fs::PermissionsExt;
    // Only this user: on a shared host, other users must not read what
    // apps keep in their /tmp.
    let dir = tempfile::Builder::new()
        .prefix(&format!("rsgi-wasm-{app}-tmp-"))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("creating the app's private /tmp")?;
    Ok(ScratchDir(dir.keep()))
}

/// An app's or instance's private /tmp on the host, removed with it.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// Where it is on the host.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.0) {
            tracing::warn!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// Remove `root` and all under it without recursion, two directories open
/// at most. A guest can nest directories as deep as its quota pays for
/// (16,384 levels in 64 MiB): deeper than a recursive removal's stack and
/// descriptors allow, and too long for paths. So each pass removes what it
/// can at the top and lifts the entries of non-empty directories up to the
/// top, until nothing is left.
fn remove_tree(root: &std::path::Path) -> std::io::Result<()> {
    let mut n = 0u64;
    loop {
        let (mut left, mut progress) = (false, false);
        for entry in std::fs::read_dir(root)? {
            let entry = entry?;
            left = true;
            let path = entry.path();
            if !entry.file_type()?.is_dir() {
                std::fs::remove_file(&path)?;
                progress = true;
                continue;
            }
            if std::fs::remove_dir(&path).is_ok() {
                progress = true;
                continue;
            }
            for child in std::fs::read_dir(&path)? {
                let child = child?;
                let to = loop {
                    n += 1;
                    let to = root.join(format!(".rsgi-wasm-rm-{n}"));
                    if std::fs::symlink_metadata(&to).is_err() {
                        break to;
                    }
                };
                std::fs::rename(child.path(), to)?;
                progress = true;
            }
        }
        if !left {
            return std::fs::remove_dir(root);
        }
        if !progress {
            return Err(std::io::Error::other("entries that cannot be removed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_deeper_than_a_path_can_name_is_removed() {
        let root = tempfile::tempdir().unwrap().keep();
        // 20,000 levels of 40-byte names: 820 KB of path, far past
        // PATH_MAX, and deeper than a recursive removal gets on this test
        // thread's 2 MiB stack (as on tokio's blocking threads).
        let name = "d".repeat(40);
        let mut dir = std::fs::File::open(&root).unwrap();
        for i in 0..20_000 {
            use std::os::fd::AsFd;
            rustix::fs::mkdirat(dir.as_fd(), name.as_str(), rustix::fs::Mode::RWXU).unwrap();
            let fd = rustix::fs::openat(
                dir.as_fd(),
                name.as_str(),
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            if i % 100 == 0 {
                let f = rustix::fs::openat(
                    &fd,
                    "f",
                    rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
                    rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
                )
                .unwrap();
                drop(f);
            }
            dir = std::fs::File::from(fd);
        }
        drop(ScratchDir(root.clone()));
        assert!(!root.exists());
    }
}
