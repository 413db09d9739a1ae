//! Where each import of a library to fuse goes: another library, the
//! shared table, an earlier instance, or a function that exists only later;
//! and what the main module's own code needs of its table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use wasmparser::{ElementItems, ElementKind, Operator, Parser, Payload, TypeRef};

use super::graph::*;
use super::*;

/// Where a fused library's import goes.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(super) enum Link {
    /// A defined item of the library at this position in the fused set.
    Internal { lib: usize, index: u32 },
    /// The shared function table, which the fused module defines.
    MainTable,
    /// An import of the fused module: from this earlier instance, by name.
    External { instance: u32, name: String },
    /// A function that exists only after the first library's place (a
    /// lowering defined later): called through a table of the fused
    /// module's that the stub of a later library fills.
    Late { instance: u32, name: String },
    /// A global no code ever writes, defined with this `i32.const`: its
    /// value, which the fused module's code uses as a constant.
    Constant(i32),
}

/// What the libraries put in the shared table at constant offsets: each
/// slot's function, as a link.
pub(super) fn placed_links(
    graph: &Graph,
    plan: &Plan,
    libs: &[&ModuleInfo],
    links: &[Vec<Link>],
) -> Result<BTreeMap<u32, Link>> {
    let mut placed = BTreeMap::new();
    for (lib, info) in libs.iter().enumerate() {
        // A library's function index: its imports, then its own.
        let func_imports = &info.imports_of[Kind::Func.slot()];
        let link_of = |f: u32| -> Link {
            match func_imports.get(f as usize) {
                Some(&i) => links[lib][i].clone(),
                None => Link::Internal {
                    lib,
                    index: f - func_imports.len() as u32,
                },
            }
        };
        for payload in Parser::new(0).parse_all(info.bytes) {
            let Payload::ElementSection(r) = payload? else {
                continue;
            };
            for e in r {
                let e = e?;
                let (
                    ElementKind::Active {
                        offset_expr,
                        table_index,
                    },
                    ElementItems::Functions(funcs),
                ) = (e.kind, e.items)
                else {
                    continue;
                };
                // A library's only imported table, so its table 0, is the
                // shared one; a table of its own is not.
                if table_index.unwrap_or(0) != 0 {
                    continue;
                }
                let Some(at) = constant_offset(graph, &offset_expr, lib, libs, plan) else {
                    continue;
                };
                for (i, f) in funcs.into_iter().enumerate() {
                    placed.insert(at + i as u32, link_of(f?));
                }
            }
        }
    }
    Ok(placed)
}

/// The functions of the main module the component uses other than through
/// a library: passed to another module, or used by a canonical definition.
pub(super) fn used_outside(graph: &Graph, plan: &Plan) -> BTreeSet<String> {
    let owner = plan.owner.0;
    let is_lib = |i: u32| plan.libs.contains(&i);
    // Bags some other module is given, or that are aliased from.
    let mut outside_bags: HashSet<u32> = HashSet::new();
    let mut used = BTreeSet::new();
    for (i, instance) in graph.instances.iter().enumerate() {
        let CoreInstance::Module { module, args } = instance else {
            continue;
        };
        if is_lib(i as u32) {
            continue;
        }
        for (from, arg) in args {
            outside_bags.insert(*arg);
            if *arg == owner {
                for (m, name, ty) in &graph.modules[*module as usize].imports {
                    if m == from && matches!(ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        used.insert(name.clone());
                    }
                }
            }
        }
    }
    for origins in &graph.origins {
        for origin in origins {
            if let Origin::Alias { instance, .. } = origin {
                outside_bags.insert(*instance);
            }
        }
    }
    for (x, origin) in graph.origins[Kind::Func.slot()].iter().enumerate() {
        let Origin::Alias { instance, name } = origin else {
            continue;
        };
        if *instance != owner {
            continue;
        }
        let x = x as u32;
        let in_outside_bag = graph.instances.iter().enumerate().any(|(b, inst)| {
            outside_bags.contains(&(b as u32))
                && matches!(inst, CoreInstance::Bag(items)
                    if items.iter().any(|(_, k, i)| *k == Some(Kind::Func) && *i == x))
        });
        if graph.canon_uses.contains(&x) || in_outside_bag {
            used.insert(name.clone());
        }
    }
    used
}

