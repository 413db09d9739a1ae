//! Lays out and encodes the fused module and the stubs that stand in for
//! the other libraries.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, ConstExpr, DataCountSection, DataSection, ElementSection, Elements, EntityType,
    ExportKind, ExportSection, FunctionSection, GlobalSection, ImportSection, TableSection,
    TypeSection,
};
use wasmparser::{ElementItems, ElementKind, Parser, Payload, TypeRef};

use super::graph::*;
use super::link::*;
use super::*;

/// The fused module and a stub for each other library (in plan order; the
/// first library's place takes the fused module), each with the
/// arguments it is instantiated with.
pub(super) struct Fused {
    pub(super) module: Vec<u8>,
    pub(super) args: Args,
    pub(super) stubs: Vec<(Vec<u8>, Args)>,
}

/// A module's instantiation arguments: name and core instance.
pub(super) type Args = Vec<(String, u32)>;

/// The import module name under which a module takes `instance`.
pub(super) fn arg_name(instance: u32) -> String {
    format!("i{instance}")
}

/// The fused module's export of library `lib`'s `name` (the first
/// library's names are exported as they are).
pub(super) fn fused_export(lib: usize, name: &str) -> String {
    if lib == 0 {
        name.to_owned()
    } else {
        format!("lib{lib}:{name}")
    }
}

/// The fused module's export of the table late functions are called
/// through.
pub(super) const LATE_TABLE: &str = "rsgi-wasm:late";

/// Index maps from one library's index spaces to the fused module's.
pub(super) struct Remap {
    pub(super) types: u32,
    pub(super) spaces: [Vec<u32>; 4],
    pub(super) data: u32,
    pub(super) elements: u32,
    /// The library's globals that are constants: index, value.
    pub(super) constants: HashMap<u32, i32>,
}

impl Reencode for Remap {
    type Error = String;

    fn type_index(&mut self, ty: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.types + ty)
    }
    fn function_index(&mut self, f: u32) -> Result<u32, ReencodeError<String>> {
        self.map(Kind::Func, f)
    }
    fn table_index(&mut self, t: u32) -> Result<u32, ReencodeError<String>> {
        self.map(Kind::Table, t)
    }
    fn memory_index(&mut self, m: u32) -> Result<u32, ReencodeError<String>> {
        self.map(Kind::Memory, m)
    }
    fn global_index(&mut self, g: u32) -> Result<u32, ReencodeError<String>> {
        self.map(Kind::Global, g)
    }
    fn data_index(&mut self, d: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.data + d)
    }
    fn element_index(&mut self, e: u32) -> Result<u32, ReencodeError<String>> {
        Ok(self.elements + e)
    }
    fn instruction<'a>(
        &mut self,
        op: wasmparser::Operator<'a>,
    ) -> Result<wasm_encoder::Instruction<'a>, ReencodeError<String>> {
        if let wasmparser::Operator::GlobalGet { global_index } = op {
            if let Some(&v) = self.constants.get(&global_index) {
                return Ok(wasm_encoder::Instruction::I32Const(v));
            }
        }
        wasm_encoder::reencode::utils::instruction(self, op)
    }
}

impl Remap {
    pub(super) fn map(&self, kind: Kind, index: u32) -> Result<u32, ReencodeError<String>> {
        self.spaces[kind.slot()]
            .get(index as usize)
            .copied()
            .ok_or_else(|| ReencodeError::UserError(format!("{kind:?} {index} out of range")))
    }
}

pub(super) fn encode_err<E: std::fmt::Debug>(e: ReencodeError<E>) -> anyhow::Error {
    anyhow::anyhow!("re-encoding a library: {e:?}")
}

/// A function called through the late table: where it comes from, its
/// type (in the fused module's types) and the library whose stub puts it
/// in the table.
pub(super) struct Late {
    pub(super) instance: u32,
    pub(super) name: String,
    pub(super) ty: u32,
    pub(super) host: usize,
}

