//! Makes the Python objects a build's heap snapshot holds immortal, so that
//! requests which only read them leave the snapshot's pages shared.
//!
//! Why: every instance maps the snapshot copy-on-write. CPython writes an
//! object's reference count each time it takes or drops a reference, so a
//! request that merely looks a function up dirties the 4 KiB page holding
//! it, and each instance of each app kept private copies of every such
//! page (0.6 MiB per hello instance). CPython 3.12+ skips the write for
//! immortal objects: on 32-bit targets, those whose count is at least
//! 2^30 (`_Py_IsImmortal` in `Include/refcount.h`).
//!
//! How: at the end of pre-initialisation the guest lists the address and
//! type address of every object reachable from `sys.modules` and its
//! exports (`list_snapshot_objects` in `guest/rsgi_wasm_guest/boot.py`).
//! Here each listed object found in the snapshot's data segments gets the
//! count CPython gives objects it immortalises itself. An entry is written
//! only if the snapshot still holds a live object of the listed type at
//! that address, with an ordinary count: a block freed between the
//! listing and the snapshot holds a free-list pointer or a zero count
//! there instead, and is left alone. Sizes never change, so the patch is
//! made in place.

use std::ops::Range;

use anyhow::{bail, Context, Result};
use wasmparser::{ConstExpr, DataKind, Operator, Parser, Payload};

/// `_Py_IMMORTAL_INITIAL_REFCNT` for 32-bit builds (`5 << 28`): below the
/// statically allocated range (`6 << 28`), which CPython treats apart.
pub const IMMORTAL_REFCNT: u32 = 5 << 28;

/// Counts at or above this are left as they are: already immortal, or a
/// pointer (free-list links point into the heap, which starts far above
/// it). An object really holding this many references stays mortal.
const MAX_MORTAL_REFCNT: u32 = 1 << 16;

/// What [`apply`] did, for the build log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Objects the guest listed.
    pub listed: usize,
    /// Of those, objects made immortal.
    pub immortal: usize,
}

/// Make the objects listed in `objects` (little-endian `u32` pairs:
/// address, type address) immortal in `component`'s data segments. An
/// error (a component this pass cannot read) leaves it unchanged.
pub fn apply(component: &mut [u8], objects: &[u8]) -> Result<Outcome> {
    let segments = segments(component)?;
    if let Some(w) = segments
        .windows(2)
        .find(|w| w[0].guest.end > w[1].guest.start)
    {
        bail!(
            "data segments overlap at {:#x}: which one holds an object is unknown",
            w[1].guest.start
        );
    }
    let mut outcome = Outcome::default();
    for pair in objects.chunks_exact(8) {
        outcome.listed += 1;
        let addr = u32::from_le_bytes(pair[..4].try_into().expect("4 bytes"));
        let ty = u32::from_le_bytes(pair[4..].try_into().expect("4 bytes"));
        let Some(at) = locate(&segments, addr) else {
            continue;
        };
        let word = |i: usize| u32::from_le_bytes(component[i..i + 4].try_into().expect("4 bytes"));
        let (refcnt, ob_type) = (word(at), word(at + 4));
        if ob_type == ty && (1..MAX_MORTAL_REFCNT).contains(&refcnt) {
            component[at..at + 4].copy_from_slice(&IMMORTAL_REFCNT.to_le_bytes());
            outcome.immortal += 1;
        }
    }
    Ok(outcome)
}

/// An active data segment of a top-level module at a constant address.
#[derive(Debug)]
struct Segment {
    /// Guest addresses it initialises.
    guest: Range<u32>,
    /// Where its bytes sit in the component.
    file: usize,
}

/// The component's active, constant-offset data segments, by address.
fn segments(component: &[u8]) -> Result<Vec<Segment>> {
    let base = component.as_ptr() as usize;
    let mut out = Vec::new();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload.context("reading the built component")? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::DataSection(reader) if depth == 1 => {
                for data in reader {
                    let data = data.context("reading a data segment")?;
                    let DataKind::Active {
                        memory_index: 0,
                        offset_expr,
                    } = data.kind
                    else {
                        continue;
                    };
                    let Some(start) = const_offset(&offset_expr) else {
                        continue;
                    };
                    let end = u32::try_from(data.data.len())
                        .ok()
                        .and_then(|len| start.checked_add(len))
                        .context("a data segment runs past 4 GiB")?;
                    out.push(Segment {
                        guest: start..end,
                        file: data.data.as_ptr() as usize - base,
                    });
                }
            }
            _ => {}
        }
    }
    out.sort_by_key(|s| s.guest.start);
    Ok(out)
}

