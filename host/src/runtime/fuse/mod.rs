//! Fuses the libraries that share a component's function table (libc,
//! libpython, the componentize-py runtime, ...) into one core module that
//! defines the table, so wasmtime fills it lazily instead of resolving
//! every slot at each instantiation.
//!
//! componentize-py links CPython as shared libraries: a main module
//! defines the memory and the function table, and each library imports
//! the table and places its functions at an offset it imports too
//! (`__table_base`). wasmtime can only precompute a table's contents, and
//! fill its slots as they are first called, for a table the module
//! defines and segments at constant offsets; so every instantiation of
//! such a component resolved ~5,700 slots (80% of a fresh instance). The
//! fused module defines the table, reads the offsets from the main
//! module's constant globals, and links the libraries' calls to each other
//! directly.
//!
//! The component's index spaces stay as they are: the fused module takes
//! the first library's place and exports its names as they were, and each
//! other library is replaced by a small module that imports what the fused
//! one exports for it and re-exports it under its old names. Only module
//! bytes and instantiation arguments change. The main module's own
//! functions that call through its table (forwarders to libraries
//! instantiated after it) keep working: the fused module writes those
//! slots, and only those, into the main module's table.
//!
//! Any shape this does not recognise (a library with a start function or
//! a memory of its own, a table used by another module, an offset that is
//! not constant, ...) leaves the component as it is: fusing is an
//! optimisation, never needed to run.

mod encode;
mod graph;
mod link;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;

use anyhow::{bail, Context, Result};
use wasm_encoder::{ExportKind, InstanceSection, ModuleArg};
use wasmparser::Instance;

use crate::runtime::core_modules;
use encode::*;
use graph::*;

/// Component section ids (the component model's binary format).
const CORE_MODULE: u8 = 1;
const CORE_INSTANCE: u8 = 2;

/// What a stub imports the fused module as.
const FUSED: &str = "fused";

/// The set of libraries to fuse and what they link to.
struct Plan {
    /// Instances of the libraries, in instantiation order.
    libs: Vec<u32>,
    /// Their modules.
    modules: Vec<u32>,
    /// The instance that defines the shared table, and the table's
    /// defined index in its module.
    owner: (u32, u32),
}

/// A component with its libraries fused.
pub struct FusedComponent {
    /// The rewritten component.
    pub bytes: Vec<u8>,
    /// The positions of the modules the fusion wrote (the fused module and
    /// the stubs), among the component's modules: they depend only on the
    /// libraries, so they are the same for every app built against them.
    pub own_modules: Vec<usize>,
}

/// `component` with the libraries sharing its function table fused (see
/// the module doc), or none if it has no such libraries or a shape this
/// does not handle.
pub fn fuse(component: &[u8]) -> Option<FusedComponent> {
    // A component is anyone's upload: whatever it holds, fusing falls back
    // to the component as it is, and a mistake here must not take the
    // server down with it.
    match std::panic::catch_unwind(|| fused(component)) {
        Ok(Ok(out)) => Some(out),
        Ok(Err(e)) => {
            tracing::debug!("not fusing the component's libraries: {e:#}");
            None
        }
        Err(_) => {
            tracing::warn!("not fusing the component's libraries: the fusion panicked");
            None
        }
    }
}

fn fused(component: &[u8]) -> Result<FusedComponent> {
    // Every index below is then in range.
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(component)
        .context("the component does not validate")?;
    let graph = Graph::read(component)?;
    let plan = plan(&graph)?;
    let fused = build(&graph, &plan)?;
    let out = rewrite(component, &plan, fused)?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(&out)
        .context("the fused component does not validate")?;
    Ok(FusedComponent {
        bytes: out,
        own_modules: plan.modules.iter().map(|&m| m as usize).collect(),
    })
}

