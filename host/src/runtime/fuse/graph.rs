//! Reads a component's top level as the fusion needs it: its core modules
//! (imports, exports, constant globals), its core instances, and where each
//! item of its core index spaces came from.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use anyhow::{bail, Context, Result};
use wasm_encoder::ExportKind;
use wasmparser::{
    CanonicalFunction, CanonicalOption, ComponentAlias, ExternalKind, Instance, Operator, Parser,
    Payload, TypeRef,
};

use crate::runtime::core_modules;

/// A core item's kind: functions, tables, memories, globals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub(super) enum Kind {
    Func,
    Table,
    Memory,
    Global,
}

impl Kind {
    pub(super) fn of_external(kind: ExternalKind) -> Option<Kind> {
        match kind {
            ExternalKind::Func | ExternalKind::FuncExact => Some(Kind::Func),
            ExternalKind::Table => Some(Kind::Table),
            ExternalKind::Memory => Some(Kind::Memory),
            ExternalKind::Global => Some(Kind::Global),
            ExternalKind::Tag => None,
        }
    }

    pub(super) fn of_import(ty: &TypeRef) -> Option<Kind> {
        match ty {
            TypeRef::Func(_) | TypeRef::FuncExact(_) => Some(Kind::Func),
            TypeRef::Table(_) => Some(Kind::Table),
            TypeRef::Memory(_) => Some(Kind::Memory),
            TypeRef::Global(_) => Some(Kind::Global),
            TypeRef::Tag(_) => None,
        }
    }

    pub(super) fn export_kind(self) -> ExportKind {
        match self {
            Kind::Func => ExportKind::Func,
            Kind::Table => ExportKind::Table,
            Kind::Memory => ExportKind::Memory,
            Kind::Global => ExportKind::Global,
        }
    }

    pub(super) fn slot(self) -> usize {
        self as usize
    }
}

/// What the fusion needs to know of one core module.
pub(super) struct ModuleInfo<'a> {
    pub(super) bytes: &'a [u8],
    /// Imports in order: module, name, type.
    pub(super) imports: Vec<(String, String, TypeRef)>,
    /// Imports by kind, each as its index in `imports`.
    pub(super) imports_of: [Vec<usize>; 4],
    pub(super) exports: HashMap<String, (Kind, u32)>,
    /// Each defined global: its type and its value if its initialiser is
    /// an `i32.const`.
    pub(super) globals: Vec<(wasmparser::GlobalType, Option<i32>)>,
    pub(super) defined_tables: Vec<wasmparser::TableType>,
    pub(super) defined_memories: usize,
    pub(super) has_start: bool,
    pub(super) has_tags: bool,
    pub(super) element_segments: usize,
    pub(super) data_segments: usize,
}

impl<'a> ModuleInfo<'a> {
    pub(super) fn read(bytes: &'a [u8]) -> Result<Self> {
        let mut m = ModuleInfo {
            bytes,
            imports: Vec::new(),
            imports_of: Default::default(),
            exports: HashMap::new(),
            globals: Vec::new(),
            defined_tables: Vec::new(),
            defined_memories: 0,
            has_start: false,
            has_tags: false,
            element_segments: 0,
            data_segments: 0,
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::ImportSection(r) => {
                    for import in r.into_imports() {
                        let import = import?;
                        match Kind::of_import(&import.ty) {
                            Some(kind) => m.imports_of[kind.slot()].push(m.imports.len()),
                            None => m.has_tags = true,
                        }
                        m.imports
                            .push((import.module.into(), import.name.into(), import.ty));
                    }
                }
                Payload::ExportSection(r) => {
                    for export in r {
                        let export = export?;
                        match Kind::of_external(export.kind) {
                            Some(kind) => {
                                m.exports.insert(export.name.into(), (kind, export.index));
                            }
                            None => m.has_tags = true,
                        }
                    }
                }
                Payload::GlobalSection(r) => {
                    for global in r {
                        let global = global?;
                        let mut ops = global.init_expr.get_operators_reader();
                        let value = match (ops.read(), ops.read()) {
                            (Ok(Operator::I32Const { value }), Ok(Operator::End)) => Some(value),
                            _ => None,
                        };
                        m.globals.push((global.ty, value));
                    }
                }
                Payload::TableSection(r) => {
                    for table in r {
                        m.defined_tables.push(table?.ty);
                    }
                }
                Payload::MemorySection(r) => m.defined_memories += r.count() as usize,
                Payload::StartSection { .. } => m.has_start = true,
                Payload::TagSection(_) => m.has_tags = true,
                Payload::ElementSection(r) => m.element_segments += r.count() as usize,
                Payload::DataSection(r) => m.data_segments += r.count() as usize,
                _ => {}
            }
        }
        Ok(m)
    }

    pub(super) fn imported(&self, kind: Kind) -> u32 {
        self.imports_of[kind.slot()].len() as u32
    }

    /// The `index`th import of `kind`: module and name.
    pub(super) fn import_of(&self, kind: Kind, index: u32) -> Option<(&str, &str)> {
        let i = *self.imports_of[kind.slot()].get(index as usize)?;
        let (module, name, _) = &self.imports[i];
        Some((module, name))
    }
}

