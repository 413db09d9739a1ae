//! The binary: everything is in the library's `main`.

fn main() -> std::process::ExitCode {
    rsgi_wasm::main()
}
