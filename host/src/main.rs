//! The binary: everything is in the library's `main`.

// perf showed glibc's malloc (free lists, consolidation) at ~9% of a pooled
// hello request; with mimalloc hello at c=32 rose ~4% in A/B runs.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    rsgi_wasm::main()
}