/// `i32.const N` alone, as the snapshot's segments are written.
fn const_offset(expr: &ConstExpr) -> Option<u32> {
    let mut ops = expr.get_operators_reader();
    match (ops.read().ok()?, ops.read().ok()?) {
        (Operator::I32Const { value }, Operator::End) => Some(value as u32),
        _ => None,
    }
}

/// The component offset of the 8-byte object header at `addr`, if one
/// segment holds all of it.
fn locate(segments: &[Segment], addr: u32) -> Option<usize> {
    let i = segments
        .partition_point(|s| s.guest.start <= addr)
        .checked_sub(1)?;
    let s = &segments[i];
    let end = addr.checked_add(8)?;
    (end <= s.guest.end).then(|| s.file + (addr - s.guest.start) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        Component, ConstExpr, DataSection, MemorySection, MemoryType, Module, ModuleSection,
    };

    /// A component whose one module has a memory and one data segment of
    /// `bytes` at `offset`.
    fn component(offset: i32, bytes: &[u8]) -> Vec<u8> {
        component_with(&[(offset, bytes)])
    }

    /// A component whose one module has a memory and these active data
    /// segments (offset, bytes).
    fn component_with(segments: &[(i32, &[u8])]) -> Vec<u8> {
        let mut module = Module::new();
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        module.section(&memories);
        let mut data = DataSection::new();
        for (offset, bytes) in segments {
            data.active(0, &ConstExpr::i32_const(*offset), bytes.iter().copied());
        }
        module.section(&data);
        let mut component = Component::new();
        component.section(&ModuleSection(&module));
        component.finish()
    }

    fn pairs(list: &[(u32, u32)]) -> Vec<u8> {
        list.iter()
            .flat_map(|(a, t)| a.to_le_bytes().into_iter().chain(t.to_le_bytes()))
            .collect()
    }

    fn words(list: &[u32]) -> Vec<u8> {
        list.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn live_objects_of_the_listed_type_become_immortal_and_nothing_else() {
        // At 1000: a live object (count 3, type 0x7000); at 1008: a freed
        // block (free-list link 0x20000); at 1016: a count of 0; at 1024:
        // a live object whose type no longer matches; at 1032: already
        // immortal.
        let heap = words(&[
            3,
            0x7000,
            0x20000,
            0x7000,
            0,
            0x7000,
            2,
            0x7100,
            0x5000_0000,
            0x7000,
        ]);
        let mut c = component(1000, &heap);
        let before = c.clone();
        let listed = pairs(&[
            (1000, 0x7000),
            (1008, 0x7000),
            (1016, 0x7000),
            (1024, 0x7000),
            (1032, 0x7000),
            (1036, 0x7000),
            (4, 0x7000),
        ]);
        let outcome = apply(&mut c, &listed).unwrap();
        assert_eq!(
            outcome,
            Outcome {
                listed: 7,
                immortal: 1
            }
        );
        let at = before.windows(heap.len()).position(|w| w == heap).unwrap();
        assert_eq!(&c[at..at + 4], &IMMORTAL_REFCNT.to_le_bytes());
        assert_eq!(c[..at], before[..at]);
        assert_eq!(c[at + 4..], before[at + 4..]);
        // The result is still a valid component.
        wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&c)
            .unwrap();
    }

    #[test]
    fn overlapping_segments_are_refused_and_nothing_is_written() {
        let object = words(&[1, 9]);
        let mut c = component_with(&[(0, &object), (4, &object)]);
        let before = c.clone();
        assert!(apply(&mut c, &pairs(&[(0, 9)])).is_err());
        assert_eq!(c, before);
    }

    #[test]
    fn a_short_or_odd_list_is_taken_as_far_as_it_goes() {
        let mut c = component(0, &words(&[1, 9]));
        let mut listed = pairs(&[(0, 9)]);
        listed.extend([1, 2, 3]);
        assert_eq!(
            apply(&mut c, &listed).unwrap(),
            Outcome {
                listed: 1,
                immortal: 1
            }
        );
        assert_eq!(apply(&mut c, &[]).unwrap(), Outcome::default());
    }
}
