//! Splits a component's core modules out of it, so the modules every app
//! ships alike (CPython, libc, the componentize-py runtime, the WASI
//! adapter) are compiled, cached and mapped once for all of them.
//!
//! How: each top-level core module section is replaced by a core module
//! type (the module's own imports and exports) and a component import of
//! that type, named after the module's position. Module indices do not
//! move (an imported module takes the index the defined one had), and the
//! componentize-py output this runs on defines no core types of its own,
//! so the new types are numbered from zero. The host compiles each module
//! once as a `wasmtime::Module`, keyed by its hash, and links it under that
//! name. The user's `app.wasm` is never changed: this is how the host
//! loads it, not a format anyone ships.
//!
//! What is left, the component's shell, is then the same for every app
//! built against the same libraries: names by position, not hash, and the
//! one type that follows the app's heap (the snapshot module's memory,
//! whose minimum is the heap's size) declared at the least the other
//! modules ask of it. So the host compiles, stores and keeps one shell for
//! all of them.
//!
//! The modules the fusion wrote (`fuse`: the libraries fused into one, and
//! the stubs standing in for them) are left in the shell instead: they
//! depend only on the libraries, so the shell still does not follow the
//! app, and a defined module's imports and exports are resolved by index
//! when the component is compiled. An imported one's are looked up by
//! name, each import and each export used, at every instantiation (a fifth
//! of a fresh hello instance's CPU was that lookup).

use std::collections::HashSet;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    ComponentImportSection, ComponentSection, ComponentTypeRef, CoreTypeSection, EntityType,
    ModuleType,
};
use wasmparser::{
    ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind, ExternalKind, Instance, Parser,
    Payload, TypeRef,
};

/// Component section ids (the component model's binary format).
const CUSTOM: u8 = 0;
const CORE_MODULE: u8 = 1;
const CORE_INSTANCE: u8 = 2;
const CORE_TYPE: u8 = 3;
const COMPONENT: u8 = 4;
const ALIAS: u8 = 6;
const IMPORT: u8 = 10;

/// What the host imports a split-out module as: this prefix, then its
/// position among the component's modules.
const IMPORT_PREFIX: &str = "rsgi-core-m";

/// The custom section rsgi-wasm appends the app's files in: the compiled
/// component does not need it (the files are read from the original).
const FILES_SECTION: &str = "rsgi-wasm-files";

/// A component with its core modules replaced by imports.
pub struct Split {
    /// The rewritten component.
    pub component: Vec<u8>,
    /// Each module taken out: its hash (which its import name carries)
    /// and where its bytes are in the original component.
    pub modules: Vec<SplitModule>,
}

/// One core module taken out of a component.
pub struct SplitModule {
    /// SHA-256 of the module's bytes, in hex.
    pub hash: String,
    /// The module's bytes in the original component.
    pub range: Range<usize>,
}

/// The name the split component imports its `index`th module by.
pub fn import_name(index: usize) -> String {
    format!("{IMPORT_PREFIX}{index}")
}

