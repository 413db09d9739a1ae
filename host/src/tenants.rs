//! Many apps in one process: the `tenants.toml` format (checked with file,
//! line and field before anything listens) and the router that maps a
//! request's Host and path to an app and its `SCRIPT_NAME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{self, DirGrant, Grants, Limits};
use crate::pool::AppPool;

/// One `[[app]]` as written, spans kept for error messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    component: Spanned<String>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    dirs: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    allow_net: Vec<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    queue: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    max_body: Option<Spanned<String>>,
    isolation: Option<Spanned<String>>,
    max_requests: Option<Spanned<i64>>,
    max_requests_jitter: Option<Spanned<i64>>,
    cpu: Option<Spanned<toml::Value>>,
    tmp_size: Option<Spanned<String>>,
    log_rate: Option<Spanned<String>>,
    max_open_files: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    app: Vec<RawApp>,
}

/// One validated tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Unique name (logs, errors).
    pub name: String,
    /// The component file (relative paths are relative to the config file).
    pub component: PathBuf,
    /// Host patterns: `example.com` or `*.example.com`; empty = any host.
    pub hosts: Vec<String>,
    /// Mount point: becomes `SCRIPT_NAME`; `""` for the root.
    pub path_prefix: String,
    /// Directories and env granted.
    pub grants: Grants,
    /// Limits.
    pub limits: Limits,
}

/// A config problem, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct TenantError {
    /// The config file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Which field (`app[2].timeout`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Read and check `path`. Every problem names file, line and field.
pub fn load(path: &Path) -> anyhow::Result<Vec<TenantConfig>> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read tenants file {file}: {e}"))?;
    let raw: RawFile = toml::from_str(&text).map_err(|e| TenantError {
        file: file.clone(),
        line: e.span().map_or(1, |s| line_of(&text, s.start)),
        field: "syntax".into(),
        message: e.message().to_owned(),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out: Vec<TenantConfig> = Vec::new();
    for (i, app) in raw.app.into_iter().enumerate() {
        let err = |span: std::ops::Range<usize>, field: &str, message: String| TenantError {
            file: file.clone(),
            line: line_of(&text, span.start),
            field: format!("app[{i}].{field}"),
            message,
        };
        let name = app.name.get_ref().clone();
        if name.is_empty() || out.iter().any(|t| t.name == name) {
            return Err(err(
                app.name.span(),
                "name",
                format!("{name:?} is empty or used twice"),
            )
            .into());
        }
        let component = base.join(app.component.get_ref());
        if !component.is_file() {
            return Err(err(
                app.component.span(),
                "component",
                format!(
                    "{} does not exist (build it with `rsgi-wasm build`)",
                    component.display()
                ),
            )
            .into());
        }
        let mut hosts = Vec::new();
        for h in &app.hosts {
            let v = h.get_ref().to_ascii_lowercase();
            let bare = v.strip_prefix("*.").unwrap_or(&v);
            if bare.is_empty() || bare.contains(['*', '/', ' ']) {
                return Err(err(
                    h.span(),
                    "hosts",
                    format!("{v:?} is not a host name or *.domain pattern"),
                )
                .into());
            }
            hosts.push(v);
        }
        let path_prefix = match &app.path_prefix {
            None => String::new(),
            Some(p) => {
                let v = p.get_ref().trim_end_matches('/').to_owned();
                if !p.get_ref().starts_with('/') {
                    return Err(err(
                        p.span(),
                        "path_prefix",
                        format!("{:?} must start with /", p.get_ref()),
                    )
                    .into());
                }
                v
            }
        };
        let mut dirs = Vec::new();
        for d in &app.dirs {
            // Relative host directories are relative to the config file.
            let spec = d.get_ref();
            let spec = match spec.split_once("::") {
                Some((host, rest)) if !Path::new(host).is_absolute() => {
                    format!("{}::{rest}", base.join(host).display())
                }
                _ => spec.clone(),
            };
            let grant: DirGrant =
                config::parse_dir(&spec).map_err(|e| err(d.span(), "dirs", e.to_string()))?;
            dirs.push(grant);
        }
        let mut net = Vec::new();
        for n in &app.allow_net {
            net.extend(
                config::parse_net(n.get_ref())
                    .map_err(|e| err(n.span(), "allow_net", e.to_string()))?,
            );
        }
        let mut limits = Limits::default();
        let count = |v: &Spanned<i64>, field: &str, b| {
            config::check_count(&v.get_ref().to_string(), b)
                .map_err(|e| err(v.span(), field, e.to_string()))
        };
        if let Some(w) = &app.workers {
            limits.workers = count(w, "workers", config::WORKERS)? as usize;
        }
        if let Some(q) = &app.queue {
            limits.queue = count(q, "queue", config::QUEUE)? as usize;
        }
        if let Some(t) = &app.timeout {
            limits.timeout = config::check_duration(t.get_ref(), config::TIMEOUT)
                .map_err(|e| err(t.span(), "timeout", e.to_string()))?;
        }
        let size = |v: &Spanned<String>, field: &str, b| {
            config::check_size(v.get_ref(), b).map_err(|e| err(v.span(), field, e.to_string()))
        };
        if let Some(m) = &app.memory {
            limits.memory = size(m, "memory", config::MEMORY)?;
        }
        if let Some(m) = &app.max_body {
            limits.max_body = size(m, "max_body", config::MAX_BODY)?;
        }
        if let Some(iso) = &app.isolation {
            limits.isolation = config::parse_isolation(iso.get_ref())
                .map_err(|e| err(iso.span(), "isolation", e.to_string()))?;
        }
        if let Some(c) = &app.cpu {
            let text = match c.get_ref() {
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => other.to_string(),
            };
            limits.cpu =
                Some(config::parse_cpu(&text).map_err(|e| err(c.span(), "cpu", e.to_string()))?);
        }
        if let Some(m) = &app.max_requests {
            limits.max_requests = count(m, "max_requests", config::MAX_REQUESTS)?;
        }
        if let Some(j) = &app.max_requests_jitter {
            limits.max_requests_jitter = count(j, "max_requests_jitter", config::MAX_REQUESTS)?;
        }
        let tmp_size = match &app.tmp_size {
            Some(t) => size(t, "tmp_size", config::DISK)?,
            None => config::DEFAULT_TMP_SIZE,
        };
        let log_rate = match &app.log_rate {
            Some(r) => size(r, "log_rate", config::LOG_RATE)?,
            None => config::DEFAULT_LOG_RATE,
        };
        let max_open_files = match &app.max_open_files {
            Some(n) => count(n, "max_open_files", config::OPEN_FILES)? as usize,
            None => config::DEFAULT_OPEN_FILES,
        };
        out.push(TenantConfig {
            name,
            component,
            hosts,
            path_prefix,
            grants: Grants {
                dirs,
                env: app.env.into_iter().collect(),
                net,
                tmp_size,
                log_rate,
                max_open_files,
            },
            limits,
        });
    }
    if out.is_empty() {
        return Err(TenantError {
            file,
            line: 1,
            field: "app".into(),
            message: "no [[app]] entries".into(),
        }
        .into());
    }
    Ok(out)
}

/// One routing entry.
pub struct Route {
    /// Host patterns (lower-case); empty = any host.
    pub hosts: Vec<String>,
    /// Mount point (`""` = root).
    pub prefix: String,
    /// The app.
    pub app: Arc<AppPool>,
}

/// Host + path → app. Immutable; reloads build a new one and swap it in.
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => pattern == host,
    }
}

