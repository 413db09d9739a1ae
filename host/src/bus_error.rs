//! Says why the process died when a file it maps shrank under it.
//!
//! wasmtime runs compiled code mapped from the artifact cache. A file cut
//! short while mapped (`truncate`, `cp` or `rsync --inplace` over it; the
//! cache writes its files read-only and replaces them whole, but root
//! ignores the mode) makes the next read of a page past its new end a
//! SIGBUS, which nothing can recover from: the code is gone. wasmtime
//! handles the faults that are a guest's own (a trap ends that instance)
//! and passes the others to the handler installed before its own; this
//! one writes a line naming the likely cause, then lets the signal end
//! the process as it would have.

/// Install the handler; before any engine exists, so wasmtime's handler
/// passes the faults it does not own to it.
pub fn install() {
    // SAFETY: `sigaction` with a zeroed, then filled, action; the handler
    // only makes async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_bus_error as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            tracing::debug!(
                "cannot install the SIGBUS handler: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

extern "C" fn on_bus_error(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    const MESSAGE: &[u8] = b"rsgi-wasm: fatal: SIGBUS, a mapped file was cut short. Was a \
compiled artifact in the cache truncated or written over in place while the server ran? \
Never edit the cache's files in place: remove them, or the whole cache, and restart \
(docs/deploy.md, \"The cache directory\").\n";
    // SAFETY: `write` and `sigaction` are async-signal-safe. The default
    // action is set explicitly, not with SA_RESETHAND: wasmtime calls
    // this function from its own handler, and the kernel's disposition
    // is then still wasmtime's. Returning runs the access again, which
    // now ends the process.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
    }
}