/// Everything the fused module and the stubs are encoded from.
pub(super) struct Layout<'g> {
    pub(super) graph: &'g Graph<'g>,
    pub(super) plan: &'g Plan,
    pub(super) libs: Vec<&'g ModuleInfo<'g>>,
    pub(super) remaps: Vec<Remap>,
    /// Every library's types, one after another.
    pub(super) types: TypeSection,
    /// The parameter count of each function type of `types`.
    pub(super) params: Vec<Option<usize>>,
    pub(super) type_base: Vec<u32>,
    /// The fused module's imports: instance, name, type.
    pub(super) externals: Vec<(u32, String, EntityType)>,
    pub(super) lates: Vec<Late>,
    /// The late functions' table in the fused module (their callers come
    /// after every library's functions).
    pub(super) late_table: u32,
    pub(super) main_table: u32,
    pub(super) main_table_type: wasmparser::TableType,
    /// The owner's table, imported, if its own code calls through it; and
    /// the slots it calls.
    pub(super) owner_table: Option<u32>,
    pub(super) forwarded: BTreeSet<u32>,
    /// The values of the constant globals, defined before the libraries'.
    pub(super) constants: Vec<i32>,
}

/// Build the fused module and the stubs.
pub(super) fn build(graph: &Graph, plan: &Plan) -> Result<Fused> {
    let lib_of: HashMap<u32, usize> = plan.libs.iter().enumerate().map(|(i, &l)| (l, i)).collect();
    let libs: Vec<&ModuleInfo> = plan
        .modules
        .iter()
        .map(|&m| &graph.modules[m as usize])
        .collect();

    // Where each import of each library goes.
    let mut links: Vec<Vec<Link>> = Vec::new();
    for (lib, info) in libs.iter().enumerate() {
        let CoreInstance::Module { args, .. } = &graph.instances[plan.libs[lib] as usize] else {
            bail!("a library is not a module instance");
        };
        let mut out = Vec::new();
        for (from, name, ty) in &info.imports {
            let kind = Kind::of_import(ty).context("a tag import")?;
            let arg = arg_named(args, from)?;
            let link = link(graph, plan, &lib_of, arg, name, kind)
                .with_context(|| format!("linking {from}.{name} of library {lib}"))?;
            out.push(link);
        }
        links.push(out);
    }

    let mut type_base = Vec::new();
    let mut func_types = Vec::new();
    for info in &libs {
        type_base.push(func_types.len() as u32);
        func_types.extend(func_types_of(info.bytes)?);
    }
    let params: Vec<Option<usize>> = func_types
        .iter()
        .map(|t| t.as_ref().map(|f| f.params().len()))
        .collect();

    // The main module's forwarders call functions of later libraries
    // through its table; a library's import of one links to the function
    // itself instead, where its type is the same.
    let owner_module = graph.module_of(plan.owner.0).context("owner")?;
    let owner_info = &graph.modules[owner_module as usize];
    let owner_table_index = owner_info.imported(Kind::Table) + plan.owner.1;
    let calls = owner_calls(owner_info, owner_table_index)?;
    if owner_info.element_segments > 0 {
        bail!("the main module has element segments");
    }
    let placed = placed_links(graph, plan, &libs, &links)?;
    let defined_types: Vec<Vec<u32>> = libs
        .iter()
        .map(|info| defined_func_types(info.bytes))
        .collect::<Result<_>>()?;
    let same_type = |a: u32, b: u32| match (&func_types[a as usize], &func_types[b as usize]) {
        (Some(a), Some(b)) => {
            a == b
                && a.params()
                    .iter()
                    .chain(a.results())
                    .all(|v| !matches!(v, wasmparser::ValType::Ref(_)))
        }
        _ => false,
    };
    for (lib, info) in libs.iter().enumerate() {
        for ((_, _, ty), link) in info.imports.iter().zip(links[lib].iter_mut()) {
            let (TypeRef::Func(t), Link::External { instance, name }) = (ty, &*link) else {
                continue;
            };
            if *instance != plan.owner.0 {
                continue;
            }
            let Some(&(Kind::Func, f)) = owner_info.exports.get(name) else {
                continue;
            };
            let Some(slot) = calls.forwarders.get(&f) else {
                continue;
            };
            if let Some(target @ Link::Internal { lib: to, index }) = placed.get(slot) {
                let to_type = type_base[*to] + defined_types[*to][*index as usize];
                if same_type(type_base[lib] + t, to_type) {
                    *link = target.clone();
                }
            }
        }
    }

    // A global no code writes, defined by a constant, needs no import:
    // its uses become that constant (the GOT entries, ~500 for CPython,
    // each an import resolved by name at every instantiation, and a load
    // at every use).
    fold_constant_globals(graph, &libs, &mut links);

    // The fused module's imports, and the late functions, each once.
    let mut externals: Vec<(u32, String, EntityType)> = Vec::new();
    let mut external_index: HashMap<(u32, String, Kind), u32> = HashMap::new();
    let mut lates: Vec<Late> = Vec::new();
    let mut late_index: HashMap<(u32, String), u32> = HashMap::new();
    let mut imported = [0u32; 4];
    for (lib, info) in libs.iter().enumerate() {
        for ((_, _, ty), link) in info.imports.iter().zip(&links[lib]) {
            let kind = Kind::of_import(ty).context("a tag import")?;
            let entity = match ty {
                TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                    EntityType::Function(type_base[lib] + t)
                }
                other => RoundtripReencoder.entity_type(*other).map_err(encode_err)?,
            };
            match link {
                Link::External { instance, name } => {
                    let key = (*instance, name.clone(), kind);
                    if let std::collections::hash_map::Entry::Vacant(slot) =
                        external_index.entry(key)
                    {
                        slot.insert(imported[kind.slot()]);
                        imported[kind.slot()] += 1;
                        externals.push((*instance, name.clone(), entity));
                    }
                }
                Link::Late { instance, name } => {
                    let key = (*instance, name.clone());
                    if late_index.contains_key(&key) {
                        continue;
                    }
                    let EntityType::Function(ty) = entity else {
                        bail!("a late import that is not a function");
                    };
                    // The first library instantiated after the function
                    // exists puts it in the table, before any code runs.
                    let host = plan
                        .libs
                        .iter()
                        .position(|&l| l > *instance)
                        .with_context(|| format!("{name} exists only after every library"))?;
                    late_index.insert(key, lates.len() as u32);
                    lates.push(Late {
                        instance: *instance,
                        name: name.clone(),
                        ty,
                        host,
                    });
                }
                Link::Internal { .. } | Link::MainTable | Link::Constant(_) => {}
            }
        }
    }

    // The slots of the main module's table its code still calls through:
    // the fused module writes them there too.
    let forwarded = if calls.only_forwarders && !graph.other_canon {
        let mut used = used_outside(graph, plan);
        for (lib, info) in libs.iter().enumerate() {
            for ((_, _, ty), link) in info.imports.iter().zip(&links[lib]) {
                if let (TypeRef::Func(_), Link::External { instance, name }) = (ty, link) {
                    if *instance == plan.owner.0 {
                        used.insert(name.clone());
                    }
                }
            }
        }
        used.iter()
            .filter_map(|n| match owner_info.exports.get(n) {
                Some(&(Kind::Func, f)) => calls.forwarders.get(&f).copied(),
                _ => None,
            })
            .collect()
    } else {
        calls.slots.clone()
    };
    let main_table_type = *owner_info
        .defined_tables
        .get(plan.owner.1 as usize)
        .context("the shared table")?;
    let owner_table = if forwarded.is_empty() {
        None
    } else {
        let name = owner_info
            .exports
            .iter()
            .find(|(_, &(k, i))| k == Kind::Table && i == owner_table_index)
            .map(|(n, _)| n.clone())
            .context("the shared table is not exported")?;
        let index = imported[Kind::Table.slot()];
        imported[Kind::Table.slot()] += 1;
        let ty = RoundtripReencoder
            .table_type(main_table_type)
            .map_err(encode_err)?;
        externals.push((plan.owner.0, name, EntityType::Table(ty)));
        Some(index)
    };
    let main_table = imported[Kind::Table.slot()];
    // The constants' globals come first among the defined ones.
    let mut constants: Vec<i32> = Vec::new();
    let mut constant_index: HashMap<i32, u32> = HashMap::new();
    for link in links.iter().flatten() {
        if let Link::Constant(v) = link {
            constant_index.entry(*v).or_insert_with(|| {
                constants.push(*v);
                imported[Kind::Global.slot()] + constants.len() as u32 - 1
            });
        }
    }

    // Each library's defined items, after every import and the libraries
    // before it; then the late functions' callers and their table.
    let mut next = imported;
    next[Kind::Table.slot()] += 1;
    next[Kind::Global.slot()] += constants.len() as u32;
    let mut defined_base = Vec::new();
    for info in &libs {
        defined_base.push(next);
        let counts = defined_counts(info)?;
        for k in 0..4 {
            next[k] += counts[k];
        }
    }
    let late_funcs = next[Kind::Func.slot()];
    let late_table = next[Kind::Table.slot()];
    let resolve = |link: &Link, kind: Kind| -> u32 {
        match link {
            Link::Internal { lib, index } => defined_base[*lib][kind.slot()] + index,
            Link::MainTable => main_table,
            Link::External { instance, name } => external_index[&(*instance, name.clone(), kind)],
            Link::Late { instance, name } => late_funcs + late_index[&(*instance, name.clone())],
            Link::Constant(v) => constant_index[v],
        }
    };
    let mut remaps = Vec::new();
    let (mut data, mut elements) = (0u32, 0u32);
    for (lib, info) in libs.iter().enumerate() {
        let mut spaces: [Vec<u32>; 4] = Default::default();
        let mut lib_constants = HashMap::new();
        for ((_, _, ty), link) in info.imports.iter().zip(&links[lib]) {
            let kind = Kind::of_import(ty).context("a tag import")?;
            if let Link::Constant(v) = link {
                lib_constants.insert(spaces[kind.slot()].len() as u32, *v);
            }
            spaces[kind.slot()].push(resolve(link, kind));
        }
        let counts = defined_counts(info)?;
        for k in 0..4 {
            spaces[k].extend((0..counts[k]).map(|i| defined_base[lib][k] + i));
        }
        let (d, e) = data_and_elements(info.bytes)?;
        remaps.push(Remap {
            types: type_base[lib],
            spaces,
            data,
            elements,
            constants: lib_constants,
        });
        data += d;
        elements += e;
    }
    let mut types = TypeSection::new();
    for (lib, info) in libs.iter().enumerate() {
        for payload in Parser::new(0).parse_all(info.bytes) {
            if let Payload::TypeSection(r) = payload? {
                for group in r {
                    remaps[lib]
                        .parse_recursive_type_group(types.ty(), group?)
                        .map_err(encode_err)?;
                }
            }
        }
    }

    let mut layout = Layout {
        graph,
        plan,
        libs,
        remaps,
        types,
        params,
        type_base,
        externals,
        lates,
        late_table,
        main_table,
        main_table_type,
        owner_table,
        forwarded,
        constants,
    };
    let module = layout.fused_module()?;
    let first = plan.libs[0];
    let mut stubs = Vec::new();
    for lib in 1..layout.libs.len() {
        let used = used_names(graph, plan, plan.libs[lib]);
        let (stub, hosted) = layout.stub(lib, &used)?;
        let mut args = vec![(FUSED.to_owned(), first)];
        args.extend(hosted.into_iter().map(|i| (arg_name(i), i)));
        stubs.push((stub, args));
    }
    let args: BTreeSet<u32> = layout.externals.iter().map(|(i, _, _)| *i).collect();
    Ok(Fused {
        module,
        args: args.into_iter().map(|i| (arg_name(i), i)).collect(),
        stubs,
    })
}