/// A core instance of the component.
pub(super) enum CoreInstance {
    /// An instantiation of a module, with its arguments.
    Module {
        module: u32,
        args: Vec<(String, u32)>,
    },
    /// A bundle of items already defined: name, kind, index.
    Bag(Vec<(String, Option<Kind>, u32)>),
}

/// Where an item of the component's core index spaces came from.
#[derive(Clone)]
pub(super) enum Origin {
    Alias { instance: u32, name: String },
    Canon,
}

/// The component's top level as the fusion reads it.
pub(super) struct Graph<'a> {
    pub(super) modules: Vec<ModuleInfo<'a>>,
    pub(super) module_ranges: Vec<Range<usize>>,
    pub(super) instances: Vec<CoreInstance>,
    /// The origin of each item of each core index space, by `Kind::slot`.
    pub(super) origins: [Vec<Origin>; 4],
    /// Core functions the component's own definitions use (lifts, their
    /// options, lowerings' options, resource destructors).
    pub(super) canon_uses: HashSet<u32>,
    /// Whether a canonical definition of a kind this does not read was
    /// seen (then `canon_uses` is not the whole story).
    pub(super) other_canon: bool,
}

impl<'a> Graph<'a> {
    pub(super) fn read(component: &'a [u8]) -> Result<Self> {
        let mut g = Graph {
            modules: Vec::new(),
            module_ranges: Vec::new(),
            instances: Vec::new(),
            origins: Default::default(),
            canon_uses: HashSet::new(),
            other_canon: false,
        };
        let mut depth = 0usize;
        for payload in Parser::new(0).parse_all(component) {
            let payload = payload?;
            match &payload {
                Payload::Version { .. } => {
                    depth += 1;
                    continue;
                }
                Payload::End(_) => {
                    depth = depth.saturating_sub(1);
                    continue;
                }
                _ if depth != 1 => continue,
                _ => {}
            }
            match payload {
                // A nested component instantiating one of these modules
                // itself would get a stub or the fused module.
                Payload::ComponentSection {
                    unchecked_range, ..
                } if core_modules::aliases_outer_modules(&component[unchecked_range.clone()])? => {
                    bail!("a nested component uses the component's own modules");
                }
                Payload::ModuleSection {
                    unchecked_range, ..
                } => {
                    g.modules
                        .push(ModuleInfo::read(&component[unchecked_range.clone()])?);
                    g.module_ranges.push(unchecked_range);
                }
                Payload::InstanceSection(r) => {
                    for instance in r {
                        g.instances.push(match instance? {
                            Instance::Instantiate { module_index, args } => CoreInstance::Module {
                                module: module_index,
                                args: args.iter().map(|a| (a.name.into(), a.index)).collect(),
                            },
                            Instance::FromExports(items) => CoreInstance::Bag(
                                items
                                    .iter()
                                    .map(|e| (e.name.into(), Kind::of_external(e.kind), e.index))
                                    .collect(),
                            ),
                        });
                    }
                }
                Payload::ComponentAliasSection(r) => {
                    for alias in r {
                        match alias? {
                            ComponentAlias::CoreInstanceExport {
                                kind,
                                instance_index,
                                name,
                            } => {
                                let Some(kind) = Kind::of_external(kind) else {
                                    bail!("a tag alias");
                                };
                                g.origins[kind.slot()].push(Origin::Alias {
                                    instance: instance_index,
                                    name: name.into(),
                                });
                            }
                            // Core items from an enclosing component, or
                            // modules and instances from elsewhere: not a
                            // shape this knows.
                            ComponentAlias::Outer { .. } => bail!("an outer alias"),
                            ComponentAlias::InstanceExport {
                                kind: wasmparser::ComponentExternalKind::Module,
                                ..
                            } => bail!("a module from another instance"),
                            ComponentAlias::InstanceExport { .. } => {}
                        }
                    }
                }
                Payload::ComponentCanonicalSection(r) => {
                    for func in r {
                        let func = func?;
                        let options = match &func {
                            CanonicalFunction::Lift {
                                core_func_index,
                                options,
                                ..
                            } => {
                                g.canon_uses.insert(*core_func_index);
                                &options[..]
                            }
                            CanonicalFunction::Lower { options, .. } => &options[..],
                            CanonicalFunction::ResourceNew { .. }
                            | CanonicalFunction::ResourceDrop { .. }
                            | CanonicalFunction::ResourceRep { .. } => &[],
                            _ => {
                                g.other_canon = true;
                                &[]
                            }
                        };
                        for option in options {
                            if let CanonicalOption::Realloc(f)
                            | CanonicalOption::PostReturn(f)
                            | CanonicalOption::Callback(f) = option
                            {
                                g.canon_uses.insert(*f);
                            }
                        }
                        // Everything but a lift defines a core function.
                        if !matches!(func, CanonicalFunction::Lift { .. }) {
                            g.origins[Kind::Func.slot()].push(Origin::Canon);
                        }
                    }
                }
                Payload::ComponentTypeSection(r) => {
                    for ty in r {
                        if let wasmparser::ComponentType::Resource { dtor: Some(f), .. } = ty? {
                            g.canon_uses.insert(f);
                        }
                    }
                }
                Payload::ComponentImportSection(r) => {
                    for import in r {
                        if matches!(import?.ty, wasmparser::ComponentTypeRef::Module(_)) {
                            bail!("a module import");
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(g)
    }

    /// The module an instance instantiates, if it does.
    pub(super) fn module_of(&self, instance: u32) -> Option<u32> {
        match self.instances.get(instance as usize)? {
            CoreInstance::Module { module, .. } => Some(*module),
            CoreInstance::Bag(_) => None,
        }
    }

    /// Where export `name` of an instance of `module` (given `args`)
    /// comes from: defined there, or one of its imports.
    pub(super) fn export_hop(
        &self,
        module: u32,
        args: &[(String, u32)],
        name: &str,
        kind: Kind,
    ) -> Result<Hop> {
        let m = &self.modules[module as usize];
        let &(k, index) = m
            .exports
            .get(name)
            .with_context(|| format!("module {module} exports no {name}"))?;
        if k != kind {
            bail!("{name} of module {module} is not a {kind:?}");
        }
        if index >= m.imported(kind) {
            return Ok(Hop::Defined(index - m.imported(kind)));
        }
        let (from, field) = m.import_of(kind, index).context("bad import")?;
        Ok(Hop::Next(arg_named(args, from)?, field.to_owned()))
    }

    /// Follow `name` of `instance` through bags and re-exported imports to
    /// the instance that defines it, and its defined index there. None for
    /// a function a canonical definition made.
    pub(super) fn defining(
        &self,
        instance: u32,
        name: &str,
        kind: Kind,
    ) -> Result<Option<(u32, u32)>> {
        let mut at = (instance, name.to_owned());
        // Every step goes to an earlier instance or item, so this ends; the
        // bound only keeps a malformed component from looping.
        for _ in 0..10_000 {
            let (instance, name) = &at;
            match self.instances.get(*instance as usize) {
                Some(CoreInstance::Module { module, args }) => {
                    match self.export_hop(*module, args, name, kind)? {
                        Hop::Defined(index) => return Ok(Some((*instance, index))),
                        Hop::Next(arg, field) => at = (arg, field),
                    }
                }
                Some(CoreInstance::Bag(items)) => {
                    let index = bag_member(items, name, kind)?;
                    match &self.origins[kind.slot()].get(index as usize) {
                        Some(Origin::Alias { instance, name }) => at = (*instance, name.clone()),
                        Some(Origin::Canon) => return Ok(None),
                        None => bail!("core {kind:?} {index} is not defined"),
                    }
                }
                None => bail!("core instance {instance} is not defined"),
            }
        }
        bail!("an import chain does not end")
    }
}

/// The instance a module instance was given as its import module `from`.
pub(super) fn arg_named(args: &[(String, u32)], from: &str) -> Result<u32> {
    args.iter()
        .find(|(n, _)| n == from)
        .map(|(_, i)| *i)
        .with_context(|| format!("no argument {from}"))
}

/// One step along an export of a module instance.
pub(super) enum Hop {
    /// Defined by the module: its index among the module's own items.
    Defined(u32),
    /// One of its imports: the argument instance and the name there.
    Next(u32, String),
}

pub(super) fn bag_member(
    items: &[(String, Option<Kind>, u32)],
    name: &str,
    kind: Kind,
) -> Result<u32> {
    items
        .iter()
        .find(|(n, k, _)| n == name && *k == Some(kind))
        .map(|(_, _, i)| *i)
        .with_context(|| format!("no {kind:?} {name} in a bundle"))
}
