//! Stores an app's compiled snapshot module as a zstd delta against a
//! similar artifact kept whole (`--compact-cache`), and expands it into an
//! unnamed file when the app loads.
//!
//! Why: nearly all of an app's 16-23 MB of compiled cache is its heap
//! snapshot, and two apps' snapshots share few pages at the same offset
//! (the heap is shifted, not edited; docs/benchmarks.md), so sharing pages
//! cannot shrink it. A byte-level delta finds the shift: a hello variant
//! against another hello app's artifact is about 2.4 MB. wasmtime maps a
//! memory image only from a file as stored, so a delta is expanded at each
//! load into an `O_TMPFILE` beside it, which the kernel frees once the
//! module is dropped; the cost is that expansion (tens of milliseconds) at
//! every load, and the full size on disk while the app is loaded.
//!
//! A delta names its base by file name. Bases are artifacts kept whole:
//! an artifact whose best delta is not small enough is stored whole and
//! becomes a base for the next ones, so apps of one kind (hello, Flask,
//! Django) find a base of their own kind. A delta is never a base, so
//! expanding one reads two files at most. The zstd frame carries the
//! checksum of the expanded bytes: a delta or a base damaged since is
//! found at expansion, and the app is compiled again.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::runtime::file_map::FileMap;
use anyhow::{Context, Result};
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

/// What a delta file starts with, then the file name of the artifact it
/// stands for (so a delta copied under another module's name is refused),
/// its base's file name, and the expanded size, each ending in a newline.
const MAGIC: &str = "rsgi-wasm-delta 1";

/// Artifacts smaller than this are kept whole: the snapshot modules are
/// megabytes, the few others are not worth a base of their own.
const SMALLEST: usize = 1 << 20;

/// A delta is kept only when it is at most this fraction of the artifact;
/// past it the artifact is kept whole and serves as a base. Measured: a
/// hello app against another, 1/7; a Flask app against another, 1/5;
/// a Flask app against a hello one, 1/3.8 (so it gets a Flask base).
const MOST_OF_WHOLE: usize = 4;

/// zstd's level: measured on hello and Flask snapshots, 1 to 6 differ by
/// 15% in size and 3x in time; 3 is where the time stops falling.
const LEVEL: i32 = 3;

/// zstd's largest window on 64-bit hosts: the base and the artifact must
/// both fit in it.
const MOST_WINDOW_LOG: u32 = 31;

/// Where a module artifact's delta is kept, beside where it would be kept
/// whole.
pub fn path_of(artifact: &Path) -> PathBuf {
    artifact.with_extension("delta")
}

/// Whether a delta is at `path` and the base it names is beside it.
pub fn base_present(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(512);
    use std::io::Read;
    if file.take(512).read_to_end(&mut head).is_err() {
        return false;
    }
    parse(&head)
        .is_some_and(|(_, base, _, _)| path.parent().is_some_and(|d| d.join(base).is_file()))
}

/// A delta of `compiled`, to stand for the artifact named `name`, against
/// the artifact in `dir` most like it (with the same engine suffix
/// `suffix`), if one makes it small enough: the bytes to store. None
/// means: keep it whole.
pub fn encode(dir: &Path, suffix: &str, name: &str, compiled: &[u8]) -> Option<Vec<u8>> {
    if compiled.len() < SMALLEST {
        return None;
    }
    // Another process (without the flag) stored it whole meanwhile: a
    // delta beside it would only be dead weight.
    if dir.join(name).is_file() {
        return None;
    }
    let base = closest_base(dir, suffix, compiled.len()).filter(|b| b != name)?;
    let base_bytes = std::fs::read(dir.join(&base)).ok()?;
    let frame = compress(&base_bytes, compiled)
        .map_err(|e| tracing::debug!("compressing against {base}: {e}"))
        .ok()?;
    tracing::debug!(
        "delta against {base}: {} of {} bytes",
        frame.len(),
        compiled.len()
    );
    if frame.len() > compiled.len() / MOST_OF_WHOLE {
        return None;
    }
    let mut out = format!("{MAGIC}\n{name}\n{base}\n{}\n", compiled.len()).into_bytes();
    out.extend_from_slice(&frame);
    Some(out)
}

/// The whole artifact in `dir` whose size is closest to `len` (within a
/// factor of two), by file name: snapshots of apps alike are alike in size.
fn closest_base(dir: &Path, suffix: &str, len: usize) -> Option<String> {
    let len = len as u64;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let size = e.metadata().ok()?.len();
            (name.ends_with(suffix) && is_base_name(&name) && size >= len / 2 && size <= len * 2)
                .then(|| (size.abs_diff(len), name))
        })
        .min()
        .map(|(_, name)| name)
}

