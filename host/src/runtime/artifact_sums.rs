//! Checksums of compiled artifacts. wasmtime maps a cached artifact's
//! machine code and runs it as it is, after checking only its format, so
//! bytes damaged inside one (a bad disk block, a stray write, a restore
//! gone wrong) would crash the whole server, every tenant with it. Each
//! artifact's code and metadata are hashed when it is compiled, into a
//! `.sum` file beside it, and checked when a process first loads it.
//!
//! Left out are the sections whose damage cannot reach the host
//! ([`UNCHECKED`]): the guest's memory images (data segments and an app's
//! heap snapshot, most of a snapshot module's bytes: damage there stays in
//! that app's sandbox, and hashing 14-32 MB would add tens of milliseconds
//! to every cold app's first request), the map from machine code to wasm
//! offsets (read with bounds checks, for backtraces only: 10 of
//! libpython's 28 MB), and the ELF symbols wasmtime ignores.
//!
//! The memory images have a sum of their own, with the identity of the
//! file they were last checked in (device, inode, size, times: a write in
//! place changes its ctime, which nobody can set back, and a copy or a
//! restore is another inode). They are checked again only when that
//! identity changed: a damaged image would otherwise crash or hang that
//! app's every instance, in every process, until someone removed the file
//! by hand. A pass records the new identity, so later loads skip them.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use object::{Object, ObjectSection};

use crate::cachefs;
use crate::digests::Identity;
use crate::runtime::file_map::FileMap;

/// The first line of a `.sum` file: its format (which sections it covers).
const HEADER: &str = "rsgi-wasm sum 4";

/// The format before the memory images had a sum: still trusted for the
/// code it covers, so an upgrade compiles nothing again.
const HEADER_CODE_ONLY: &str = "rsgi-wasm sum 3";

/// The section holding the guest's memory images (`obj::ELF_WASM_DATA`).
const IMAGES: &str = ".rodata.wasm";

/// The sections the sum leaves out: wasmtime's names for the guest's
/// memory images (`obj::ELF_WASM_DATA`) and the address map
/// (`obj::ELF_WASMTIME_ADDRMAP`, read by `lookup_file_pos`), and the
/// symbol tables `CodeMemory::new` skips.
const UNCHECKED: [&str; 4] = [".rodata.wasm", ".wasmtime.addrmap", ".symtab", ".strtab"];

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
    let name = name_of(artifact);
    let sums = of_bytes(&name, compiled, Part::Code)
        .zip(of_bytes(&name, compiled, Part::Images))
        .with_context(|| {
            format!(
                "reading what was compiled for {} (wasmtime's output is not ELF)",
                artifact.display()
            )
        })?;
    write(artifact, &sums, None)
}

/// Record, once `artifact` is in place, the identity its images were
/// checked in (they were just written from the bytes summed).
pub fn record_again(artifact: &Path) -> Result<()> {
    let path = sum_path(artifact);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let Some((code, Some(images), _)) = parse(&text) else {
        anyhow::bail!("{} was just written, and does not parse", path.display());
    };
    let identity = Identity::of_path(artifact)
        .with_context(|| format!("reading the status of {}", artifact.display()))?;
    let sums = (code.to_owned(), images.to_owned());
    write(artifact, &sums, Some(&identity))
}

fn write(
    artifact: &Path,
    (code, images): &(String, String),
    identity: Option<&Identity>,
) -> Result<()> {
    let seen = identity.map_or_else(String::new, |i| format!("{i}\n"));
    cachefs::write_atomic(
        &sum_path(artifact),
        format!("{HEADER}\n{code}\n{images}\n{seen}").as_bytes(),
    )
    .with_context(|| format!("caching the checksum of {}", artifact.display()))
}

