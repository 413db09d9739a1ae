//! Host and path → the tenant that serves them, and its `SCRIPT_NAME`.

use std::sync::Arc;

use crate::http::static_files::StaticFiles;
use crate::runtime::pool::AppPool;

/// One routing entry.
pub struct Route {
    /// Host patterns (lower-case); empty = any host.
    pub hosts: Vec<String>,
    /// Mount point (`""` = root).
    pub prefix: String,
    /// The app.
    pub app: Arc<AppPool>,
    /// The tenant's static mounts, answered before its app.
    pub statics: Arc<StaticFiles>,
}

/// Host + path → app. Immutable; reloads build a new one and swap it in.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// How well `pattern` (`example.com` or `*.example.com`) names `host`:
/// 2 for the exact name, 1 for a wildcard covering a subdomain, none if
/// it does not match. Routing and TLS certificates rank hosts alike.
pub fn host_rank(pattern: &str, host: &str) -> Option<u8> {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
            .then_some(1),
        None => (pattern == host).then_some(2),
    }
}

impl Router {
    /// A router over `routes`.
    pub fn new(routes: Vec<Route>) -> Self {
        Router { routes }
    }

    /// A router that sends everything to one app at the root.
    pub fn single(app: Arc<AppPool>, statics: StaticFiles) -> Self {
        Router::new(vec![Route {
            hosts: Vec::new(),
            prefix: String::new(),
            app,
            statics: Arc::new(statics),
        }])
    }

    /// The route for `host` (without port, any case) and raw `path`; its
    /// prefix is the `SCRIPT_NAME`. Exact host beats a wildcard beats any
    /// host; then the longest prefix that ends at a segment boundary wins.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(|h| h.to_ascii_lowercase());
        let host_rank = |r: &Route| -> Option<u8> {
            if r.hosts.is_empty() {
                return Some(0);
            }
            let h = host.as_deref()?;
            r.hosts.iter().filter_map(|p| host_rank(p, h)).max()
        };
        self.routes
            .iter()
            .filter(|r| {
                path.strip_prefix(r.prefix.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || r.prefix.is_empty()
                })
            })
            .filter_map(|r| host_rank(r).map(|rank| (rank, r)))
            .max_by_key(|(rank, r)| (*rank, r.prefix.len()))
            .map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_matches(pattern: &str, host: &str) -> bool {
        host_rank(pattern, host).is_some()
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(host_matches("*.shop.example.com", "a.shop.example.com"));
        assert!(host_matches("*.shop.example.com", "a.b.shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "evilshop.example.com"));
        assert!(host_matches("shop.example.com", "shop.example.com"));
    }
}