fn window_log(total: usize) -> u32 {
    (usize::BITS - total.leading_zeros()).clamp(10, MOST_WINDOW_LOG)
}

fn compress(base: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let err = |code| anyhow::anyhow!(zstd_safe::get_error_name(code));
    let mut cctx = CCtx::create();
    for p in [
        CParameter::CompressionLevel(LEVEL),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::WindowLog(window_log(base.len() + data.len())),
        CParameter::ChecksumFlag(true),
        CParameter::ContentSizeFlag(true),
    ] {
        cctx.set_parameter(p).map_err(err)?;
    }
    cctx.ref_prefix(base).map_err(err)?;
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(err)?;
    Ok(out)
}

/// Why a delta could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// Its base is gone (removed, or discarded as damaged): compile again.
    #[error("its base {0} is not in the cache")]
    NoBase(String),
    /// It is not a delta this host wrote, or it or its base was damaged.
    #[error("{0}")]
    Damaged(String),
    /// It was removed since it was seen (another process wrote the
    /// artifact whole): look for that.
    #[error("it was removed meanwhile")]
    Gone,
}

/// Expand the delta at `path`, standing for the artifact named `name`,
/// into an unnamed file in its directory, ready to be mapped.
pub fn expand(path: &Path, name: &str) -> Result<std::result::Result<File, Unusable>> {
    let t = std::time::Instant::now();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(Unusable::Gone)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some((module, base, len, frame)) = parse(&bytes) else {
        return Ok(Err(Unusable::Damaged("not a delta this host wrote".into())));
    };
    // The size the header gives is the frame's own, or the delta is
    // damaged: checked before anything that large is asked for.
    if frame_size(frame) != Some(len as u64) {
        return Ok(Err(Unusable::Damaged(format!(
            "its frame does not hold the {len} bytes its header says"
        ))));
    }
    if module != name {
        return Ok(Err(Unusable::Damaged(format!(
            "it stands for {module}, not {name} (copied over it?)"
        ))));
    }
    let dir = path.parent().context("a delta is in a directory")?;
    let base_path = dir.join(base);
    let base_file = match File::open(&base_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(Unusable::NoBase(base.to_owned())));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", base_path.display())),
    };
    // Mapped, not read: a copy would be 16-25 MB of fresh memory to fault
    // in, a third of the expansion's time.
    // SAFETY: cache artifacts are replaced by renaming, never truncated.
    let Some(base_map) = (unsafe { FileMap::new(&base_file) })
        .with_context(|| format!("reading {}", base_path.display()))?
    else {
        return Ok(Err(Unusable::Damaged(format!("its base {base} is empty"))));
    };
    // Read in large requests: the mapping is advised for random access.
    let whole = 0..base_map.bytes().len();
    FileMap::prefetch(&base_file, std::slice::from_ref(&whole));
    // Expanded beside the delta, or where temporary files go if the
    // cache is read-only (an image's baked-in cache, which deploy.md
    // allows): any process must load a cache written either way.
    let mut file = match tempfile::tempfile_in(dir) {
        Ok(f) => {
            // Room for it, on disk and in memory, before the work: neither
            // is damage, so the delta is kept and the load fails, saying so.
            crate::cachefs::ensure_room(
                dir,
                len as u64,
                "expanding an app kept as a delta (--compact-cache)",
            )?;
            f
        }
        Err(e) if unwritable(&e) => {
            let tmp = std::env::temp_dir();
            tempfile::tempfile_in(&tmp).with_context(|| {
                format!(
                    "expanding {}: the cache is not writable ({e}), nor is {}: make one of them writable",
                    path.display(),
                    tmp.display()
                )
            })?
        }
        Err(e) => {
            return Err(e).with_context(|| format!("expanding into {}", dir.display()));
        }
    };
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|e| anyhow::anyhow!("expanding {} ({len} bytes): {e}", path.display()))?;
    let expanded = decompress(base_map.bytes(), frame, out, len);
    // The base stays in the page cache: every delta against it reads it
    // whole, where reading it back from disk would double the expansion's
    // time. Bases are few (one per kind of app), so that is bounded.
    drop(base_map);
    let expanded = match expanded {
        Ok(b) => b,
        Err(e) => return Ok(Err(Unusable::Damaged(format!("{e:#} (against {base})")))),
    };
    file.write_all(&expanded)
        .with_context(|| format!("expanding {}", path.display()))?;
    drop(expanded);
    // Synced, so the pages instances will not read can leave the page
    // cache (`snapshot_pages::settle_expanded`): dirty ones cannot.
    #[cfg(target_os = "linux")]
    rustix::fs::fdatasync(&file).with_context(|| format!("expanding {}", path.display()))?;
    tracing::debug!("expanded {} in {:.1?}", path.display(), t.elapsed());
    Ok(Ok(file))
}

