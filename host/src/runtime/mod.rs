//! The guest side: compiled components, their sandboxes and instances,
//! and one request crossing the WIT boundary.
//!
//! `tenant` loads an app on its first request and unloads it when idle →
//! `engine` compiles and links → `pool` keeps instances (each a `store`
//! built by `sandbox`) and runs them under `cpu`'s run slots → `wsgi`
//! implements the imports a guest calls, moving bytes through `body`;
//! a `wasi-http` component is called through `wasi_http` instead. What a
//! guest may reach over the network is `outbound`'s call, and its TLS is
//! `tls_client`'s; its files and sockets are counted by `quota_fs` and
//! `socket_slots`, and its sends finished by `tcp_sends`.

mod artifact_sums;
pub mod asked;
pub mod body;
pub mod core_modules;
pub mod cpu;
mod disk_quota;
pub mod engine;
pub mod environ;
mod exec_stdio;
mod file_map;
mod file_reads;
mod file_writes;
pub mod fuse;
mod generated;
mod guest_clock;
mod guest_log;
mod held_bytes;
pub mod instance_slots;
mod lock_dirs;
mod module_deltas;
pub mod outbound;
pub mod pool;
mod quota_fs;
pub mod sandbox;
mod slot_pages;
pub mod snapshot_pages;
mod socket_slots;
mod socket_states;
pub mod store;
mod tcp_sends;
pub mod tenant;
pub mod tls_client;
mod tls_session;
pub mod wasi_http;
pub mod wsgi;

pub use disk_quota::{Ledger as QuotaLedger, WarnEvery};
pub use guest_log::{visible, visible_lines};
pub use held_bytes::set as limit_held_bytes;
pub use quota_fs::guests_share;
pub use tcp_sends::finish_closed_sends;

/// The status a guest exited with, if `error` is its call to
/// `wasi:cli/exit` (`os._exit`, or C code's `exit`) rather than a crash.
/// WASI 0.2 carries success or failure only: 0 or 1.
pub fn exit_status(error: &wasmtime::Error) -> Option<i32> {
    error
        .downcast_ref::<wasmtime_wasi::I32Exit>()
        .map(|exit| exit.0)
}