/// Where import `name` (of `kind`) from core instance `arg` goes, for a
/// library of the plan; none if it cannot be linked from the first
/// library's place.
pub(super) fn link(
    graph: &Graph,
    plan: &Plan,
    lib_of: &HashMap<u32, usize>,
    arg: u32,
    name: &str,
    kind: Kind,
) -> Result<Link> {
    let first = plan.libs[0];
    let mut at = (arg, name.to_owned());
    for _ in 0..10_000 {
        let (instance, name) = &at;
        match graph.instances.get(*instance as usize) {
            Some(CoreInstance::Module { module, args }) => {
                if let Some(&lib) = lib_of.get(instance) {
                    match graph.export_hop(*module, args, name, kind)? {
                        Hop::Defined(index) => return Ok(Link::Internal { lib, index }),
                        Hop::Next(arg, field) => at = (arg, field),
                    }
                    continue;
                }
                if kind == Kind::Table && graph.defining(*instance, name, kind)? == Some(plan.owner)
                {
                    return Ok(Link::MainTable);
                }
                if *instance >= first {
                    if kind != Kind::Func {
                        bail!("it comes from instance {instance}, made after the first library");
                    }
                    return Ok(Link::Late {
                        instance: *instance,
                        name: name.clone(),
                    });
                }
                return Ok(Link::External {
                    instance: *instance,
                    name: name.clone(),
                });
            }
            Some(CoreInstance::Bag(items)) => {
                let index = bag_member(items, name, kind)?;
                match graph.origins[kind.slot()].get(index as usize) {
                    Some(Origin::Alias { instance, name }) => at = (*instance, name.clone()),
                    Some(Origin::Canon) => {
                        // A canonical function: import it from the first
                        // bag that holds it.
                        let holder =
                            graph
                                .instances
                                .iter()
                                .enumerate()
                                .find_map(|(i, inst)| match inst {
                                    CoreInstance::Bag(items) => items
                                        .iter()
                                        .find(|(_, k, x)| *k == Some(kind) && *x == index)
                                        .map(|(n, _, _)| (i as u32, n.clone())),
                                    CoreInstance::Module { .. } => None,
                                });
                        let (instance, name) = holder
                            .with_context(|| format!("no bundle holds core function {index}"))?;
                        return Ok(if instance < first {
                            Link::External { instance, name }
                        } else {
                            Link::Late { instance, name }
                        });
                    }
                    None => bail!("core {kind:?} {index} is not defined"),
                }
            }
            None => bail!("core instance {instance} is not defined"),
        }
    }
    bail!("an import chain does not end")
}

/// How the main module's code uses its table.
pub(super) struct OwnerCalls {
    /// Every slot it calls through (each with `i32.const N` right before
    /// the `call_indirect`).
    pub(super) slots: BTreeSet<u32>,
    /// Its forwarders (functions that only call slot N with their own
    /// arguments), by function index: their slot.
    pub(super) forwarders: HashMap<u32, u32>,
    /// Whether every function it defines is a forwarder (then a slot is
    /// needed only where its forwarder is used).
    pub(super) only_forwarders: bool,
}