/// Whether `name` is the import of a split-out module.
pub fn is_module_import(name: &str) -> bool {
    name.strip_prefix(IMPORT_PREFIX)
        .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// The names `component` exports at its top level, such as
/// `wasi:http/incoming-handler@0.2.0`: its world, read without compiling.
pub fn top_level_exports(component: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    // Every nested module or component opens with its own version header
    // and closes with its own end.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload.context("not a valid WebAssembly component")? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    names.push(export?.name.0.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(names)
}

/// The top-level sections of a component or module after its 8-byte
/// header: id and content range. Only the section headers are read; the
/// contents are skipped, so a large file is not read whole. The skips stay
/// inside the reader's buffer where they can: a component has thousands of
/// small sections, and `serve` reads the headers of every listed one at
/// start (with a seek per section that was a read and a seek system call
/// each, 0.5 ms per tenant).
pub fn sections<R: Read + Seek>(r: &mut BufReader<R>) -> Result<Vec<(u8, Range<u64>)>> {
    let len = r.seek(SeekFrom::End(0))?;
    let mut at = r.seek(SeekFrom::Start(8))?;
    let mut out = Vec::new();
    while at < len {
        let mut id = [0u8; 1];
        r.read_exact(&mut id)?;
        let (size, header) = read_u32_leb(r).context("malformed section header")?;
        let start = at + 1 + header;
        let end = start
            .checked_add(u64::from(size))
            .filter(|&e| e <= len)
            .context("a section runs past the end of the file")?;
        out.push((id[0], start..end));
        r.seek_relative(i64::from(size))?;
        at = end;
    }
    Ok(out)
}

/// A LEB128 `u32` and how many bytes it took.
fn read_u32_leb(r: &mut impl Read) -> Result<(u32, u64)> {
    let mut value: u64 = 0;
    for (n, shift) in (0..35).step_by(7).enumerate() {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).context("truncated section header")?;
        value |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            let value = u32::try_from(value).context("section size out of range")?;
            return Ok((value, n as u64 + 1));
        }
    }
    bail!("section size is not a LEB128 number")
}

/// `component` with every top-level core module replaced by an import of
/// it, but those at the positions in `keep`, which stay defined in the
/// shell; none if there is nothing to split or the component has a shape
/// this does not handle (its own core types), which then loads whole.
/// Imports are named by rank among the imported modules.
pub fn split(component: &[u8], keep: &[usize]) -> Result<Option<Split>> {
    if component.len() < 8 || &component[..4] != b"\0asm" {
        bail!("not a WebAssembly binary");
    }
    let sections = sections(&mut BufReader::new(std::io::Cursor::new(component)))?;
    if sections.iter().any(|(id, _)| *id == CORE_TYPE)
        || !sections.iter().any(|(id, _)| *id == CORE_MODULE)
    {
        return Ok(None);
    }
    // Declaring only the exports in use, and the memory at the least its
    // importers ask, must leave a valid component; if it ever does not (a
    // shape `used_exports` misreads), declare every module as it is.
    if let Some(used) = used_exports(component, &sections)? {
        let floor = memory_floor(component, &sections)?;
        let trimmed = rewrite(component, &sections, Some(&used), Some(floor), keep)?;
        if wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
            .validate_all(&trimmed.component)
            .is_ok()
        {
            return Ok(Some(trimmed));
        }
        tracing::debug!(
            "declaring every export of the split modules: the trimmed types do not validate"
        );
    }
    rewrite(component, &sections, None, None, keep).map(Some)
}

/// The largest minimum size any core module's memory import asks for.
fn memory_floor(component: &[u8], sections: &[(u8, Range<u64>)]) -> Result<u64> {
    let mut floor = 0;
    for (id, range) in sections {
        if *id != CORE_MODULE {
            continue;
        }
        let bytes = &component[range.start as usize..range.end as usize];
        for payload in Parser::new(0).parse_all(bytes) {
            if let Payload::ImportSection(r) = payload? {
                for import in r.into_imports() {
                    if let TypeRef::Memory(m) = import?.ty {
                        floor = floor.max(m.initial);
                    }
                }
            }
        }
    }
    Ok(floor)
}

