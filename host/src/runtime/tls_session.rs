//! One guest TLS session as the instance's resource table holds it (the
//! WIT `tls.client` resource), kept apart from `tls_client` so the
//! bindings can name it without importing the code that uses them.

use std::sync::Arc;

use rustls::ClientConnection;

use crate::runtime::outbound::Outbound;

/// A rustls client session and what its errors and counts need.
pub struct Session {
    /// The TLS state machine; the guest moves its records.
    pub conn: ClientConnection,
    /// The name the app asked for (for error messages).
    pub server: String,
    /// Where its bytes are counted.
    pub outbound: Arc<Outbound>,
}