/// How the module's code uses table `table`; an error if some call through
/// it is not at a constant slot, or the code uses the table otherwise.
pub(super) fn owner_calls(info: &ModuleInfo, table: u32) -> Result<OwnerCalls> {
    let mut calls = OwnerCalls {
        slots: BTreeSet::new(),
        forwarders: HashMap::new(),
        only_forwarders: true,
    };
    let mut types: Vec<Option<usize>> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new();
    let imported_funcs = info.imported(Kind::Func);
    let mut body_index = 0u32;
    for payload in Parser::new(0).parse_all(info.bytes) {
        match payload? {
            Payload::TypeSection(r) => {
                for group in r {
                    for ty in group?.into_types() {
                        types.push(match &ty.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => Some(f.params().len()),
                            _ => None,
                        });
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    func_types.push(t?);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let own_type = func_types.get(body_index as usize).copied();
                let index = imported_funcs + body_index;
                body_index += 1;
                let no_locals = body.get_locals_reader()?.get_count() == 0;
                let mut args = 0usize;
                let mut last = None;
                let mut forwards = None;
                let mut ops = 0usize;
                for op in body.get_operators_reader()? {
                    let op = op?;
                    ops += 1;
                    match &op {
                        Operator::CallIndirect {
                            table_index,
                            type_index,
                        } if *table_index == table => {
                            let slot = last.context(
                                "a call through the main table at a slot that is not constant",
                            )?;
                            calls.slots.insert(slot);
                            let params =
                                own_type.and_then(|t| types.get(t as usize).copied().flatten());
                            if Some(*type_index) == own_type
                                && params == Some(args)
                                && ops == args + 2
                                && no_locals
                            {
                                forwards = Some(slot);
                            } else {
                                calls.only_forwarders = false;
                            }
                        }
                        Operator::ReturnCallIndirect { table_index, .. }
                            if *table_index == table =>
                        {
                            calls.only_forwarders = false;
                            let slot = last.context(
                                "a call through the main table at a slot that is not constant",
                            )?;
                            calls.slots.insert(slot);
                        }
                        Operator::TableGet { .. }
                        | Operator::TableSet { .. }
                        | Operator::TableGrow { .. }
                        | Operator::TableSize { .. }
                        | Operator::TableFill { .. }
                        | Operator::TableCopy { .. }
                        | Operator::TableInit { .. } => {
                            bail!(
                                "the main module uses its table otherwise than to call through it"
                            )
                        }
                        Operator::LocalGet { local_index }
                            if ops == args + 1 && *local_index as usize == args =>
                        {
                            args += 1;
                        }
                        Operator::End if forwards.is_some() && ops == args + 3 => {
                            calls.forwarders.insert(index, forwards.expect("checked"));
                        }
                        _ => {}
                    }
                    last = match op {
                        Operator::I32Const { value } => Some(value as u32),
                        _ => None,
                    };
                }
            }
            _ => {}
        }
    }
    // A function of its own that is not a forwarder could call one
    // directly, and then the slot that one reads is needed too.
    if calls.forwarders.len() != body_index as usize {
        calls.only_forwarders = false;
    }
    Ok(calls)
}

/// Evaluate a constant offset: `i32.const`, `global.get` of a global
/// whose value is known, `i32.add`/`i32.sub`.
pub(super) fn constant_offset(
    graph: &Graph,
    expr: &wasmparser::ConstExpr,
    lib: usize,
    libs: &[&ModuleInfo],
    plan: &Plan,
) -> Option<u32> {
    let mut stack: Vec<i32> = Vec::new();
    for op in expr.get_operators_reader() {
        match op.ok()? {
            Operator::I32Const { value } => stack.push(value),
            Operator::GlobalGet { global_index } => {
                stack.push(global_value(graph, plan, libs, lib, global_index)?)
            }
            Operator::I32Add => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(a.wrapping_add(b));
            }
            Operator::I32Sub => {
                let (b, a) = (stack.pop()?, stack.pop()?);
                stack.push(a.wrapping_sub(b));
            }
            Operator::End => break,
            _ => return None,
        }
    }
    match stack.as_slice() {
        [v] => Some(*v as u32),
        _ => None,
    }
}

