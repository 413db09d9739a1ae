//! The guest side: compiled components, their sandboxes and instances,
//! and one request crossing the WIT boundary.
//!
//! `tenant` loads an app on its first request and unloads it when idle →
//! `engine` compiles and links → `pool` keeps instances (each a `store`
//! built by `sandbox`) and runs them under `cpu`'s run slots → `wsgi`
//! implements the imports a guest calls, moving bytes through `body`;
//! a `wasi-http` component is called through `wasi_http` instead. What a
//! guest may reach over the network is `outbound`'s call, and its TLS is
//! `tls_client`'s.

pub mod body;
pub mod core_modules;
pub mod cpu;
mod disk_quota;
pub mod engine;
pub mod environ;
mod generated;
mod guest_log;
pub mod outbound;
pub mod pool;
mod quota_fs;
pub mod sandbox;
mod scratch;
pub mod snapshot_pages;
pub mod store;
pub mod tenant;
pub mod tls_client;
mod tls_session;
pub mod wasi_http;
pub mod wsgi;