/// Which libraries share a table defined by another module, if they can be
/// fused.
fn plan(graph: &Graph) -> Result<Plan> {
    // Each module instance's table imports, by the table they resolve to.
    let mut importers: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    let mut instantiated: HashMap<u32, usize> = HashMap::new();
    for (i, instance) in graph.instances.iter().enumerate() {
        let CoreInstance::Module { module, args } = instance else {
            continue;
        };
        *instantiated.entry(*module).or_default() += 1;
        let m = &graph.modules[*module as usize];
        for &import in &m.imports_of[Kind::Table.slot()] {
            let (from, name, _) = &m.imports[import];
            let arg = arg_named(args, from)?;
            let defining = graph
                .defining(arg, name, Kind::Table)?
                .context("a table import that does not resolve to a defined table")?;
            importers.entry(defining).or_default().push(i as u32);
        }
    }
    // The table most modules share; fusing one module gains nothing.
    let (&owner, libs) = importers
        .iter()
        .max_by_key(|(_, libs)| libs.len())
        .context("no shared table")?;
    if libs.len() < 2 {
        bail!("a table only one module imports");
    }
    let mut libs = libs.clone();
    libs.sort_unstable();
    libs.dedup();
    let mut modules = Vec::new();
    for &lib in &libs {
        let module = graph.module_of(lib).context("a library is not a module")?;
        let m = &graph.modules[module as usize];
        // Fused, a library's start would run earlier than it did, and a
        // module instantiated twice cannot be replaced by one stub.
        if m.has_start
            || m.has_tags
            || m.defined_memories > 0
            || m.imported(Kind::Table) != 1
            || instantiated[&module] != 1
        {
            bail!("a library with a start function, tags, a memory of its own or more than one table, or instantiated twice");
        }
        modules.push(module);
    }
    if owner.0 >= libs[0] {
        bail!("the table is defined after its first importer");
    }
    // Fused, the libraries are all instantiated at the first one's place:
    // nothing instantiated between them may run code or write memory when
    // it is instantiated, or it would now see them (or their late
    // functions) in another state.
    let last = *libs.last().expect("two or more");
    for i in libs[0]..last {
        if let CoreInstance::Module { module, .. } = &graph.instances[i as usize] {
            let m = &graph.modules[*module as usize];
            if !libs.contains(&i) && (m.has_start || m.data_segments > 0) {
                bail!("instance {i}, made between the libraries, runs code or writes memory");
            }
        }
    }
    Ok(Plan {
        libs,
        modules,
        owner,
    })
}

