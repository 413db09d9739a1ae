//! Which request a line about a body or an instance is about: the app,
//! the client's address, the method and the target.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::runtime::guest_log;

/// A request's client, method and target as the access line has them,
/// shown (`GET /x?y`) only when a line about the request's end is written.
#[derive(Debug)]
pub struct Asked {
    /// The client's address and port: clients behind one proxy or NAT
    /// share an address, and the connection's own lines name both.
    pub peer: SocketAddr,
    /// The method.
    pub method: http::Method,
    /// The target, clipped.
    pub target: Arc<str>,
    /// Its body turned out malformed (see [`Asked::mark_malformed`]).
    malformed: AtomicBool,
}

impl Asked {
    /// The request from `peer`, as its head asked.
    pub fn new(peer: SocketAddr, method: http::Method, target: Arc<str>) -> Self {
        Asked {
            peer,
            method,
            target,
            malformed: AtomicBool::new(false),
        }
    }

    /// Its body was malformed, the client's fault (an HTTP/2 body not the
    /// length it declared): if the request ends with no response because
    /// h2 reset its stream for it, hyper drops the request, which would
    /// otherwise be logged as a client that left.
    pub fn mark_malformed(&self) {
        self.malformed.store(true, Ordering::Relaxed);
    }

    /// Whether its body was found malformed.
    pub fn malformed(&self) -> bool {
        self.malformed.load(Ordering::Relaxed)
    }
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, guest_log::visible(&self.target))
    }
}

/// The app and request a body belongs to, named in the lines about it (a
/// response cut short, a request body given up on): with many clients of
/// one app, the operator needs to know which one, to match the line with
/// its access line.
#[derive(Debug, Clone, Default)]
pub struct About {
    app: Option<Arc<str>>,
    asked: Option<Arc<Asked>>,
}

impl About {
    /// The body of `asked`, answered by `app` (none: no app was routed to).
    pub fn request(app: Option<Arc<str>>, asked: Arc<Asked>) -> Self {
        About {
            app,
            asked: Some(asked),
        }
    }

    /// The request named, if any.
    pub fn asked(&self) -> Option<&Asked> {
        self.asked.as_deref()
    }

    /// The app named, if any.
    pub fn app_name(&self) -> Option<&Arc<str>> {
        self.app.as_ref()
    }

    /// Write `line` at INFO, with the app and request as the pool's lines
    /// name them, and the client's address.
    pub fn info(&self, line: &str) {
        about!(tracing::Level::INFO, self, line);
    }

    /// Write `line` at WARN, as [`info`](Self::info) does.
    pub fn warn(&self, line: &str) {
        about!(tracing::Level::WARN, self, line);
    }
}

/// One line at `level` naming what `about` knows.
macro_rules! about {
    ($level:expr, $about:expr, $line:expr) => {
        match ($about.app.as_deref(), $about.asked.as_deref()) {
            (Some(app), Some(a)) => tracing::event!($level, app = %app, request = %a, peer = %a.peer, "{}", $line),
            (None, Some(a)) => tracing::event!($level, request = %a, peer = %a.peer, "{}", $line),
            (Some(app), None) => tracing::event!($level, app = %app, "{}", $line),
            (None, None) => tracing::event!($level, "{}", $line),
        }
    };
}
use about;