/// Turn each library's import of a global into [`Link::Constant`] where
/// that global is an `i32` defined by a constant that no module's code
/// writes and the library does not pass on as an export. If what is
/// written cannot be told, nothing is folded.
fn fold_constant_globals(graph: &Graph, libs: &[&ModuleInfo], links: &mut [Vec<Link>]) {
    let written = match written_globals(graph) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!("not folding constant globals: {e:#}");
            return;
        }
    };
    for (info, links) in libs.iter().zip(links.iter_mut()) {
        let exported: HashSet<u32> = info
            .exports
            .values()
            .filter(|(k, _)| *k == Kind::Global)
            .map(|(_, i)| *i)
            .collect();
        let mut global = 0u32;
        for ((_, _, ty), link) in info.imports.iter().zip(links.iter_mut()) {
            let TypeRef::Global(gt) = ty else {
                continue;
            };
            let index = global;
            global += 1;
            let Link::External { instance, name } = &*link else {
                continue;
            };
            if gt.content_type != wasmparser::ValType::I32 || exported.contains(&index) {
                continue;
            }
            let Ok(Some(defined)) = graph.defining(*instance, name, Kind::Global) else {
                continue;
            };
            let value = graph.module_of(defined.0).and_then(|m| {
                match graph.modules[m as usize].globals.get(defined.1 as usize) {
                    Some((t, Some(v))) if t.content_type == wasmparser::ValType::I32 => Some(*v),
                    _ => None,
                }
            });
            if let (Some(v), false) = (value, written.contains(&defined)) {
                *link = Link::Constant(v);
            }
        }
    }
}