/// Whether creating a file failed because the place is read-only to us.
fn unwritable(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
}

/// A delta's header and frame: the artifact it stands for, its base, the
/// expanded size, the frame.
fn parse(bytes: &[u8]) -> Option<(&str, &str, usize, &[u8])> {
    let mut parts = bytes.splitn(5, |&b| b == b'\n');
    (parts.next()? == MAGIC.as_bytes()).then_some(())?;
    let module = std::str::from_utf8(parts.next()?).ok()?;
    let base = std::str::from_utf8(parts.next()?).ok()?;
    (is_base_name(base) && base != module).then_some(())?;
    let len = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    Some((module, base, len, parts.next()?))
}

/// A whole artifact's file name in the same directory: never a path, a
/// hidden or temporary file, or another delta.
fn is_base_name(base: &str) -> bool {
    !base.is_empty() && !base.contains('/') && !base.starts_with('.') && base.ends_with(".cwasm")
}

/// The size `frame` says it expands to, if it says.
fn frame_size(frame: &[u8]) -> Option<u64> {
    zstd_safe::get_frame_content_size(frame).ok().flatten()
}

/// Expand `frame` against `base` into `out` (empty, with room reserved):
/// `len` bytes, or an error.
fn decompress(base: &[u8], frame: &[u8], mut out: Vec<u8>, len: usize) -> Result<Vec<u8>> {
    let err = |code| anyhow::anyhow!(zstd_safe::get_error_name(code));
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MOST_WINDOW_LOG))
        .map_err(err)?;
    dctx.ref_prefix(base).map_err(err)?;
    dctx.decompress(&mut out, frame).map_err(err)?;
    anyhow::ensure!(
        out.len() == len,
        "expanded to {} bytes, not {len}",
        out.len()
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// An "artifact" like a shifted heap: the base with bytes inserted
    /// near its start and a few edited.
    fn shifted(base: &[u8]) -> Vec<u8> {
        let mut v = base[..4096].to_vec();
        v.extend_from_slice(&pseudo_random(777, 9));
        v.extend_from_slice(&base[4096..]);
        v[base.len() / 2] ^= 0xff;
        v
    }

    /// What the delta at `path` (standing for `app-e.cwasm`) expands to.
    fn expanded(path: &Path) -> std::result::Result<Vec<u8>, Unusable> {
        let mut file = expand(path, APP).unwrap()?;
        let mut out = Vec::new();
        use std::io::Seek;
        file.rewind().unwrap();
        file.read_to_end(&mut out).unwrap();
        Ok(out)
    }

    const APP: &str = "app-e.cwasm";

    /// A directory with a whole base artifact, and the delta of `app`
    /// against it written as `app-e.delta`: the directory, the base, the
    /// delta's path and bytes.
    fn with_delta(
        app: impl Fn(&[u8]) -> Vec<u8>,
    ) -> (tempfile::TempDir, Vec<u8>, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let base = pseudo_random(2 << 20, 1);
        std::fs::write(dir.path().join("base-e.cwasm"), &base).unwrap();
        let delta = encode(dir.path(), "-e.cwasm", APP, &app(&base)).expect("a delta");
        let path = dir.path().join("app-e.delta");
        std::fs::write(&path, &delta).unwrap();
        (dir, base, path, delta)
    }

    #[test]
    fn a_shifted_artifact_is_stored_as_a_small_delta_against_the_closest_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = pseudo_random(3 << 20, 1);
        std::fs::write(dir.path().join("base-e.cwasm"), &base).unwrap();
        // Other engines' artifacts, other files and deltas are never bases,
        // however alike; nor is a whole artifact farther in size.
        std::fs::write(dir.path().join("other-f.cwasm"), &base).unwrap();
        std::fs::write(dir.path().join("another-e.delta"), &base).unwrap();
        std::fs::write(dir.path().join(".tmp1-e.cwasm"), &base).unwrap();
        std::fs::write(dir.path().join("far-e.cwasm"), pseudo_random(5 << 20, 3)).unwrap();
        let app = shifted(&base);
        let delta = encode(dir.path(), "-e.cwasm", APP, &app).expect("a delta");
        assert!(delta.len() < 64 << 10, "{} bytes", delta.len());
        let header = String::from_utf8_lossy(&delta[..100]).into_owned();
        let lines: Vec<&str> = header.lines().take(4).collect();
        assert_eq!(lines[..3], [MAGIC, APP, "base-e.cwasm"], "{header}");
        let path = dir.path().join("app-e.delta");
        std::fs::write(&path, &delta).unwrap();
        assert!(base_present(&path));
        assert_eq!(expanded(&path).unwrap(), app);
        // Stored whole meanwhile (by a process without the flag): no
        // delta beside it, and never one against itself.
        std::fs::write(dir.path().join(APP), &app).unwrap();
        assert!(encode(dir.path(), "-e.cwasm", APP, &app).is_none());
    }

    #[test]
    fn what_no_base_makes_small_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base-e.cwasm"), pseudo_random(3 << 20, 1)).unwrap();
        assert!(encode(dir.path(), "-e.cwasm", APP, &pseudo_random(3 << 20, 2)).is_none());
        // Nothing of a similar size, or too small to bother.
        let base = pseudo_random(3 << 20, 1);
        let triple = [&base[..], &base[..], &base[..]].concat();
        assert!(encode(dir.path(), "-e.cwasm", APP, &triple).is_none());
        assert!(encode(dir.path(), "-e.cwasm", APP, &base[..1000]).is_none());
    }

    #[test]
    fn a_delta_whose_base_is_gone_or_damaged_is_unusable_not_wrong() {
        let (dir, base, path, _) = with_delta(shifted);
        let base_path = dir.path().join("base-e.cwasm");
        let mut damaged = base.clone();
        damaged[100_000] ^= 1;
        std::fs::write(&base_path, &damaged).unwrap();
        assert!(matches!(expanded(&path), Err(Unusable::Damaged(_))));

        std::fs::remove_file(&base_path).unwrap();
        assert!(!base_present(&path));
        assert!(matches!(expanded(&path), Err(Unusable::NoBase(b)) if b == "base-e.cwasm"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(expanded(&path), Err(Unusable::Gone)));
    }

    #[test]
    fn a_delta_for_another_module_is_refused() {
        let (_dir, _, path, _) = with_delta(shifted);
        let mut file = expand(&path, "other-e.cwasm").unwrap();
        assert!(
            matches!(&file, Err(Unusable::Damaged(why)) if why.contains("stands for app-e.cwasm")),
            "{:?}",
            file.as_mut().err()
        );
    }

    #[test]
    fn a_delta_that_lies_about_its_size_or_base_is_refused_before_it_is_expanded() {
        let (_dir, _, path, delta) = with_delta(shifted);
        let header_len = delta
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .nth(3)
            .unwrap()
            .0
            + 1;
        let real_len = String::from_utf8_lossy(&delta[..header_len])
            .lines()
            .nth(3)
            .unwrap()
            .to_owned();
        for header in [
            format!("{MAGIC}\n{APP}\nbase-e.cwasm\n{}\n", u64::MAX / 2),
            format!("{MAGIC}\n{APP}\nbase-e.cwasm\n1\n"),
            format!("{MAGIC}\n{APP}\n../base-e.cwasm\n{real_len}\n"),
            format!("{MAGIC}\n{APP}\n/etc/passwd\n{real_len}\n"),
            format!("{MAGIC}\n{APP}\napp-e.cwasm\n{real_len}\n"),
            format!("{MAGIC}\n{APP}\nbase-e.delta\n{real_len}\n"),
            format!("{MAGIC}\n{APP}\nbase-e.sum\n{real_len}\n"),
            "junk\n".to_owned(),
        ] {
            let mut bad = header.clone().into_bytes();
            bad.extend_from_slice(&delta[header_len..]);
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(expanded(&path), Err(Unusable::Damaged(_))),
                "{header}"
            );
        }
        // A frame cut short, and one without its content size.
        std::fs::write(&path, &delta[..delta.len() - 5]).unwrap();
        assert!(matches!(expanded(&path), Err(Unusable::Damaged(_))));
        let mut no_size = delta[..header_len].to_vec();
        no_size.extend_from_slice(&zstd::bulk::compress(b"abc", 3).unwrap()[..6]);
        std::fs::write(&path, &no_size).unwrap();
        assert!(matches!(expanded(&path), Err(Unusable::Damaged(_))));
    }
}
