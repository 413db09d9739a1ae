//! The only `bindgen!`: host-side types generated from `wit/wsgi.wit`.
//!
//! Host imports are `async` so `read-body` and `write` can await hyper's body
//! and the response channel while the guest sees ordinary blocking calls.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "wsgi-app",
    imports: { default: async },
    exports: { default: async },
});

pub use self::rsgi_wasm::wsgi::request::BodyError;
pub use self::rsgi_wasm::wsgi::response::SendFileError;
