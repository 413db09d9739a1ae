//! The HTTP side: the accept loop and the one entrance every request goes
//! through, the checks a request head must pass, routing to a tenant, and
//! static files answered without entering a guest.

pub mod access;
pub mod conn_idle;
pub mod head_rules;
pub mod ops;
pub mod router;
pub mod server;
pub mod static_files;
pub mod tls;
pub mod write_deadline;