/// Each type of `module`, none for a type that is not a function's.
pub(super) fn func_types_of(module: &[u8]) -> Result<Vec<Option<wasmparser::FuncType>>> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::TypeSection(r) = payload? {
            for group in r {
                for ty in group?.into_types() {
                    out.push(match ty.composite_type.inner {
                        wasmparser::CompositeInnerType::Func(f) => Some(f),
                        _ => None,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The type index of each function `module` defines.
pub(super) fn defined_func_types(module: &[u8]) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::FunctionSection(r) = payload? {
            for t in r {
                out.push(t?);
            }
        }
    }
    Ok(out)
}

/// How many functions, tables, memories and globals `info` defines.
pub(super) fn defined_counts(info: &ModuleInfo) -> Result<[u32; 4]> {
    let mut funcs = 0;
    for payload in Parser::new(0).parse_all(info.bytes) {
        if let Payload::FunctionSection(r) = payload? {
            funcs = r.count();
        }
    }
    Ok([
        funcs,
        info.defined_tables.len() as u32,
        info.defined_memories as u32,
        info.globals.len() as u32,
    ])
}

pub(super) fn data_and_elements(module: &[u8]) -> Result<(u32, u32)> {
    let (mut d, mut e) = (0, 0);
    for payload in Parser::new(0).parse_all(module) {
        match payload? {
            Payload::DataSection(r) => d = r.count(),
            Payload::ElementSection(r) => e = r.count(),
            _ => {}
        }
    }
    Ok((d, e))
}

impl Layout<'_> {
    /// Encode the fused module.
    pub(super) fn fused_module(&mut self) -> Result<Vec<u8>> {
        let mut imports = ImportSection::new();
        let mut functions = FunctionSection::new();
        let mut tables = TableSection::new();
        let mut globals = GlobalSection::new();
        let mut exports = ExportSection::new();
        let mut elements = ElementSection::new();
        let mut code = CodeSection::new();
        let mut data = DataSection::new();
        let mut data_count = 0u32;
        let mut names = wasm_encoder::NameMap::new();

        for (instance, name, entity) in &self.externals {
            imports.import(&arg_name(*instance), name, *entity);
        }
        tables.table(
            RoundtripReencoder
                .table_type(self.main_table_type)
                .map_err(encode_err)?,
        );
        // Mutable, as the GOT entries were: a library's code that cannot
        // run may still set one, and must still validate. Every read has
        // become the constant.
        for &v in &self.constants {
            globals.global(
                wasm_encoder::GlobalType {
                    val_type: wasm_encoder::ValType::I32,
                    mutable: true,
                    shared: false,
                },
                &ConstExpr::i32_const(v),
            );
        }
        // What the libraries put in the shared table, to copy the
        // forwarded slots from.
        let mut placed: BTreeMap<u32, u32> = BTreeMap::new();
        let mut exported = HashSet::new();
        for lib in 0..self.libs.len() {
            let info = self.libs[lib];
            for payload in Parser::new(0).parse_all(info.bytes) {
                let re = &mut self.remaps[lib];
                match payload? {
                    Payload::FunctionSection(r) => {
                        for t in r {
                            functions.function(re.type_index(t?).map_err(encode_err)?);
                        }
                    }
                    Payload::TableSection(r) => {
                        for t in r {
                            re.parse_table(&mut tables, t?).map_err(encode_err)?;
                        }
                    }
                    Payload::GlobalSection(r) => {
                        for g in r {
                            re.parse_global(&mut globals, g?).map_err(encode_err)?;
                        }
                    }
                    Payload::ExportSection(r) => {
                        for e in r {
                            let e = e?;
                            let kind = Kind::of_external(e.kind).context("a tag export")?;
                            let name = fused_export(lib, e.name);
                            if !exported.insert(name.clone()) {
                                bail!("two exports of the fused module would be named {name}");
                            }
                            let index = re.map(kind, e.index).map_err(encode_err)?;
                            exports.export(&name, kind.export_kind(), index);
                        }
                    }
                    Payload::ElementSection(r) => {
                        for e in r {
                            self.element(lib, e?, &mut elements, &mut placed)?;
                        }
                    }
                    Payload::DataSection(r) => {
                        for d in r {
                            re.parse_data(&mut data, d?).map_err(encode_err)?;
                            data_count += 1;
                        }
                    }
                    Payload::CodeSectionEntry(body) => {
                        re.parse_function_body(&mut code, body)
                            .map_err(encode_err)?;
                    }
                    // Trap backtraces in the log name the guest's
                    // functions: keep the libraries' names for their own.
                    Payload::CustomSection(c) => {
                        if let wasmparser::KnownCustom::Name(reader) = c.as_known() {
                            let imported = info.imported(Kind::Func);
                            for name in reader {
                                let Ok(wasmparser::Name::Function(map)) = name else {
                                    continue;
                                };
                                for naming in map {
                                    let naming = naming?;
                                    if naming.index >= imported {
                                        let index =
                                            re.map(Kind::Func, naming.index).map_err(encode_err)?;
                                        names.append(index, naming.name);
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if !self.lates.is_empty() {
            let n = self.lates.len() as u64;
            tables.table(wasm_encoder::TableType {
                element_type: wasm_encoder::RefType::FUNCREF,
                table64: false,
                minimum: n,
                maximum: Some(n),
                shared: false,
            });
            if !exported.insert(LATE_TABLE.to_owned()) {
                bail!("a library exports {LATE_TABLE}");
            }
            exports.export(LATE_TABLE, ExportKind::Table, self.late_table);
        }
        for (slot, late) in self.lates.iter().enumerate() {
            functions.function(late.ty);
            let params = self
                .params
                .get(late.ty as usize)
                .copied()
                .flatten()
                .context("a late function's type is not a function type")?;
            let mut f = wasm_encoder::Function::new([]);
            for p in 0..params as u32 {
                f.instruction(&wasm_encoder::Instruction::LocalGet(p));
            }
            f.instruction(&wasm_encoder::Instruction::I32Const(slot as i32));
            f.instruction(&wasm_encoder::Instruction::CallIndirect {
                type_index: late.ty,
                table_index: self.late_table,
            });
            f.instruction(&wasm_encoder::Instruction::End);
            code.function(&f);
        }
        // The owner's forwarders read its own table: write their slots
        // there, last, so wasmtime still precomputes every segment before.
        if let Some(owner_table) = self.owner_table {
            let mut runs: Vec<(u32, Vec<u32>)> = Vec::new();
            for &slot in &self.forwarded {
                let Some(&f) = placed.get(&slot) else {
                    continue;
                };
                match runs.last_mut() {
                    Some((at, run)) if *at + run.len() as u32 == slot => run.push(f),
                    _ => runs.push((slot, vec![f])),
                }
            }
            for (at, run) in runs {
                elements.active(
                    Some(owner_table),
                    &ConstExpr::i32_const(at as i32),
                    Elements::Functions(Cow::Owned(run)),
                );
            }
        }

        let mut module = wasm_encoder::Module::new();
        module.section(&self.types);
        module.section(&imports);
        module.section(&functions);
        module.section(&tables);
        module.section(&globals);
        module.section(&exports);
        module.section(&elements);
        module.section(&DataCountSection { count: data_count });
        module.section(&code);
        module.section(&data);
        let mut name_section = wasm_encoder::NameSection::new();
        name_section.functions(&names);
        module.section(&name_section);
        Ok(module.finish())
    }

    /// Re-encode element segment `e` of library `lib`, at a constant
    /// offset where it can be computed, noting what it puts in the shared
    /// table.
    pub(super) fn element(
        &mut self,
        lib: usize,
        e: wasmparser::Element,
        elements: &mut ElementSection,
        placed: &mut BTreeMap<u32, u32>,
    ) -> Result<()> {
        let re = &mut self.remaps[lib];
        let items = match e.items.clone() {
            ElementItems::Functions(f) => {
                let mut out = Vec::new();
                for f in f {
                    out.push(re.function_index(f?).map_err(encode_err)?);
                }
                Elements::Functions(Cow::Owned(out))
            }
            ElementItems::Expressions(ty, exprs) => {
                let mut out = Vec::new();
                for x in exprs {
                    out.push(re.const_expr(x?).map_err(encode_err)?);
                }
                Elements::Expressions(re.ref_type(ty).map_err(encode_err)?, Cow::Owned(out))
            }
        };
        match e.kind {
            ElementKind::Active {
                table_index,
                offset_expr,
            } => {
                let table = re
                    .table_index(table_index.unwrap_or(0))
                    .map_err(encode_err)?;
                let offset =
                    match constant_offset(self.graph, &offset_expr, lib, &self.libs, self.plan) {
                        Some(at) => {
                            if let (true, Elements::Functions(f)) =
                                (table == self.main_table, &items)
                            {
                                for (i, f) in f.iter().enumerate() {
                                    placed.insert(at + i as u32, *f);
                                }
                            }
                            ConstExpr::i32_const(at as i32)
                        }
                        // Still correct, only filled at every instantiation.
                        None => self.remaps[lib]
                            .const_expr(offset_expr)
                            .map_err(encode_err)?,
                    };
                elements.active(Some(table), &offset, items);
            }
            ElementKind::Passive => {
                elements.passive(items);
            }
            ElementKind::Declared => {
                elements.declared(items);
            }
        }
        Ok(())
    }

    /// A module that imports library `lib`'s `used` exports from the fused
    /// module and exports them under their own names, and puts the late
    /// functions it hosts in the fused module's late table; with the
    /// instances those come from.
    pub(super) fn stub(
        &self,
        lib: usize,
        used: &BTreeSet<(String, Kind)>,
    ) -> Result<(Vec<u8>, BTreeSet<u32>)> {
        let info = self.libs[lib];
        let base = self.type_base[lib];
        let entities: HashMap<String, EntityType> = core_modules::exported_entities(info.bytes)?
            .into_iter()
            .collect();
        let mut imports = ImportSection::new();
        let mut exports = ExportSection::new();
        let mut counts = [0u32; 4];
        for (name, kind) in used {
            // The fused module's types are every library's, one after
            // another.
            let entity = match (kind, entities.get(name)) {
                (Kind::Func, Some(EntityType::Function(t))) => EntityType::Function(base + t),
                (Kind::Table, Some(e @ EntityType::Table(_)))
                | (Kind::Memory, Some(e @ EntityType::Memory(_)))
                | (Kind::Global, Some(e @ EntityType::Global(_))) => *e,
                _ => continue,
            };
            imports.import(FUSED, &fused_export(lib, name), entity);
            exports.export(name, kind.export_kind(), counts[kind.slot()]);
            counts[kind.slot()] += 1;
        }
        let mut elements = ElementSection::new();
        let mut hosted = BTreeSet::new();
        let n = self.lates.len() as u64;
        let late_table = counts[Kind::Table.slot()];
        let mut table_imported = false;
        for (slot, late) in self.lates.iter().enumerate() {
            if late.host != lib {
                continue;
            }
            if !table_imported {
                imports.import(
                    FUSED,
                    LATE_TABLE,
                    EntityType::Table(wasm_encoder::TableType {
                        element_type: wasm_encoder::RefType::FUNCREF,
                        table64: false,
                        minimum: n,
                        maximum: Some(n),
                        shared: false,
                    }),
                );
                table_imported = true;
            }
            imports.import(
                &arg_name(late.instance),
                &late.name,
                EntityType::Function(late.ty),
            );
            hosted.insert(late.instance);
            elements.active(
                Some(late_table),
                &ConstExpr::i32_const(slot as i32),
                Elements::Functions(Cow::Owned(vec![counts[Kind::Func.slot()]])),
            );
            counts[Kind::Func.slot()] += 1;
        }
        let mut module = wasm_encoder::Module::new();
        module.section(&self.types);
        module.section(&imports);
        module.section(&exports);
        module.section(&elements);
        Ok((module.finish(), hosted))
    }
}
