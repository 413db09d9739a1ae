//! Checksums of compiled artifacts. wasmtime maps a cached artifact's
//! machine code and runs it as it is, after checking only its format, so
//! bytes damaged inside one (a bad disk block, a stray write, a restore
//! gone wrong) would crash the whole server, every tenant with it. Each
//! artifact's code and metadata are hashed when it is compiled, into a
//! `.sum` file beside it, and checked when a process first loads it.
//!
//! The guest's memory images (the `.rodata.wasm` section: data segments
//! and an app's heap snapshot, most of a snapshot module's bytes) are left
//! out: damage there stays inside that app's sandbox, and hashing 14-32 MB
//! would add tens of milliseconds to every cold app's first request.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use object::{Object, ObjectSection};
use sha2::{Digest, Sha256};

use crate::cachefs;

/// The first line of a `.sum` file: its format.
const HEADER: &str = "rsgi-wasm sum 1";

/// The section wasmtime keeps the guest's memory images in
/// (`wasmtime_environ::obj::ELF_WASM_DATA`).
const MEMORY_IMAGES: &str = ".rodata.wasm";

/// What the check of an artifact found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its code hashes to what was recorded when it was compiled.
    Sound,
    /// It cannot be trusted: why, in words for the log.
    Unusable(String),
}

/// Where the sum of `artifact` is kept.
fn sum_path(artifact: &Path) -> PathBuf {
    artifact.with_extension("sum")
}

/// Record the sum of the freshly `compiled` artifact, before the artifact
/// itself is put in place: a reader that sees the artifact sees its sum.
pub fn record(artifact: &Path, compiled: &[u8]) -> Result<()> {
    let sum = of_bytes(compiled).with_context(|| {
        format!(
            "reading what was compiled for {} (wasmtime's output is not ELF)",
            artifact.display()
        )
    })?;
    cachefs::write_atomic(&sum_path(artifact), format!("{HEADER}\n{sum}\n").as_bytes())
        .with_context(|| format!("caching the checksum of {}", artifact.display()))
}

/// Check the artifact open as `file` (at `artifact`) against its sum.
/// An error is one reading it (the caller tells passing shortages from
/// damage); a damaged or unsummed artifact is a verdict.
pub fn check(file: &File, artifact: &Path) -> Result<Verdict> {
    let recorded = match std::fs::read_to_string(sum_path(artifact)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verdict::Unusable(
                "it has no checksum (compiled by an older rsgi-wasm, or its .sum file was removed)"
                    .into(),
            ));
        }
        Err(e) => return Err(e).context("reading its checksum"),
    };
    let Some(recorded) = parse(&recorded) else {
        return Ok(Verdict::Unusable("its .sum file is damaged".into()));
    };
    let actual = match of_file(file)? {
        Some(sum) => sum,
        None => return Ok(Verdict::Unusable("it is not a readable ELF file".into())),
    };
    Ok(if actual == recorded {
        Verdict::Sound
    } else {
        Verdict::Unusable("its bytes differ from what was compiled (checksum mismatch)".into())
    })
}

/// Remove the sum of an artifact being removed.
pub fn forget(artifact: &Path) {
    let _ = std::fs::remove_file(sum_path(artifact));
}

fn parse(text: &str) -> Option<&str> {
    let mut lines = text.lines();
    (lines.next() == Some(HEADER)).then_some(())?;
    let sum = lines.next()?;
    (sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) && lines.next().is_none())
        .then_some(sum)
}

/// The byte range of the memory images in the ELF file `data` (any
/// `ReadRef`: bytes in memory, or a file read on demand); none if it is
/// not ELF.
fn images<'a, R: object::ReadRef<'a>>(data: R) -> Option<std::ops::Range<u64>> {
    let file = object::File::parse(data).ok()?;
    Some(match file.section_by_name(MEMORY_IMAGES) {
        Some(s) => {
            let (start, len) = s.file_range().unwrap_or((0, 0));
            start..start + len
        }
        None => 0..0,
    })
}

fn of_bytes(data: &[u8]) -> Option<String> {
    let skip = images(data)?;
    let start = usize::try_from(skip.start).ok()?;
    let end = usize::try_from(skip.end).ok()?;
    let mut h = Sha256::new();
    h.update(data.get(..start)?);
    h.update(data.get(end..)?);
    Some(format!("{:x}", h.finalize()))
}

fn of_file(file: &File) -> Result<Option<String>> {
    let cache = object::read::ReadCache::new(file);
    let Some(skip) = images(&cache) else {
        return Ok(None);
    };
    drop(cache);
    let mut h = Sha256::new();
    // Big reads: libpython's artifact is about 30 MB.
    let mut buf = vec![0; 1 << 20];
    let mut reader = file;
    let mut feed = |from: u64, len: u64| -> std::io::Result<()> {
        reader.seek(SeekFrom::Start(from))?;
        let mut part = (&mut reader).take(len);
        loop {
            match part.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    feed(0, skip.start)?;
    feed(skip.end, u64::MAX)?;
    Ok(Some(format!("{:x}", h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real artifact: wasmtime's output for a module with code and a
    /// data segment.
    fn compiled() -> Vec<u8> {
        let engine = wasmtime::Engine::default();
        engine
            .precompile_module(
                br#"(module (memory 1) (data (i32.const 8) "guest memory image")
                    (func (export "f") (result i32) i32.const 42))"#,
            )
            .unwrap()
    }

    fn offset_of(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    }

    #[test]
    fn a_recorded_artifact_checks_and_damage_to_its_code_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("m-1.cwasm");
        let bytes = compiled();
        record(&artifact, &bytes).unwrap();
        std::fs::write(&artifact, &bytes).unwrap();
        let verdict = || check(&File::open(&artifact).unwrap(), &artifact).unwrap();
        assert_eq!(verdict(), Verdict::Sound);

        // One byte of the code section flipped, the format intact.
        let mut damaged = bytes.clone();
        let code = object::File::parse(&bytes[..])
            .unwrap()
            .section_by_name(".text")
            .unwrap()
            .file_range()
            .unwrap();
        damaged[usize::try_from(code.0).unwrap()] ^= 0xff;
        std::fs::write(&artifact, &damaged).unwrap();
        assert!(matches!(verdict(), Verdict::Unusable(why) if why.contains("mismatch")));

        // The guest's memory image is not covered.
        let mut image = bytes.clone();
        image[offset_of(&bytes, b"guest memory image")] = b'G';
        std::fs::write(&artifact, &image).unwrap();
        assert_eq!(verdict(), Verdict::Sound);

        // Without its sum, or with a damaged one, it is not trusted.
        std::fs::write(sum_path(&artifact), "rsgi-wasm sum 1\nxyz\n").unwrap();
        assert!(matches!(verdict(), Verdict::Unusable(why) if why.contains("damaged")));
        forget(&artifact);
        assert!(matches!(verdict(), Verdict::Unusable(why) if why.contains("no checksum")));
    }

    #[test]
    fn a_file_that_is_not_elf_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("m-1.cwasm");
        record(&artifact, &compiled()).unwrap();
        std::fs::write(&artifact, vec![0u8; 4096]).unwrap();
        let verdict = check(&File::open(&artifact).unwrap(), &artifact).unwrap();
        assert!(matches!(verdict, Verdict::Unusable(why) if why.contains("ELF")));
    }
}
