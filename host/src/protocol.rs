//! What host and guest agree on beyond the WIT types, defined once here
//! and given to the guest at build time.

/// The keys every environ has, in this order. Their values come first in
/// `runtime::environ::Environ::values` and their names are not sent: the guest knows them
/// (`rsgi-wasm build` hands them to the guest adapter in its boot
/// arguments; see `handle` in `wit/wsgi.wit`).
pub const FIXED_KEYS: [&str; 12] = [
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "RAW_URI",
    "REQUEST_URI",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
];