/// The value of global `index` of library `lib`, if it is an immutable
/// global initialised with a constant.
pub(super) fn global_value(
    graph: &Graph,
    plan: &Plan,
    libs: &[&ModuleInfo],
    lib: usize,
    index: u32,
) -> Option<i32> {
    let info = libs[lib];
    let (instance, defined) = if index < info.imported(Kind::Global) {
        let (from, name) = info.import_of(Kind::Global, index)?;
        let CoreInstance::Module { args, .. } = &graph.instances[plan.libs[lib] as usize] else {
            return None;
        };
        let arg = arg_named(args, from).ok()?;
        graph.defining(arg, name, Kind::Global).ok()??
    } else {
        (plan.libs[lib], index - info.imported(Kind::Global))
    };
    let module = graph.module_of(instance)?;
    let (ty, value) = graph.modules[module as usize]
        .globals
        .get(defined as usize)?;
    if ty.mutable {
        return None;
    }
    *value
}

/// Every global (as its defining instance and defined index) that some
/// module's code writes with `global.set`; an error if a written import
/// does not resolve to a definition.
pub(super) fn written_globals(graph: &Graph) -> Result<HashSet<(u32, u32)>> {
    let mut writes_of: HashMap<u32, BTreeSet<u32>> = HashMap::new();
    let mut written = HashSet::new();
    for (i, instance) in graph.instances.iter().enumerate() {
        let CoreInstance::Module { module, args } = instance else {
            continue;
        };
        let info = &graph.modules[*module as usize];
        if !writes_of.contains_key(module) {
            writes_of.insert(*module, global_sets(info)?);
        }
        for &g in &writes_of[module] {
            if g >= info.imported(Kind::Global) {
                written.insert((i as u32, g - info.imported(Kind::Global)));
                continue;
            }
            let (from, name) = info
                .import_of(Kind::Global, g)
                .context("a written global out of range")?;
            let arg = arg_named(args, from)?;
            let defined = graph
                .defining(arg, name, Kind::Global)?
                .context("a written global without a definition")?;
            written.insert(defined);
        }
    }
    Ok(written)
}