impl Router {
    /// A router over `routes`.
    pub fn new(routes: Vec<Route>) -> Self {
        Router { routes }
    }

    /// A router that sends everything to one app at the root.
    pub fn single(app: Arc<AppPool>) -> Self {
        Router::new(vec![Route {
            hosts: Vec::new(),
            prefix: String::new(),
            app,
        }])
    }

    /// The app for `host` (without port, any case) and raw `path`, and its
    /// `SCRIPT_NAME`. Exact host beats a wildcard beats any host; then the
    /// longest prefix that ends at a segment boundary wins.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<(&Arc<AppPool>, &str)> {
        let host = host.map(|h| h.to_ascii_lowercase());
        let host_rank = |r: &Route| -> Option<u8> {
            if r.hosts.is_empty() {
                return Some(0);
            }
            let h = host.as_deref()?;
            r.hosts
                .iter()
                .filter(|p| host_matches(p, h))
                .map(|p| if p.starts_with("*.") { 1 } else { 2 })
                .max()
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
            .map(|(_, r)| (&r.app, r.prefix.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_subdomains_only() {
        assert!(host_matches("*.shop.example.com", "a.shop.example.com"));
        assert!(host_matches("*.shop.example.com", "a.b.shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "shop.example.com"));
        assert!(!host_matches("*.shop.example.com", "evilshop.example.com"));
        assert!(host_matches("shop.example.com", "shop.example.com"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = std::env::temp_dir().join(format!("rsgi-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.wasm"), b"x").unwrap();
        let cfg = dir.join("t.toml");
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n\ntimeout = \"soon\"\n",
        )
        .unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("t.toml:5: app[0].timeout"), "{e}");
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nwrokers = 2\n",
        )
        .unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("t.toml:4"), "{e}");
        assert!(e.contains("wrokers"), "{e}");
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"missing.wasm\"\n",
        )
        .unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("t.toml:3: app[0].component"), "{e}");
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\npath_prefix = \"/api/\"\n",
        )
        .unwrap();
        let t = load(&cfg).unwrap();
        assert_eq!(t[0].path_prefix, "/api");
    }
}