/// Check the artifact open as `file` (at `artifact`) against its sum.
/// An error is one reading it (the caller tells passing shortages from
/// damage); a damaged or unsummed artifact is a verdict.
pub fn check(file: &File, artifact: &Path) -> Result<Verdict> {
    // Bounded, and only a regular file: a FIFO or a huge stray file
    // there must not hang the load or fill memory (probe round CZ).
    let recorded = match crate::config::read_small_file(&sum_path(artifact)) {
        Ok(bytes) => String::from_utf8(bytes).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Verdict::Unusable(
                "it has no checksum (compiled by an older rsgi-wasm, or its .sum file was removed)"
                    .into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::Other => {
            return Ok(Verdict::Unusable(format!("its .sum file is {e}")));
        }
        Err(e) => return Err(e).context("reading its checksum"),
    };
    let Some((code, images, seen)) = parse(&recorded) else {
        return Ok(Verdict::Unusable(
            "its .sum file is damaged or of another format".into(),
        ));
    };
    let name = name_of(artifact);
    // SAFETY: a compiled artifact of our cache (see `FileMap::new`).
    let Some(map) = unsafe { FileMap::new(file) }.context("mapping it")? else {
        return Ok(Verdict::Unusable("it is not a readable ELF file".into()));
    };
    let Some(actual) = of_mapped(&name, file, &map, Part::Code) else {
        return Ok(Verdict::Unusable("it is not a readable ELF file".into()));
    };
    if actual != code {
        return Ok(Verdict::Unusable(
            "its bytes differ from what was compiled (checksum mismatch)".into(),
        ));
    }
    let Some(images) = images else {
        return Ok(Verdict::Sound);
    };
    let identity = Identity::of(&file.metadata().context("reading its status")?);
    if seen == Some(identity.to_string().as_str()) {
        return Ok(Verdict::Sound);
    }
    if of_mapped(&name, file, &map, Part::Images).as_deref() != Some(images) {
        return Ok(Verdict::Unusable(
            "its guest memory image differs from what was compiled (checksum mismatch)".into(),
        ));
    }
    // Checked in this file as it is now: the next load skips the images.
    // Not being able to say so is no reason to refuse a sound artifact.
    let sums = (code.to_owned(), images.to_owned());
    if let Err(e) = write(artifact, &sums, Some(&identity)) {
        tracing::debug!("{e:#}");
    }
    Ok(Verdict::Sound)
}

/// Remove the sum of an artifact being removed.
pub fn forget(artifact: &Path) {
    let _ = std::fs::remove_file(sum_path(artifact));
}

/// The code's sum and, in the current format, the memory images' and the
/// identity of the file they were last checked in (if they were).
fn parse(text: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
    let is_sum = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut lines = text.lines();
    let header = lines.next()?;
    let code = lines.next().filter(|s| is_sum(s))?;
    let (images, seen) = match header {
        HEADER => (Some(lines.next().filter(|s| is_sum(s))?), lines.next()),
        HEADER_CODE_ONLY => (None, None),
        _ => return None,
    };
    lines.next().is_none().then_some((code, images, seen))
}

/// What part of an artifact a sum covers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Everything but [`UNCHECKED`].
    Code,
    /// The guest's memory images ([`IMAGES`]).
    Images,
}

