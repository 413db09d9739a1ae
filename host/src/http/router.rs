//! Host and path → the tenant that serves them, and its `SCRIPT_NAME`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::http::static_files::StaticFiles;
use crate::runtime::tenant::Tenant;

/// One routing entry (generic over the app only for unit tests).
pub struct Route<A = Arc<Tenant>> {
    /// Host patterns (lower-case); empty = any host.
    pub hosts: Vec<String>,
    /// Mount point (`""` = root).
    pub prefix: String,
    /// The app.
    pub app: A,
    /// The tenant's static mounts, answered before its app.
    pub statics: Arc<StaticFiles>,
}

/// Host + path → app. Immutable; reloads build a new one and swap it in.
/// Indexed by host name, so a request looks at the routes of its own host
/// (and the wildcards over it), not at every tenant of the process.
pub struct Router<A = Arc<Tenant>> {
    routes: Vec<Route<A>>,
    /// Routes by exact host name.
    exact: HashMap<String, Vec<usize>>,
    /// Routes by the domain of a `*.domain` pattern.
    wildcard: HashMap<String, Vec<usize>>,
    /// Routes for any host.
    any: Vec<usize>,
    /// Some route has a path prefix.
    prefixed: bool,
}

/// Whether decoded `path` has a `.` or `..` segment: a proxy that removes
/// them (RFC 3986 §5.2.4) would route it elsewhere than its prefix says.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| seg == "." || seg == "..")
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

/// `[ADDR]` in RFC 5952's canonical form, if `host` is an IPv6 literal.
pub fn canonical_ipv6(host: &str) -> Option<String> {
    let inner = host.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(|a| format!("[{a}]"))
}

