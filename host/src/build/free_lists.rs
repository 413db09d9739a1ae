//! Mends componentize-py 0.25.1's leak of every byte list Python passes to
//! an import, in the component it just built.
//!
//! Why: its runtime's `wit_dylib_pop_list` copies a Python `bytes`
//! argument into a fresh allocation and never frees it (it does not hand
//! the buffer to the call's deferred deallocations, as it does for every
//! other buffer). Under our own world no import takes `list<u8>`, but
//! under `wasi:http` every response chunk is one (`output-stream.write`):
//! a 200 MB download would grow the guest by 200 MB.
//!
//! How: in the core module that exports both `wit_dylib_pop_list` and
//! `wit_dylib_dealloc_bytes` (the componentize-py runtime), the export
//! `wit_dylib_pop_list` is pointed at a new function that calls the
//! original and, when it returned a buffer, registers it with
//! `wit_dylib_dealloc_bytes(cx, ptr, len, 1, defer = true)`: the runtime
//! then frees it when the call's context ends, after the import returned.
//! Only `list<u8>`/`list<s8>` come back as a buffer, so `len` is its size.
//! Every other byte of the component is kept as it was.

use anyhow::{bail, Context, Result};
use wasm_encoder::{
    CodeSection, ExportKind, ExportSection, FunctionSection, Instruction, MemArg, Module,
    RawSection,
};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

const POP_LIST: &str = "wit_dylib_pop_list";
const DEALLOC: &str = "wit_dylib_dealloc_bytes";

