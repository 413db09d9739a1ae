//! What host and guest agree on beyond the WIT types, defined once here
//! and given to the guest at build time.

/// What the guest prints in front of each line of a user-facing error about
/// the app (`MARKER` in guest/rsgi_wasm_guest/boot.py): a build reports
/// them, and a live build's instance logs them as errors.
pub const BUILD_ERROR_MARKER: &str = "rsgi-wasm-build-error: ";

/// What the guest prints in front of a warning about the app that holds
/// for every instance (`WARN_ONCE` in guest/rsgi_wasm_guest/compat.py):
/// logged once per app, at WARN, however many instances say it.
pub const WARN_ONCE_MARKER: &str = "rsgi-wasm-warning: ";

/// How the guest's own failures start (`ADAPTER_ERROR` in
/// guest/rsgi_wasm_guest/protocol.py): the instance that had one is replaced.
pub const ADAPTER_ERROR: &str = "rsgi-wasm adapter error";

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
