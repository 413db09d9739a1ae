//! rsgi-wasm: serve Python WSGI apps, each in its own WebAssembly sandbox.
//!
//! Request path: `server` (hyper) → `head_rules` (RFC 9112 checks) →
//! `environ` (CGI keys) → `pool` (a warm instance, run under `cpu`'s fair
//! run slots) → `wsgi` (the WIT calls, streamed both ways) → guest adapter.
//! Build path: `build` (componentize-py) → a component `engine` compiles
//! once and caches; `cachefs` publishes into the shared cache.
//! Sandbox: `sandbox` builds each instance's WASI context; `quota_fs`
//! charges its file writes to `disk_quota` ledgers; `guest_log` takes its
//! stdout/stderr, rate-limited.

pub mod bindings;
pub mod build;
pub mod bundle;
pub mod cachefs;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cpu;
pub mod deps;
pub mod disk_quota;
pub mod engine;
pub mod environ;
pub mod guest_log;
pub mod head_rules;
pub mod pool;
pub mod quota_fs;
pub mod sandbox;
pub mod sendfile;
pub mod server;
pub mod static_files;
pub mod tenants;
pub mod wsgi;