/// The globals `module`'s code can set: `global.set` in any function that
/// can run. A function can run if it is exported, the start function, in
/// an element segment, named by any `ref.func`, or called by one that can
/// (the snapshot's linker leaves a function that set every GOT entry once,
/// before the snapshot, and that nothing reaches any more).
fn global_sets(info: &ModuleInfo) -> Result<BTreeSet<u32>> {
    let imported = info.imported(Kind::Func);
    let mut roots: Vec<u32> = info
        .exports
        .values()
        .filter(|(kind, _)| *kind == Kind::Func)
        .map(|(_, f)| *f)
        .collect();
    // Each defined function's callees and the globals it sets.
    let mut bodies: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
    let refs = |expr: &wasmparser::ConstExpr, roots: &mut Vec<u32>| -> Result<()> {
        for op in expr.get_operators_reader() {
            if let Operator::RefFunc { function_index } = op? {
                roots.push(function_index);
            }
        }
        Ok(())
    };
    for payload in Parser::new(0).parse_all(info.bytes) {
        match payload? {
            Payload::StartSection { func, .. } => roots.push(func),
            Payload::GlobalSection(r) => {
                for g in r {
                    refs(&g?.init_expr, &mut roots)?;
                }
            }
            Payload::ElementSection(r) => {
                for e in r {
                    match e?.items {
                        ElementItems::Functions(funcs) => {
                            for f in funcs {
                                roots.push(f?);
                            }
                        }
                        ElementItems::Expressions(_, exprs) => {
                            for expr in exprs {
                                refs(&expr?, &mut roots)?;
                            }
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => {
                let (mut calls, mut sets) = (Vec::new(), Vec::new());
                for op in body.get_operators_reader()? {
                    match op? {
                        Operator::Call { function_index }
                        | Operator::ReturnCall { function_index } => calls.push(function_index),
                        Operator::RefFunc { function_index } => roots.push(function_index),
                        Operator::GlobalSet { global_index } => sets.push(global_index),
                        _ => {}
                    }
                }
                bodies.push((calls, sets));
            }
            _ => {}
        }
    }
    let mut seen = HashSet::new();
    let mut out = BTreeSet::new();
    while let Some(f) = roots.pop() {
        if !seen.insert(f) {
            continue;
        }
        let Some((calls, sets)) = f.checked_sub(imported).and_then(|i| bodies.get(i as usize))
        else {
            continue;
        };
        out.extend(sets.iter().copied());
        roots.extend(calls.iter().copied());
    }
    Ok(out)
}

/// The names the component uses of instance `instance`: aliased from it,
/// or imported from it by a module it is passed to whole, other than a
/// library of `plan` (linked inside the fused module).
pub(super) fn used_names(graph: &Graph, plan: &Plan, instance: u32) -> BTreeSet<(String, Kind)> {
    let mut used = BTreeSet::new();
    for (kind, origins) in [Kind::Func, Kind::Table, Kind::Memory, Kind::Global]
        .into_iter()
        .zip(&graph.origins)
    {
        for origin in origins {
            if let Origin::Alias { instance: i, name } = origin {
                if *i == instance {
                    used.insert((name.clone(), kind));
                }
            }
        }
    }
    for (i, inst) in graph.instances.iter().enumerate() {
        let CoreInstance::Module { module, args } = inst else {
            continue;
        };
        if plan.libs.contains(&(i as u32)) {
            continue;
        }
        for (from, arg) in args {
            if *arg != instance {
                continue;
            }
            for (m, name, ty) in &graph.modules[*module as usize].imports {
                if m == from {
                    if let Some(kind) = Kind::of_import(ty) {
                        used.insert((name.clone(), kind));
                    }
                }
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarder_is_only_a_call_of_a_constant_slot_with_its_own_arguments() {
        let module = wat::parse_str(
            r#"(module
                (type $t (func (param i32 i32) (result i32)))
                (table 8 funcref)
                (func (type $t) local.get 0 local.get 1 i32.const 3 call_indirect (type $t))
                (func (type $t) local.get 1 local.get 0 i32.const 4 call_indirect (type $t))
                (func (type $t) local.get 0 i32.const 1 i32.const 5 call_indirect (type $t)))"#,
        )
        .unwrap();
        let calls = owner_calls(&ModuleInfo::read(&module).unwrap(), 0).unwrap();
        assert_eq!(calls.forwarders, HashMap::from([(0, 3)]));
        assert_eq!(calls.slots, BTreeSet::from([3, 4, 5]));
        assert!(!calls.only_forwarders);
        let forwarders = wat::parse_str(
            r#"(module (type $t (func)) (table 8 funcref)
                (func (type $t) i32.const 1 call_indirect (type $t))
                (func (type $t) i32.const 2 call_indirect (type $t)))"#,
        )
        .unwrap();
        assert!(
            owner_calls(&ModuleInfo::read(&forwarders).unwrap(), 0)
                .unwrap()
                .only_forwarders
        );
        // A function of its own calling a forwarder directly.
        let caller = wat::parse_str(
            r#"(module (type $t (func)) (table 8 funcref)
                (func $f (type $t) i32.const 1 call_indirect (type $t))
                (func (export "g") (type $t) call $f))"#,
        )
        .unwrap();
        assert!(
            !owner_calls(&ModuleInfo::read(&caller).unwrap(), 0)
                .unwrap()
                .only_forwarders
        );
        let dynamic = wat::parse_str(
            r#"(module (table 8 funcref) (type $t (func))
                (func (param i32) local.get 0 call_indirect (type $t)))"#,
        )
        .unwrap();
        assert!(owner_calls(&ModuleInfo::read(&dynamic).unwrap(), 0).is_err());
    }
}