/// The byte ranges of the ELF file `data` the sum of `part` covers, in
/// order; none if it is not ELF.
fn covered(data: &[u8], part: Part) -> Option<Vec<std::ops::Range<usize>>> {
    let file = object::File::parse(data).ok()?;
    let mut skipped = Vec::new();
    let mut images = Vec::new();
    for section in file.sections() {
        let name = section.name().ok()?;
        if UNCHECKED.contains(&name) {
            if let Some((start, len)) = section.file_range() {
                let start = usize::try_from(start).ok()?;
                let range = start..start.checked_add(usize::try_from(len).ok()?)?;
                if name == IMAGES {
                    images.push(range.clone());
                }
                skipped.push(range);
            }
        }
    }
    if part == Part::Images {
        return Some(images);
    }
    skipped.sort_by_key(|r| r.start);
    let mut covered = Vec::new();
    let mut at = 0;
    for r in skipped {
        if r.start > at {
            covered.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < data.len() {
        covered.push(at..data.len());
    }
    Some(covered)
}

/// The artifact's file name, which says what it was compiled from (the
/// hash of its input and the engine): it is part of the sum, so an
/// artifact copied or renamed over another's, with its sum, does not pass.
fn name_of(artifact: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    artifact
        .file_name()
        .map_or_else(Vec::new, |n| n.as_bytes().to_vec())
}

fn of_bytes(name: &[u8], data: &[u8], part: Part) -> Option<String> {
    sum_of(name, data, &covered(data, part)?)
}

/// The sum of `part` of the artifact open as `file` and mapped as `map`,
/// its ranges asked for first, in large reads and nothing around them.
fn of_mapped(name: &[u8], file: &File, map: &FileMap, part: Part) -> Option<String> {
    let ranges = covered(map.bytes(), part)?;
    FileMap::prefetch(file, &ranges);
    sum_of(name, map.bytes(), &ranges)
}

fn sum_of(name: &[u8], data: &[u8], ranges: &[std::ops::Range<usize>]) -> Option<String> {
    // ring's SHA-256 (already here for TLS) takes the CPU's SHA
    // instructions at about 1.8 GB/s, over twice the sha2 crate's speed
    // here: CPython's 18 MB checked in about 10 ms.
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(name);
    h.update(b"\0");
    for range in ranges {
        h.update(data.get(range.clone())?);
    }
    Some(
        h.finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
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

        // The guest's memory image is left out of the code's sum, and
        // checked in each file it was not checked in yet: then the
        // identity it was checked in is recorded.
        assert!(covered(&bytes, Part::Code).unwrap().len() > 1);
        let seen = || {
            let text = std::fs::read_to_string(sum_path(&artifact)).unwrap();
            parse(&text).unwrap().2.map(str::to_owned)
        };
        std::fs::write(&artifact, &bytes).unwrap();
        assert_eq!(verdict(), Verdict::Sound);
        assert_eq!(
            seen(),
            Some(Identity::of_path(&artifact).unwrap().to_string())
        );
        let pause = || std::thread::sleep(std::time::Duration::from_millis(20));
        let mut image = bytes.clone();
        image[offset_of(&bytes, b"guest memory image")] = b'G';
        pause();
        std::fs::write(&artifact, &image).unwrap();
        assert!(matches!(verdict(), Verdict::Unusable(why) if why.contains("memory image")));
        // Its sum written again as it was does not hide the damage.
        let text = std::fs::read(sum_path(&artifact)).unwrap();
        std::fs::write(sum_path(&artifact), &text).unwrap();
        assert!(matches!(verdict(), Verdict::Unusable(why) if why.contains("memory image")));
        // Nor does a copy made after the damage, with its sum.
        let copy = dir.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        std::fs::copy(&artifact, copy.join("m-1.cwasm")).unwrap();
        std::fs::copy(sum_path(&artifact), copy.join("m-1.sum")).unwrap();
        let copied = copy.join("m-1.cwasm");
        let verdict_of_copy = check(&File::open(&copied).unwrap(), &copied).unwrap();
        assert!(matches!(verdict_of_copy, Verdict::Unusable(why) if why.contains("memory image")));

        // Put back as compiled: sound, and the new identity recorded.
        pause();
        std::fs::write(&artifact, &bytes).unwrap();
        assert_eq!(verdict(), Verdict::Sound);
        assert_eq!(
            seen(),
            Some(Identity::of_path(&artifact).unwrap().to_string())
        );

        // A sum of the older format covers the code only.
        let code = of_bytes(&name_of(&artifact), &bytes, Part::Code).unwrap();
        std::fs::write(sum_path(&artifact), format!("{HEADER_CODE_ONLY}\n{code}\n")).unwrap();
        pause();
        std::fs::write(&artifact, &image).unwrap();
        assert_eq!(verdict(), Verdict::Sound);
        record(&artifact, &bytes).unwrap();
        std::fs::write(&artifact, &bytes).unwrap();

        // Copied, with its sum, over another artifact's name.
        let other = dir.path().join("m-2.cwasm");
        std::fs::write(&other, &bytes).unwrap();
        std::fs::copy(sum_path(&artifact), sum_path(&other)).unwrap();
        let copied = check(&File::open(&other).unwrap(), &other).unwrap();
        assert!(matches!(copied, Verdict::Unusable(why) if why.contains("mismatch")));

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