/// The component with the leak mended; an error if no module has the
/// runtime's exports (a componentize-py this code does not know).
pub fn mend(component: &[u8]) -> Result<Vec<u8>> {
    let mut depth = 0usize;
    let mut modules = Vec::new();
    for payload in Parser::new(0).parse_all(component) {
        match payload.context("reading the built component")? {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                if depth == 0 {
                    modules.push(unchecked_range);
                }
                depth += 1;
            }
            Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    for range in modules {
        let module = &component[range.clone()];
        let Some(fixed) = mend_module(module)? else {
            continue;
        };
        // The module section's header (id 1, LEB128 size) sits right before
        // the module's bytes; rewrite both, keep the rest.
        let header = section_header(module.len());
        let start = range
            .start
            .checked_sub(header.len())
            .filter(|&s| component[s..range.start] == header[..])
            .context("unexpected module section header in the built component")?;
        let mut out = Vec::with_capacity(component.len() + 64);
        out.extend_from_slice(&component[..start]);
        out.extend_from_slice(&section_header(fixed.len()));
        out.extend_from_slice(&fixed);
        out.extend_from_slice(&component[range.end..]);
        return Ok(out);
    }
    bail!("no componentize-py runtime module (exporting {POP_LIST} and {DEALLOC}) in the built component")
}

/// `1` (core module section) then the size as LEB128.
fn section_header(len: usize) -> Vec<u8> {
    let mut h = vec![1u8];
    crate::bundle::leb128(&mut h, len as u64);
    h
}

/// What the first pass learns about a module.
#[derive(Default)]
struct Facts {
    imported_funcs: u32,
    defined: Vec<u32>,
    pop_list: Option<u32>,
    dealloc: Option<u32>,
}

/// The runtime module with the wrapper, or `None` for any other module.
fn mend_module(module: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut facts = Facts::default();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    if matches!(import?.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        facts.imported_funcs += 1;
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for ty in reader {
                    facts.defined.push(ty?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    if export.kind == ExternalKind::Func {
                        match export.name {
                            POP_LIST => facts.pop_list = Some(export.index),
                            DEALLOC => facts.dealloc = Some(export.index),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(pop_list), Some(dealloc)) = (facts.pop_list, facts.dealloc) else {
        return Ok(None);
    };
    let Some(&pop_list_type) = pop_list
        .checked_sub(facts.imported_funcs)
        .and_then(|i| facts.defined.get(i as usize))
    else {
        bail!("{POP_LIST} is not defined in the runtime module");
    };
    let wrapper = facts.imported_funcs + facts.defined.len() as u32;

    let mut out = Module::new();
    let mut code: Option<CodeSection> = None;
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        match &payload {
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                for ty in reader.clone() {
                    functions.function(ty?);
                }
                functions.function(pop_list_type);
                out.section(&functions);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader.clone() {
                    let export = export?;
                    let (kind, index) = match export.kind {
                        ExternalKind::Func if export.name == POP_LIST => {
                            (ExportKind::Func, wrapper)
                        }
                        ExternalKind::Func | ExternalKind::FuncExact => {
                            (ExportKind::Func, export.index)
                        }
                        ExternalKind::Table => (ExportKind::Table, export.index),
                        ExternalKind::Memory => (ExportKind::Memory, export.index),
                        ExternalKind::Global => (ExportKind::Global, export.index),
                        ExternalKind::Tag => (ExportKind::Tag, export.index),
                    };
                    exports.export(export.name, kind, index);
                }
                out.section(&exports);
            }
            Payload::CodeSectionStart { .. } => code = Some(CodeSection::new()),
            Payload::CodeSectionEntry(body) => {
                code.as_mut()
                    .context("function body outside the code section")?
                    .raw(&module[body.range()]);
            }
            other => {
                // The code section ends where the next section (or the
                // module) does: the wrapper's body goes last in it.
                if let Some(mut section) = code.take() {
                    section.function(&wrapper_body(pop_list, dealloc));
                    out.section(&section);
                }
                if let Some((id, range)) = other.as_section() {
                    out.section(&RawSection {
                        id,
                        data: &module[range],
                    });
                }
            }
        }
    }
    Ok(Some(out.finish()))
}

/// `(cx, ty, ptr_out) -> len`: the original, then the returned buffer (if
/// any) handed to the call's deferred deallocations.
fn wrapper_body(pop_list: u32, dealloc: u32) -> wasm_encoder::Function {
    let (cx, ty, ptr_out, len) = (0, 1, 2, 3);
    let load = MemArg {
        offset: 0,
        align: 2,
        memory_index: 0,
    };
    let mut f = wasm_encoder::Function::new([(1, wasm_encoder::ValType::I32)]);
    for i in [
        Instruction::LocalGet(cx),
        Instruction::LocalGet(ty),
        Instruction::LocalGet(ptr_out),
        Instruction::Call(pop_list),
        Instruction::LocalSet(len),
        Instruction::LocalGet(ptr_out),
        Instruction::I32Load(load),
        Instruction::If(wasm_encoder::BlockType::Empty),
        Instruction::LocalGet(cx),
        Instruction::LocalGet(ptr_out),
        Instruction::I32Load(load),
        Instruction::LocalGet(len),
        Instruction::I32Const(1),
        Instruction::I32Const(1),
        Instruction::Call(dealloc),
        Instruction::End,
        Instruction::LocalGet(len),
        Instruction::End,
    ] {
        f.instruction(&i);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_headers_are_leb128() {
        assert_eq!(section_header(5), vec![1, 5]);
        assert_eq!(section_header(128), vec![1, 0x80, 1]);
        assert_eq!(section_header(624_485), vec![1, 0xe5, 0x8e, 0x26]);
    }

    /// A stand-in runtime: `pop_list` hands out a buffer at 4096 for type
    /// 1 (a byte list) and none for type 0; `dealloc_bytes` records its
    /// arguments.
    const RUNTIME: &str = r#"(module
        (memory 1)
        (global $ptr (export "freed_ptr") (mut i32) (i32.const -1))
        (global $len (export "freed_len") (mut i32) (i32.const -1))
        (global $defer (export "deferred") (mut i32) (i32.const -1))
        (func (export "wit_dylib_pop_list") (param i32 i32 i32) (result i32)
            (i32.store (local.get 2) (select (i32.const 4096) (i32.const 0) (local.get 1)))
            (i32.const 7))
        (func (export "wit_dylib_dealloc_bytes") (param i32 i32 i32 i32 i32)
            (global.set $ptr (local.get 1))
            (global.set $len (local.get 2))
            (global.set $defer (local.get 4))))"#;

    #[test]
    fn a_returned_byte_buffer_is_deferred_for_freeing() {
        let wasm = wat::parse_str(RUNTIME).unwrap();
        let mended = mend_module(&wasm)
            .unwrap()
            .expect("the runtime is recognised");
        wasmparser::Validator::new().validate_all(&mended).unwrap();

        let engine = wasmtime::Engine::default();
        let module = wasmtime::Module::new(&engine, &mended).unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let pop = instance
            .get_typed_func::<(i32, i32, i32), i32>(&mut store, POP_LIST)
            .unwrap();
        let global = |store: &mut wasmtime::Store<()>, name| {
            instance
                .get_global(&mut *store, name)
                .unwrap()
                .get(store)
                .unwrap_i32()
        };

        // No buffer (a list lowered element by element): nothing to free.
        assert_eq!(pop.call(&mut store, (9, 0, 64)).unwrap(), 7);
        assert_eq!(global(&mut store, "freed_ptr"), -1);
        // A byte list: its buffer goes to the call's deferred frees.
        assert_eq!(pop.call(&mut store, (9, 1, 64)).unwrap(), 7);
        assert_eq!(global(&mut store, "freed_ptr"), 4096);
        assert_eq!(global(&mut store, "freed_len"), 7);
        assert_eq!(global(&mut store, "deferred"), 1);
    }

    #[test]
    fn other_modules_are_left_alone() {
        let wasm = wat::parse_str("(module (func (export \"f\")))").unwrap();
        assert!(mend_module(&wasm).unwrap().is_none());
    }

    #[test]
    fn a_component_without_the_runtime_is_refused() {
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::ModuleSection(&Module::new()));
        let err = mend(&component.finish()).unwrap_err();
        assert!(format!("{err:#}").contains("no componentize-py runtime module"));
    }
}
