//! The user-facing error: a mistake the user can fix, printed without a
//! Rust error chain (see `report` in lib.rs, the one place errors print).

/// A problem the user must fix (a flag, a file, the app).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);
