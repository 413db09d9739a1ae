//! What initialising CPython's function table costs a fresh instance, and
//! what it would cost if the table could be initialised lazily (issue 15,
//! "fresh instances"): 5,300 functions put in a funcref table by an element
//! segment, (a) as componentize-py lays it out, a table imported from the
//! module that defines it and a segment at an offset read from an imported
//! global, against (b) a table the module defines itself, filled at a
//! constant offset, which wasmtime initialises lazily.
//!
//! Not part of the build. Run it with the crate's wasmtime:
//! `cp bench/table_init.rs host/examples/ && cargo run --release --example
//! table_init [ENTRIES]; rm host/examples/table_init.rs`.
use std::time::Instant;

use wasmtime::{Engine, Instance, Module, Result, Store};

fn funcs(n: usize) -> String {
    (0..n).map(|i| format!("(func $f{i} (result i32) i32.const {i})\n")).collect()
}
fn names(n: usize) -> String {
    (0..n).map(|i| format!(" $f{i}")).collect()
}

fn main() -> Result<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(5300);
    let size = n + 400;
    let engine = Engine::default();
    let definer = Module::new(&engine, format!(
        "(module (memory (export \"m\") 1) (table (export \"t\") {size} funcref) (global (export \"base\") i32 (i32.const 10)))"))?;
    let lib = Module::new(&engine, format!(
        "(module (import \"env\" \"t\" (table {size} funcref)) (import \"env\" \"base\" (global i32)) {} (elem (table 0) (global.get 0) func{}))",
        funcs(n), names(n)))?;
    let fused = Module::new(&engine, format!(
        "(module (memory 1) (table {size} funcref) {} (elem (i32.const 10) func{}) (func (export \"call\") (param i32) (result i32) local.get 0 call_indirect (result i32)))",
        funcs(n), names(n)))?;
    let iters = 3000;
    for round in 0..2 {
        let t = Instant::now();
        for _ in 0..iters {
            let mut store = Store::new(&engine, ());
            let d = Instance::new(&mut store, &definer, &[])?;
            let table = d.get_table(&mut store, "t").unwrap();
            let base = d.get_global(&mut store, "base").unwrap();
            Instance::new(&mut store, &lib, &[table.into(), base.into()])?;
        }
        let eager = t.elapsed().as_secs_f64() / iters as f64 * 1e6;
        let t = Instant::now();
        for _ in 0..iters {
            let mut store = Store::new(&engine, ());
            Instance::new(&mut store, &fused, &[])?;
        }
        let lazy = t.elapsed().as_secs_f64() / iters as f64 * 1e6;
        // Lazy, then 500 distinct slots called (what a request might use).
        let t = Instant::now();
        for _ in 0..iters {
            let mut store = Store::new(&engine, ());
            let i = Instance::new(&mut store, &fused, &[])?;
            let call = i.get_typed_func::<i32, i32>(&mut store, "call")?;
            for k in 0..500 {
                call.call(&mut store, 10 + (k * 7 % n as i32))?;
            }
        }
        let lazy_used = t.elapsed().as_secs_f64() / iters as f64 * 1e6;
        println!("round {round}: {n} entries: imported table, segment at an imported offset {eager:.1} us; defined table, constant offset {lazy:.1} us; the same then 500 slots called {lazy_used:.1} us");
    }
    Ok(())
}