impl<A> Router<A> {
    /// A router over `routes`.
    pub fn new(routes: Vec<Route<A>>) -> Self {
        let mut router = Router {
            routes: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: Vec::new(),
            prefixed: routes.iter().any(|r| !r.prefix.is_empty()),
        };
        for (i, route) in routes.iter().enumerate() {
            if route.hosts.is_empty() {
                router.any.push(i);
            }
            for pattern in &route.hosts {
                let (map, key) = match pattern.strip_prefix("*.") {
                    Some(domain) => (&mut router.wildcard, domain),
                    None => (&mut router.exact, pattern.as_str()),
                };
                let list = map.entry(key.to_owned()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        router.routes = routes;
        router
    }

    /// Whether any route is chosen by a path prefix.
    pub fn prefixed(&self) -> bool {
        self.prefixed
    }

    /// The route for `host` (without port, any case) and raw `path`; its
    /// prefix is the `SCRIPT_NAME`. Exact host beats a wildcard beats any
    /// host; then the longest prefix that ends at a segment boundary wins.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route<A>> {
        let under_prefix = |i: &usize| {
            let r = &self.routes[*i];
            path.strip_prefix(r.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || r.prefix.is_empty())
        };
        // The longest prefix of the best-ranked hosts; a tie goes to the
        // route listed last.
        let best = |candidates: &mut dyn Iterator<Item = usize>| {
            candidates
                .filter(under_prefix)
                .max_by_key(|i| (self.routes[*i].prefix.len(), *i))
        };
        // An IPv6 literal has many spellings (`[0:0::1]`, `[::1]`): the
        // config's hosts are in the canonical one.
        let host = host.map(|h| canonical_ipv6(h).unwrap_or_else(|| h.to_ascii_lowercase()));
        let exact = host
            .as_deref()
            .and_then(|h| self.exact.get(h))
            .and_then(|list| best(&mut list.iter().copied()));
        let wildcard = || {
            let h = host.as_deref()?;
            // Every domain the host is a proper subdomain of.
            let domains = h.match_indices('.').map(|(at, _)| &h[at + 1..]);
            let mut all = domains
                .filter(|d| !d.is_empty() && h.len() > d.len() + 1)
                .filter_map(|d| self.wildcard.get(d))
                .flatten()
                .copied();
            best(&mut all)
        };
        exact
            .or_else(wildcard)
            .or_else(|| best(&mut self.any.iter().copied()))
            .map(|i| &self.routes[i])
    }
}

impl Router {
    /// Every app routed to, once each.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut seen = std::collections::HashSet::new();
        self.routes
            .iter()
            .filter(|r| seen.insert(Arc::as_ptr(&r.app)))
            .map(|r| r.app.clone())
            .collect()
    }

    /// A router that sends everything to one app at the root.
    pub fn single(app: Arc<Tenant>, statics: StaticFiles) -> Self {
        Router::new(vec![Route {
            hosts: Vec::new(),
            prefix: String::new(),
            app,
            statics: Arc::new(statics),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_matches(pattern: &str, host: &str) -> bool {
        host_rank(pattern, host).is_some()
    }

    #[test]
    fn dot_segments_are_whole_segments() {
        for path in ["/a/../b", "/./x", "/a/..", "/.."] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/a/..b/c", "/.well-known/x", "/a.b/", "/...", "/"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(host_matches("*.shop.example.com", "a.shop.example.com"));
        assert!(host_matches("*.shop.example.com", "a.b.shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "evilshop.example.com"));
        assert!(host_matches("shop.example.com", "shop.example.com"));
    }

    #[test]
    fn an_ipv6_literal_is_routed_whatever_its_spelling() {
        let r = routes(&[(&["[::1]"], ""), (&[], "")]);
        for host in ["[::1]", "[0:0::1]", "[0000:0:0:0:0:0:0:1]"] {
            assert_eq!(r.route(Some(host), "/").unwrap().app, 0, "{host}");
        }
        assert_eq!(r.route(Some("[::2]"), "/").unwrap().app, 1);
        assert_eq!(
            canonical_ipv6("[2001:DB8::0:1]").as_deref(),
            Some("[2001:db8::1]")
        );
        assert_eq!(canonical_ipv6("[nope]"), None);
    }

    fn routes(table: &[(&[&str], &str)]) -> Router<usize> {
        Router::new(
            table
                .iter()
                .enumerate()
                .map(|(app, (hosts, prefix))| Route {
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    prefix: prefix.to_string(),
                    app,
                    statics: Arc::new(StaticFiles::new(Vec::new()).unwrap()),
                })
                .collect(),
        )
    }

    #[test]
    fn exact_beats_wildcard_beats_any_then_longest_prefix() {
        let r = routes(&[
            (&[], ""),
            (&[], "/api"),
            (&["*.shop.test"], ""),
            (&["a.shop.test"], "/x"),
            (&["a.shop.test", "b.test"], ""),
            (&["*.b.shop.test"], "/deep"),
        ]);
        let to = |host: Option<&str>, path: &str| r.route(host, path).map(|r| r.app);
        assert_eq!(to(None, "/"), Some(0));
        assert_eq!(to(Some("other.test"), "/api/v1"), Some(1));
        assert_eq!(to(Some("other.test"), "/apix"), Some(0));
        assert_eq!(to(Some("A.Shop.Test"), "/x/1"), Some(3));
        assert_eq!(to(Some("a.shop.test"), "/y"), Some(4));
        assert_eq!(to(Some("b.test"), "/api"), Some(4));
        assert_eq!(to(Some("z.shop.test"), "/api"), Some(2));
        assert_eq!(to(Some("q.b.shop.test"), "/deep/1"), Some(5));
        assert_eq!(to(Some("q.b.shop.test"), "/"), Some(2));
        // The domain itself is not its own subdomain.
        assert_eq!(to(Some("shop.test"), "/"), Some(0));
        assert_eq!(to(Some(".shop.test"), "/"), Some(0));
    }

    #[test]
    fn without_a_catch_all_unknown_hosts_are_not_routed() {
        let r = routes(&[(&["a.test"], ""), (&["*.b.test"], "/p")]);
        assert!(r.route(Some("c.test"), "/").is_none());
        assert!(r.route(None, "/").is_none());
        assert!(r.route(Some("x.b.test"), "/q").is_none());
        assert_eq!(r.route(Some("x.b.test"), "/p").map(|r| r.app), Some(1));
    }
}