/// `component` with each core module replaced by an import of it, whose
/// type declares the exports in `used` (all if none), and exported
/// memories no larger than `memory_floor` (as they are if none).
fn rewrite(
    component: &[u8],
    sections: &[(u8, Range<u64>)],
    used: Option<&[HashSet<String>]>,
    memory_floor: Option<u64>,
    keep: &[usize],
) -> Result<Split> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(&component[..8]);
    let mut modules: Vec<SplitModule> = Vec::new();
    let mut types = 0u32;
    let mut position = 0;
    for (id, range) in sections {
        let range = range.start as usize..range.end as usize;
        let bytes = &component[range.clone()];
        // A core module's position among the component's modules.
        let module = (*id == CORE_MODULE).then(|| {
            position += 1;
            position - 1
        });
        match (*id, module) {
            // Kept modules go through as they are, as other sections do.
            (CORE_MODULE, Some(index)) if !keep.contains(&index) => {
                let hash = format!("{:x}", Sha256::digest(bytes));
                let name = import_name(modules.len());
                let exports = used.map(|u| &u[index]);
                let ty = module_type(bytes, exports, memory_floor)
                    .with_context(|| format!("reading core module {index}"))?;
                let mut core_types = CoreTypeSection::new();
                core_types.ty().module(&ty);
                write_section(&mut out, &core_types);
                let mut import = ComponentImportSection::new();
                import.import(&name, ComponentTypeRef::Module(types));
                write_section(&mut out, &import);
                types += 1;
                modules.push(SplitModule { hash, range });
            }
            (CUSTOM, _) if custom_name(bytes) == Some(FILES_SECTION) => {}
            _ => {
                out.push(*id);
                crate::bundle::leb128(&mut out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
        }
    }
    Ok(Split {
        component: out,
        modules,
    })
}

/// For each core module (by index), the exports the component uses: those
/// it aliases from an instance of the module, and those another module
/// imports from such an instance passed to it whole. None where this cannot
/// tell (a nested component, or a core instance or module from elsewhere),
/// and then every export is declared.
fn used_exports(
    component: &[u8],
    sections: &[(u8, Range<u64>)],
) -> Result<Option<Vec<HashSet<String>>>> {
    // Each module's imports, by the module name they are imported from.
    let mut imports: Vec<Vec<(String, String)>> = Vec::new();
    // Each core instance's module, if it instantiates one.
    let mut instances: Vec<Option<usize>> = Vec::new();
    let mut used: Vec<HashSet<String>> = Vec::new();
    for (id, range) in sections {
        let bytes = &component[range.start as usize..range.end as usize];
        let reader = || wasmparser::BinaryReader::new(bytes, 0);
        match *id {
            // A nested component reaches our modules only by an outer
            // alias, and never our core instances.
            COMPONENT if aliases_outer_modules(bytes)? => return Ok(None),
            IMPORT => {
                for import in wasmparser::ComponentImportSectionReader::new(reader())? {
                    if matches!(import?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                        return Ok(None);
                    }
                }
            }
            CORE_MODULE => {
                let mut names = Vec::new();
                for payload in Parser::new(0).parse_all(bytes) {
                    if let Payload::ImportSection(r) = payload? {
                        for import in r.into_imports() {
                            let import = import?;
                            names.push((import.module.to_owned(), import.name.to_owned()));
                        }
                    }
                }
                imports.push(names);
                used.push(HashSet::new());
            }
            CORE_INSTANCE => {
                for instance in wasmparser::InstanceSectionReader::new(reader())? {
                    match instance? {
                        Instance::Instantiate { module_index, args } => {
                            let module = module_index as usize;
                            let Some(wanted) = imports.get(module) else {
                                return Ok(None);
                            };
                            for arg in args.iter() {
                                let Some(Some(from)) = instances.get(arg.index as usize) else {
                                    continue;
                                };
                                let names = wanted.iter().filter(|(m, _)| m == arg.name);
                                used[*from].extend(names.map(|(_, n)| n.clone()));
                            }
                            instances.push(Some(module));
                        }
                        Instance::FromExports(_) => instances.push(None),
                    }
                }
            }
            ALIAS => {
                for alias in wasmparser::ComponentAliasSectionReader::new(reader())? {
                    match alias? {
                        ComponentAlias::CoreInstanceExport {
                            instance_index,
                            name,
                            ..
                        } => match instances.get(instance_index as usize) {
                            Some(Some(m)) => {
                                used[*m].insert(name.to_owned());
                            }
                            Some(None) => {}
                            None => return Ok(None),
                        },
                        // A module or core instance from elsewhere.
                        ComponentAlias::Outer {
                            kind: ComponentOuterAliasKind::CoreModule,
                            ..
                        } => return Ok(None),
                        ComponentAlias::InstanceExport {
                            kind: ComponentExternalKind::Module,
                            ..
                        } => return Ok(None),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(used))
}

/// Whether a nested component (its section's bytes) aliases a core module
/// of an enclosing component, at any depth.
pub(crate) fn aliases_outer_modules(component: &[u8]) -> Result<bool> {
    for payload in Parser::new(0).parse_all(component) {
        if let Payload::ComponentAliasSection(reader) = payload? {
            for alias in reader {
                if let ComponentAlias::Outer {
                    kind: ComponentOuterAliasKind::CoreModule,
                    ..
                } = alias?
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn write_section(out: &mut Vec<u8>, section: &impl ComponentSection) {
    out.push(section.id());
    section.encode(out);
}

fn custom_name(bytes: &[u8]) -> Option<&str> {
    wasmparser::BinaryReader::new(bytes, 0).read_string().ok()
}

/// The type of `module`: its type section as it is (so the type indices
/// of its imports and exports stay valid), its imports, and its exports,
/// only those in `keep` if given. Every import must stay (the module
/// linked in must not need more than the type promises it is given), but
/// an export nothing uses need not be declared, and each declared one costs
/// every app that ships the module memory and load time in the host
/// (wasmtime keeps each name of an imported module's type). An exported
/// memory is declared with a minimum of at most `memory_floor`: any
/// larger memory is still of that type.
fn module_type(
    module: &[u8],
    keep: Option<&HashSet<String>>,
    memory_floor: Option<u64>,
) -> Result<ModuleType> {
    let mut re = RoundtripReencoder;
    let mut ty = ModuleType::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    re.parse_recursive_type_group(ty.ty(), group?)?;
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    ty.import(import.module, import.name, re.entity_type(import.ty)?);
                }
            }
            _ => {}
        }
    }
    for (name, mut entity) in exported_entities(module)? {
        if keep.is_some_and(|k| !k.contains(&name)) {
            continue;
        }
        if let (EntityType::Memory(memory), Some(floor)) = (&mut entity, memory_floor) {
            memory.minimum = memory.minimum.min(floor);
        }
        ty.export(&name, entity);
    }
    Ok(ty)
}

/// Each export of `module` with its type (a function's as an index into
/// the module's own types).
pub(crate) fn exported_entities(module: &[u8]) -> Result<Vec<(String, EntityType)>> {
    let mut re = RoundtripReencoder;
    // The type of every function, table, memory, global and tag, by index
    // (imports first, as in the module's index spaces).
    let (mut funcs, mut tables, mut memories, mut globals, mut tags) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import?.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => funcs.push(t),
                        TypeRef::Table(t) => tables.push(re.table_type(t)?),
                        TypeRef::Memory(m) => memories.push(re.memory_type(m)?),
                        TypeRef::Global(g) => globals.push(re.global_type(g)?),
                        TypeRef::Tag(t) => tags.push(re.tag_type(t)?),
                    }
                }
            }
            Payload::FunctionSection(r) => funcs.extend(each(r, Ok::<_, anyhow::Error>)?),
            Payload::TableSection(r) => tables.extend(each(r, |t| re.table_type(t.ty))?),
            Payload::MemorySection(r) => memories.extend(each(r, |m| re.memory_type(m))?),
            Payload::GlobalSection(r) => globals.extend(each(r, |g| re.global_type(g.ty))?),
            Payload::TagSection(r) => tags.extend(each(r, |t| re.tag_type(t))?),
            Payload::ExportSection(r) => exports.extend(each(r, |e| {
                Ok::<_, anyhow::Error>((e.name.to_owned(), e.kind, e.index as usize))
            })?),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (name, kind, i) in exports {
        let missing = || format!("export {name} names a missing item");
        let entity = match kind {
            ExternalKind::Func | ExternalKind::FuncExact => {
                EntityType::Function(*funcs.get(i).with_context(missing)?)
            }
            ExternalKind::Table => EntityType::Table(*tables.get(i).with_context(missing)?),
            ExternalKind::Memory => EntityType::Memory(*memories.get(i).with_context(missing)?),
            ExternalKind::Global => EntityType::Global(*globals.get(i).with_context(missing)?),
            ExternalKind::Tag => EntityType::Tag(*tags.get(i).with_context(missing)?),
        };
        out.push((name, entity));
    }
    Ok(out)
}

/// Every item of a section, each through `f`.
fn each<'a, T, U, E>(
    reader: wasmparser::SectionLimited<'a, T>,
    f: impl FnMut(T) -> Result<U, E>,
) -> Result<Vec<U>>
where
    T: wasmparser::FromReader<'a>,
    E: Into<anyhow::Error>,
{
    let mut f = f;
    let mut out = Vec::new();
    for item in reader {
        out.push(f(item?).map_err(Into::into)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library module: a memory, a global, a table and a function.
    const LIB: &str = r#"(core module
        (memory (export "memory") 1)
        (global (export "base") i32 (i32.const 0))
        (table (export "table") 2 funcref)
        (func (export "add") (param i32 i32) (result i32)
            local.get 0 local.get 1 i32.add))"#;

    /// A component of three core modules (the third a copy of the first),
    /// the second instantiated with the first's exports.
    fn component() -> Vec<u8> {
        component_with_heap(1)
    }

    /// `component()` with the first library's memory `pages` large.
    fn component_with_heap(pages: u32) -> Vec<u8> {
        let lib = LIB.replace(
            "(export \"memory\") 1",
            &format!("(export \"memory\") {pages}"),
        );
        wat::parse_str(format!(
            r#"(component
                {lib}
                (core module
                    (import "lib" "add" (func $add (param i32 i32) (result i32)))
                    (import "lib" "memory" (memory 1))
                    (func (export "run") (result i32)
                        i32.const 2 i32.const 3 call $add))
                {LIB}
                (core instance $l (instantiate 0))
                (core instance $a (instantiate 1 (with "lib" (instance $l))))
                (func (export "run") (result s32)
                    (canon lift (core func $a "run")))
            )"#
        ))
        .unwrap()
    }

    fn import_names(component: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        for (id, range) in sections(&mut BufReader::new(std::io::Cursor::new(component))).unwrap() {
            if id == 10 {
                let range = range.start as usize..range.end as usize;
                let reader = wasmparser::ComponentImportSectionReader::new(
                    wasmparser::BinaryReader::new(&component[range], 0),
                )
                .unwrap();
                for import in reader {
                    names.push(import.unwrap().name.0.to_owned());
                }
            }
        }
        names.retain(|n| n.starts_with(IMPORT_PREFIX));
        names
    }

    #[test]
    fn apps_whose_heaps_differ_in_size_share_one_shell() {
        let small = split(&component_with_heap(1), &[]).unwrap().unwrap();
        let large = split(&component_with_heap(3), &[]).unwrap().unwrap();
        assert_ne!(small.modules[0].hash, large.modules[0].hash);
        assert_eq!(small.component, large.component);
        // The larger memory links into the shared shell and runs.
        let original = component_with_heap(3);
        assert_eq!(run_split(&original, &small.component, &large), 5);
    }

    /// Instantiate `shell` with the modules of `split` (of `original`) and
    /// call its `run`.
    fn run_split(original: &[u8], shell: &[u8], split: &Split) -> i32 {
        use wasmtime::component::{Component, Linker};
        use wasmtime::{Engine, Module, Store};
        let engine = Engine::default();
        let component = Component::new(&engine, shell).unwrap();
        let mut linker: Linker<()> = Linker::new(&engine);
        for (i, m) in split.modules.iter().enumerate() {
            let module = Module::new(&engine, &original[m.range.clone()]).unwrap();
            linker.root().module(&import_name(i), &module).unwrap();
        }
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let run = instance
            .get_typed_func::<(), (i32,)>(&mut store, "run")
            .unwrap();
        run.call(&mut store, ()).unwrap().0
    }

    #[test]
    fn modules_become_imports_and_the_component_still_validates() {
        let original = component();
        let split = split(&original, &[]).unwrap().unwrap();
        assert_eq!(split.modules.len(), 3);
        // Identical modules share a hash; imports are named by position.
        assert_eq!(split.modules[0].hash, split.modules[2].hash);
        let names = import_names(&split.component);
        assert_eq!(names, [import_name(0), import_name(1), import_name(2)]);
        assert!(names.iter().all(|n| is_module_import(n)));
        assert!(!is_module_import("rsgi-core-m") && !is_module_import("wasi:cli/run@0.2.0"));
        for m in &split.modules {
            wasmparser::Validator::new()
                .validate_all(&original[m.range.clone()])
                .unwrap();
        }
        wasmparser::Validator::new()
            .validate_all(&split.component)
            .unwrap();
    }

    /// The number of exports each module type in `component` declares.
    fn declared_exports(component: &[u8]) -> Vec<usize> {
        let mut counts = Vec::new();
        for (id, range) in sections(&mut BufReader::new(std::io::Cursor::new(component))).unwrap() {
            if id != CORE_TYPE {
                continue;
            }
            let bytes = &component[range.start as usize..range.end as usize];
            let reader =
                wasmparser::CoreTypeSectionReader::new(wasmparser::BinaryReader::new(bytes, 0))
                    .unwrap();
            for ty in reader {
                if let wasmparser::CoreType::Module(decls) = ty.unwrap() {
                    let exports = decls
                        .iter()
                        .filter(|d| matches!(d, wasmparser::ModuleTypeDeclaration::Export { .. }));
                    counts.push(exports.count());
                }
            }
        }
        counts
    }

    #[test]
    fn modules_kept_stay_in_the_shell_and_the_others_are_imported_by_rank() {
        let original = component();
        let split = split(&original, &[1]).unwrap().unwrap();
        assert_eq!(split.modules.len(), 2);
        assert_eq!(split.modules[0].hash, split.modules[1].hash);
        assert_eq!(
            import_names(&split.component),
            [import_name(0), import_name(1)]
        );
        // The kept module's bytes are in the shell as they were.
        let kept = &component_modules(&original)[1];
        assert!(split.component.windows(kept.len()).any(|w| w == &kept[..]));
        assert_eq!(run_split(&original, &split.component, &split), 5);
    }

    /// The bytes of each top-level core module of `component`.
    fn component_modules(component: &[u8]) -> Vec<Vec<u8>> {
        let mut r = BufReader::new(std::io::Cursor::new(component));
        sections(&mut r)
            .unwrap()
            .into_iter()
            .filter(|(id, _)| *id == CORE_MODULE)
            .map(|(_, range)| component[range.start as usize..range.end as usize].to_vec())
            .collect()
    }

    #[test]
    fn only_the_exports_the_component_uses_are_declared() {
        let split = split(&component(), &[]).unwrap().unwrap();
        // The first library: `add` and `memory`, which the second module
        // imports from its instance; the second: `run`, which is lifted;
        // the copy, never instantiated: nothing.
        assert_eq!(declared_exports(&split.component), [2, 1, 0]);
    }

    #[test]
    fn the_split_component_runs_with_its_modules_linked_in() {
        let original = component();
        let split = split(&original, &[]).unwrap().unwrap();
        assert_eq!(run_split(&original, &split.component, &split), 5);
    }

    #[test]
    fn what_it_does_not_handle_loads_whole() {
        let core_types = wat::parse_str(
            r#"(component
                (core type (module))
                (core module))"#,
        )
        .unwrap();
        assert!(split(&core_types, &[]).unwrap().is_none());
        let no_modules = wat::parse_str("(component)").unwrap();
        assert!(split(&no_modules, &[]).unwrap().is_none());
        let mut cut = BufReader::new(std::io::Cursor::new(b"\0asm\x0d\0\x01\0\x07\xff"));
        assert!(sections(&mut cut).is_err());
        let mut past_end = BufReader::new(std::io::Cursor::new(b"\0asm\x0d\0\x01\0\x07\x05ab"));
        assert!(sections(&mut past_end).is_err());
    }
}