/// `component` with the fused module in the first library's place, the
/// stubs in the others', and their instantiations' arguments changed.
fn rewrite(component: &[u8], plan: &Plan, fused: Fused) -> Result<Vec<u8>> {
    let mut replaced: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut new_args: HashMap<u32, Vec<(String, u32)>> = HashMap::new();
    replaced.insert(plan.modules[0], fused.module);
    new_args.insert(plan.libs[0], fused.args);
    for (((stub, args), &module), &instance) in fused
        .stubs
        .into_iter()
        .zip(&plan.modules[1..])
        .zip(&plan.libs[1..])
    {
        replaced.insert(module, stub);
        new_args.insert(instance, args);
    }
    let sections = core_modules::sections(&mut BufReader::new(std::io::Cursor::new(component)))?;
    let mut out = Vec::with_capacity(component.len());
    out.extend_from_slice(&component[..8]);
    let (mut module, mut instance) = (0u32, 0u32);
    for (id, range) in sections {
        let bytes = &component[range.start as usize..range.end as usize];
        let body: Cow<[u8]> = match id {
            CORE_MODULE => {
                let new = replaced.remove(&module);
                module += 1;
                match new {
                    Some(new) => Cow::Owned(new),
                    None => Cow::Borrowed(bytes),
                }
            }
            CORE_INSTANCE => {
                let mut section = InstanceSection::new();
                let reader = wasmparser::InstanceSectionReader::new(
                    wasmparser::BinaryReader::new(bytes, 0),
                )?;
                for item in reader {
                    let index = instance;
                    instance += 1;
                    match item? {
                        Instance::Instantiate { module_index, args } => {
                            let args: Vec<(String, u32)> = match new_args.remove(&index) {
                                Some(args) => args,
                                None => args.iter().map(|a| (a.name.to_owned(), a.index)).collect(),
                            };
                            section.instantiate(
                                module_index,
                                args.iter()
                                    .map(|(n, i)| (n.as_str(), ModuleArg::Instance(*i))),
                            );
                        }
                        Instance::FromExports(items) => {
                            let items: Vec<(String, ExportKind, u32)> = items
                                .iter()
                                .map(|e| (e.name.to_owned(), e.kind.into(), e.index))
                                .collect();
                            section
                                .export_items(items.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
                        }
                    }
                }
                // Encoded with its own size.
                out.push(id);
                wasm_encoder::Encode::encode(&section, &mut out);
                continue;
            }
            _ => Cow::Borrowed(bytes),
        };
        out.push(id);
        crate::bundle::leb128(&mut out, body.len() as u64);
        out.extend_from_slice(&body);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use wasmparser::{ElementKind, Operator, Parser, Payload};

    use super::*;

    /// A main module defining the memory, the table, each library's table
    /// base and a forwarder to slot 7; library A placing `double` at its
    /// base (2) and calling the forwarder; library B placing `inc`,
    /// `plus_host` and `target` at its base (5), calling A, the table and
    /// a host function lowered only after A exists, and filling slot 7 of
    /// a table of its own with another function.
    /// What both libraries begin with: a type and the main module's
    /// table, memory and their table base.
    const LIB_HEAD: &str = r#"(type $t (func (param i32) (result i32)))
        (import "env" "table" (table 1 funcref))
        (import "env" "memory" (memory 1))
        (import "env" "__table_base" (global i32))"#;

    fn component(start_in_a: bool, start_between: bool) -> Vec<u8> {
        let start = if start_in_a {
            "(start $double_start)"
        } else {
            ""
        };
        // A module that runs code when instantiated, between A and B.
        let between = if start_between {
            "(core module $noisy (func $s) (start $s)) (core instance (instantiate $noisy))"
        } else {
            ""
        };
        wat::parse_str(format!(
            r#"(component
                (import "host-add" (func $host_add (param "x" s32) (result s32)))
                (core module $main
                    (type $t (func (param i32) (result i32)))
                    (memory (export "memory") 1)
                    (table (export "table") 10 funcref)
                    (global (export "a_base") i32 (i32.const 2))
                    (global (export "b_base") i32 (i32.const 5))
                    (func (export "fwd") (type $t)
                        local.get 0 i32.const 7 call_indirect (type $t)))
                (core module $a
                    {LIB_HEAD}
                    (import "env" "fwd" (func $fwd (type $t)))
                    (func $double (type $t) local.get 0 i32.const 2 i32.mul)
                    (func $double_start)
                    {start}
                    (func (export "via_main") (type $t) local.get 0 call $fwd)
                    (elem (table 0) (offset (global.get 0)) func $double))
                (core module $b
                    {LIB_HEAD}
                    (import "a" "via_main" (func $via_main (type $t)))
                    (import "host" "add" (func $host_add (type $t)))
                    (func $inc (type $t) local.get 0 i32.const 1 i32.add)
                    (func $plus_host (type $t) local.get 0 call $host_add)
                    (func $target (type $t) local.get 0 i32.const 1000 i32.add)
                    (func (export "run") (result i32)
                        i32.const 3
                        i32.const 2 call_indirect (type $t)
                        i32.const 5 call_indirect (type $t)
                        call $via_main
                        i32.const 6 call_indirect (type $t))
                    (elem (table 0) (offset (global.get 0)) func $inc $plus_host $target)
                    ;; A table of B's own, whose slot 7 is not the shared
                    ;; table's slot 7.
                    (table $own 8 funcref)
                    (func $other (type $t) local.get 0 i32.const 5000 i32.add)
                    (elem (table $own) (i32.const 7) func $other))
                (core instance $m (instantiate $main))
                (core instance $env_a
                    (export "table" (table $m "table"))
                    (export "memory" (memory $m "memory"))
                    (export "__table_base" (global $m "a_base"))
                    (export "fwd" (func $m "fwd")))
                (core instance $ia (instantiate $a (with "env" (instance $env_a))))
                {between}
                (core func $lowered (canon lower (func $host_add)))
                (core instance $host (export "add" (func $lowered)))
                (core instance $env_b
                    (export "table" (table $m "table"))
                    (export "memory" (memory $m "memory"))
                    (export "__table_base" (global $m "b_base")))
                (core instance $ib (instantiate $b
                    (with "env" (instance $env_b))
                    (with "a" (instance $ia))
                    (with "host" (instance $host))))
                (func (export "run") (result s32) (canon lift (core func $ib "run")))
                (func (export "fwd") (param "x" s32) (result s32)
                    (canon lift (core func $m "fwd")))
            )"#
        ))
        .unwrap()
    }

    /// Instantiate `component` and call its `run` and `fwd(1)`.
    fn run(component: &[u8]) -> (i32, i32) {
        use wasmtime::component::{Component, Linker};
        use wasmtime::{Engine, Store};
        let engine = Engine::default();
        let component = Component::new(&engine, component).unwrap();
        let mut linker: Linker<()> = Linker::new(&engine);
        linker
            .root()
            .func_wrap("host-add", |_, (x,): (i32,)| Ok((x + 10,)))
            .unwrap();
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &component).unwrap();
        let run = instance
            .get_typed_func::<(), (i32,)>(&mut store, "run")
            .unwrap();
        let ran = run.call(&mut store, ()).unwrap().0;
        let fwd = instance
            .get_typed_func::<(i32,), (i32,)>(&mut store, "fwd")
            .unwrap();
        (ran, fwd.call(&mut store, (1,)).unwrap().0)
    }

    /// Each module of `component`: its active element segments as (the
    /// table is imported, the offset is an `i32.const`).
    fn segments(component: &[u8]) -> Vec<Vec<(bool, bool)>> {
        let mut out = Vec::new();
        let graph = Graph::read(component).unwrap();
        for m in &graph.modules {
            let mut segs = Vec::new();
            for payload in Parser::new(0).parse_all(m.bytes) {
                if let Payload::ElementSection(r) = payload.unwrap() {
                    for e in r {
                        if let ElementKind::Active {
                            table_index,
                            offset_expr,
                        } = e.unwrap().kind
                        {
                            let imported = table_index.unwrap_or(0) < m.imported(Kind::Table);
                            let constant = matches!(
                                offset_expr.get_operators_reader().read(),
                                Ok(Operator::I32Const { .. })
                            );
                            segs.push((imported, constant));
                        }
                    }
                }
            }
            out.push(segs);
        }
        out
    }

    #[test]
    fn fused_libraries_run_as_they_did_with_a_table_of_their_own() {
        let original = component(false, false);
        // 3 * 2 + 1 = 7, through main's forwarder to `target`: 1007, + 10.
        assert_eq!(run(&original), (1017, 1001));
        let fused = fuse(&original).expect("fused").bytes;
        assert_eq!(run(&fused), (1017, 1001));
        let segments = segments(&fused);
        // Library A's place: its segment and B's two, at constant offsets
        // in the tables it defines, then main's forwarded slot (7, which
        // the lifted `fwd` calls) written into main's table, last.
        assert_eq!(
            segments[1],
            [(false, true), (false, true), (false, true), (true, true)],
            "{segments:?}"
        );
        // B's place: a stub that puts the late host function in the fused
        // module's table.
        assert_eq!(segments[2], [(true, true)]);
    }

    /// Libraries reading two GOT-like globals of the main module: `got`,
    /// which only a function nothing reaches sets, and `counter`, which
    /// library A's exported `bump` sets.
    const GLOBALS: &str = r#"(component
        (core module $main
            (memory (export "memory") 1)
            (table (export "table") 4 funcref)
            (global (export "a_base") i32 (i32.const 0))
            (global (export "b_base") i32 (i32.const 2))
            (global (export "got") (mut i32) (i32.const 40))
            (global (export "counter") (mut i32) (i32.const 0)))
        (core module $a
            (import "env" "table" (table 1 funcref))
            (import "env" "memory" (memory 1))
            (import "env" "__table_base" (global i32))
            (import "env" "got" (global $got (mut i32)))
            (import "env" "counter" (global $counter (mut i32)))
            (func $f (result i32) global.get $got)
            (func $dead i32.const 1 global.set $got)
            (func (export "bump") (result i32)
                global.get $counter i32.const 1 i32.add global.set $counter
                global.get $counter)
            (elem (table 0) (offset (global.get 0)) func $f))
        (core module $b
            (type $r (func (result i32)))
            (import "env" "table" (table 1 funcref))
            (import "env" "memory" (memory 1))
            (import "env" "__table_base" (global i32))
            (import "env" "got" (global $got (mut i32)))
            (import "a" "bump" (func $bump (result i32)))
            (func (export "run") (result i32)
                global.get $got
                i32.const 0 call_indirect (type $r) i32.add
                call $bump i32.add
                call $bump i32.add))
        (core instance $m (instantiate $main))
        (core instance $env_a
            (export "table" (table $m "table"))
            (export "memory" (memory $m "memory"))
            (export "__table_base" (global $m "a_base"))
            (export "got" (global $m "got"))
            (export "counter" (global $m "counter")))
        (core instance $ia (instantiate $a (with "env" (instance $env_a))))
        (core instance $env_b
            (export "table" (table $m "table"))
            (export "memory" (memory $m "memory"))
            (export "__table_base" (global $m "b_base"))
            (export "got" (global $m "got")))
        (core instance $ib (instantiate $b (with "env" (instance $env_b)) (with "a" (instance $ia))))
        (func (export "run") (result s32) (canon lift (core func $ib "run"))))"#;

    #[test]
    fn globals_no_code_can_write_become_constants() {
        let run = |component: &[u8]| -> Vec<i32> {
            use wasmtime::component::{Component, Linker};
            use wasmtime::{Engine, Store};
            let engine = Engine::default();
            let component = Component::new(&engine, component).unwrap();
            let mut store = Store::new(&engine, ());
            let instance = Linker::<()>::new(&engine)
                .instantiate(&mut store, &component)
                .unwrap();
            let run = instance
                .get_typed_func::<(), (i32,)>(&mut store, "run")
                .unwrap();
            (0..2)
                .map(|_| run.call(&mut store, ()).unwrap().0)
                .collect()
        };
        let original = wat::parse_str(GLOBALS).unwrap();
        // 40 + 40 + 1 + 2, then the counter goes on: 40 + 40 + 3 + 4.
        assert_eq!(run(&original), [83, 87]);
        let fused = fuse(&original).expect("fuses").bytes;
        assert_eq!(run(&fused), [83, 87]);
        // The fused module (in library A's place) imports the global code
        // writes, and not the one only unreachable code sets.
        let graph = Graph::read(&fused).unwrap();
        let globals: Vec<&str> = graph.modules[1]
            .imports
            .iter()
            .filter(|(_, _, ty)| matches!(ty, wasmparser::TypeRef::Global(_)))
            .map(|(_, name, _)| name.as_str())
            .collect();
        assert_eq!(globals, ["counter"]);
    }

    #[test]
    fn a_shape_it_does_not_know_is_left_as_it_is() {
        // A library's start function would run earlier fused.
        assert!(fuse(&component(true, false)).is_none());
        // So would a module instantiated between the libraries that runs
        // code when it is instantiated.
        assert!(fuse(&component(false, true)).is_none());
        assert!(fuse(&wat::parse_str("(component)").unwrap()).is_none());
        assert!(fuse(b"\0asm\x0d\0\x01\0\x07\xff").is_none());
    }
}
