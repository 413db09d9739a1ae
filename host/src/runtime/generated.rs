//! The only `bindgen!`, kept private: host-side types generated from
//! `wit/wsgi.wit`, re-exported under the names the runtime uses.
//!
//! Host imports are `async` so `read-body` and `write` can await hyper's body
//! and the response channel while the guest sees ordinary blocking calls.
//! They are not `trappable`: every misuse a guest can make of them (a
//! second `start`, a `write` before `start`, a call after the client left)
//! has a safe answer (`false` or an error value) that the guest adapter
//! turns into the right Python exception, while a trap would throw away a
//! warm instance for what a buggy app can do by itself.

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wsgi-app",
        imports: { "rsgi-wasm:wsgi/tls": async | trappable, default: async },
        exports: { default: async },
        with: { "rsgi-wasm:wsgi/tls.client": crate::runtime::tls_session::Session },
    });
}

pub use bindings::rsgi_wasm::wsgi::request::{self, BodyError, Host as RequestHost};
pub use bindings::rsgi_wasm::wsgi::response::{self, Host as ResponseHost, SendFileError};
pub use bindings::rsgi_wasm::wsgi::tls;
pub use bindings::{WsgiApp, WsgiAppPre};
