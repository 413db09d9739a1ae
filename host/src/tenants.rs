//! Many apps in one process: the `tenants.toml` format, checked with file,
//! line and field before anything listens.
//!
//! An `[[app]]` has keys of its own (`name`, `component`, `hosts`,
//! `path_prefix`, `certfile`, `keyfile`) and an `env` table; every other key is one of `run`'s
//! per-app flags spelt with underscores, and is parsed as that flag
//! (`cli::AppKeys`): the same parser, bounds and default on both surfaces.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::cli::{flag_of, key_of, AppKeys};
pub use crate::config::Origin;
use crate::config::{self, Grants, Limits};
use crate::http::static_files::StaticMount;
use crate::http::tls::TenantCert;

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
    /// Static mounts answered before the app (`static`).
    pub statics: Vec<StaticMount>,
    /// The tenant's own certificate and key, served for its hosts (SNI).
    pub tls: Option<TenantCert>,
    /// Where `component` is set (`tenants.toml:6: app[1].component`), for
    /// errors found in the file it names.
    pub component_at: Origin,
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

/// Line numbers of offsets into a text, looked up in the offsets of its
/// line ends: a file of thousands of apps is not scanned for each value.
struct Lines(Vec<usize>);

impl Lines {
    fn of(text: &str) -> Self {
        Lines(text.match_indices('\n').map(|(i, _)| i).collect())
    }

    /// The 1-based line holding `offset`.
    fn line_of(&self, offset: usize) -> usize {
        self.0.partition_point(|&end| end < offset) + 1
    }
}

/// Keys whose values are host paths, relative to the config file.
const PATH_KEYS: [&str; 4] = ["dirs", "static", "env_file", "tls_ca"];

/// A TOML error message with the text it points at (`duplicate key` says
/// which), when that is short and on one line.
fn with_snippet(message: &str, text: &str, span: Range<usize>) -> String {
    match text.get(span) {
        Some(s) if !s.trim().is_empty() && s.len() <= 60 && !s.contains('\n') => {
            format!("{message} (at `{}`)", s.trim())
        }
        _ => message.to_owned(),
    }
}

/// [`load_with`], component files checked.
#[cfg(test)]
pub fn load(path: &Path) -> anyhow::Result<Vec<TenantConfig>> {
    load_with(path, false)
}

/// Read and check `path`. Every problem names file, line and field. With
/// `tolerate_broken`, a component file that is missing or not a regular
/// file is left for its app's loads to find (`serve --tolerate-broken`):
/// its tenant may replace it.
pub fn load_with(path: &Path, tolerate_broken: bool) -> anyhow::Result<Vec<TenantConfig>> {
    let file = path.display().to_string();
    let text = config::read_config_file(path)
        .map_err(|e| anyhow::anyhow!("cannot read tenants file {file}: {e}"))?;
    let lines = Lines::of(&text);
    let at = |span: Range<usize>, field: String, message: String| TenantError {
        file: file.clone(),
        line: lines.line_of(span.start),
        field,
        message,
    };
    let root = DeTable::parse(&text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        at(
            span.clone(),
            "syntax".into(),
            with_snippet(e.message(), &text, span),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut apps = Vec::new();
    for (key, value) in root.get_ref() {
        if key.get_ref().as_ref() != "app" {
            return Err(at(
                key.span(),
                key.get_ref().to_string(),
                "unknown key; the file holds [[app]] tables only".into(),
            )
            .into());
        }
        match value.get_ref() {
            DeValue::Array(items) => apps.extend(items.iter()),
            found => {
                let found = match found {
                    DeValue::Table(_) => "a table (`[app]` or `[[app.NAME]]`)",
                    _ => "a value",
                };
                return Err(at(
                    value.span(),
                    "app".into(),
                    format!("found {found}; write each app as an [[app]] table"),
                )
                .into());
            }
        }
    }
    let mut out: Vec<TenantConfig> = Vec::new();
    // Names and routes taken so far, for a file of thousands of apps.
    let mut names = HashSet::new();
    let mut routes: HashMap<(Option<String>, String), usize> = HashMap::new();
    for (i, app) in apps.into_iter().enumerate() {
        let DeValue::Table(table) = app.get_ref() else {
            return Err(at(app.span(), format!("app[{i}]"), "expected a table".into()).into());
        };
        let err = |span: Range<usize>, field: &str, message: String| {
            at(span, format!("app[{i}].{field}"), message)
        };
        let span_of_key = |key: &str| {
            table
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == key)
                .map(|(_, v)| v.span())
        };
        let tenant = tenant(table, app.span(), base, &err, tolerate_broken)
            .map_err(|e| e.unwrap_or_else(|| err(app.span(), "name", "missing".into())))?;
        if !names.insert(tenant.name.clone()) {
            let span = span_of_key("name").unwrap_or(app.span());
            return Err(err(span, "name", format!("{:?} is used twice", tenant.name)).into());
        }
        let keys = route_keys(&tenant);
        if let Some(((host, prefix), &other)) = keys.iter().find_map(|k| routes.get_key_value(k)) {
            // Said at the key that makes the two routes one.
            let (field, span) = match (span_of_key("hosts"), span_of_key("path_prefix")) {
                (Some(span), _) => ("hosts", span),
                (None, Some(span)) => ("path_prefix", span),
                (None, None) => ("path_prefix", app.span()),
            };
            let host = host
                .as_ref()
                .map_or("any host".to_owned(), |h| format!("host {h:?}"));
            let prefix = match prefix.as_str() {
                "" => "/".to_owned(),
                p => format!("{p:?}"),
            };
            return Err(err(
                span,
                field,
                format!(
                    "{host} under path {prefix} is already routed to app {:?}; give one of them another host or path_prefix",
                    out[other].name
                ),
            )
            .into());
        }
        routes.extend(keys.into_iter().map(|k| (k, out.len())));
        out.push(tenant);
    }
    if out.is_empty() {
        return Err(at(0..0, "app".into(), "no [[app]] entries".into()).into());
    }
    Ok(out)
}

/// The routes a tenant takes: each host (none: the catch-all) under its
/// path prefix. Two apps sharing one would make one of them unreachable.
fn route_keys(tenant: &TenantConfig) -> Vec<(Option<String>, String)> {
    let prefix = || tenant.path_prefix.clone();
    if tenant.hosts.is_empty() {
        return vec![(None, prefix())];
    }
    tenant
        .hosts
        .iter()
        .map(|h| (Some(h.clone()), prefix()))
        .collect()
}

/// A `hosts` entry as the router compares it: lower case, without a final
/// dot; a DNS name, an IP address, or `*.` and a domain.
fn host_name(entry: &str) -> Result<String, String> {
    let v = entry.to_ascii_lowercase();
    let v = v.strip_suffix('.').unwrap_or(&v).to_owned();
    let bare = v.strip_prefix("*.").unwrap_or(&v);
    if let Some(canonical) = crate::http::router::canonical_ipv6(bare) {
        if !v.starts_with('*') {
            return Ok(canonical);
        }
    }
    let why = if !entry.is_ascii() {
        "write an international name in its ASCII (xn--) form"
    } else if bare.starts_with('[') && bare.contains('%') {
        "an IPv6 address with a zone (%...) is never a Host header's: drop the zone"
    } else if bare.contains(':') && !(bare.starts_with('[') && bare.ends_with(']')) {
        "a host name without a port (an IPv6 address goes in brackets)"
    } else if bare.starts_with('[') {
        "not an IPv6 address in brackets"
    } else if config::looks_like_ipv4(bare) {
        if bare.parse::<std::net::Ipv4Addr>().is_ok() && !v.starts_with('*') {
            return Ok(v);
        }
        config::NOT_DOTTED_DECIMAL
    } else if bare.split('.').any(|label| label.len() > 63) {
        "a label (the part between dots) is longer than DNS's 63 characters"
    } else if bare.len() > 253 {
        "longer than DNS's 253 characters"
    } else if config::host_name(bare).is_none() {
        "not a host name or *.domain pattern"
    } else {
        return Ok(v);
    };
    Err(format!("{entry:?}: {why}"))
}

type Located<'a> = &'a dyn Fn(Range<usize>, &str, String) -> TenantError;

/// One `[[app]]`: its own keys read here, the rest parsed as flags. None
/// as the error: `name` is missing.
fn tenant(
    table: &DeTable<'_>,
    whole: Range<usize>,
    base: &Path,
    err: Located<'_>,
    tolerate_broken: bool,
) -> Result<TenantConfig, Option<TenantError>> {
    let mut name = None;
    let mut component = None;
    let mut hosts = Vec::new();
    let mut path_prefix = String::new();
    let mut env = BTreeMap::new();
    let (mut certfile, mut keyfile) = (None, None);
    // Each flag with the key and span it came from, for errors.
    let mut argv: Vec<String> = Vec::new();
    let mut origin: Vec<(String, Range<usize>)> = Vec::new();
    for (key, value) in table {
        let k = key.get_ref().as_ref();
        let span = value.span();
        match k {
            "name" => {
                let v = string(value, k, err)?;
                // It names the app in logs, metrics labels and errors.
                if v.is_empty()
                    || v.len() > 128
                    || !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(Some(err(
                        span,
                        k,
                        format!("{v:?}: use 1 to 128 letters, digits, '.', '_' or '-'"),
                    )));
                }
                name = Some(v);
            }
            "component" => {
                let c = string(value, k, err)?;
                if c.is_empty() {
                    return Err(Some(err(
                        span,
                        k,
                        "empty: give the component file `rsgi-wasm build` wrote".into(),
                    )));
                }
                let c = base.join(c);
                if tolerate_broken {
                    component = Some((c, span));
                    continue;
                }
                if c.is_dir() {
                    return Err(Some(err(
                        span,
                        k,
                        format!("{} is a directory, not a component file", c.display()),
                    )));
                }
                if !c.is_file() {
                    let why = if c.exists() {
                        "is not a regular file"
                    } else {
                        "does not exist (build it with `rsgi-wasm build`)"
                    };
                    return Err(Some(err(span, k, format!("{} {why}", c.display()))));
                }
                component = Some((c, span));
            }
            "hosts" => {
                let is_string = |v: &DeValue<'_>| matches!(v, DeValue::String(_));
                let texts = match value.get_ref() {
                    DeValue::Array(items) => items.iter().all(|v| is_string(v.get_ref())),
                    v => is_string(v),
                };
                if !texts {
                    return Err(Some(err(
                        span,
                        k,
                        "expected a string or a list of strings".into(),
                    )));
                }
                for (h, span) in strings(value, k, err)? {
                    let v = host_name(&h).map_err(|why| Some(err(span, k, why)))?;
                    hosts.push(v);
                }
                // Left out, `hosts` means any host: an emptied list (a
                // template's, say) must not quietly widen the app so.
                if hosts.is_empty() {
                    return Err(Some(err(
                        span,
                        k,
                        "an empty list: name at least one host, or leave `hosts` out to serve any host".into(),
                    )));
                }
            }
            "path_prefix" => {
                let p = string(value, k, err)?;
                if !p.starts_with('/') {
                    return Err(Some(err(span, k, format!("{p:?} must start with /"))));
                }
                // Matched against the decoded path, so written decoded.
                if p.bytes()
                    .any(|b| b"%?#".contains(&b) || !b.is_ascii_graphic())
                {
                    return Err(Some(err(
                        span,
                        k,
                        format!(
                            "{p:?}: write the path decoded, in printable ASCII without spaces, %, ? or #"
                        ),
                    )));
                }
                // One final `/` is a matter of taste; more are `//`.
                let trimmed = p.strip_suffix('/').unwrap_or(&p);
                // Routes match the path as the client sent it: a prefix
                // with empty, `.` or `..` segments would match only paths
                // that clients normalise away.
                if trimmed
                    .split('/')
                    .skip(1)
                    .any(|seg| seg.is_empty() || seg == "." || seg == "..")
                {
                    return Err(Some(err(
                        span,
                        k,
                        format!("{p:?}: no `//`, `.` or `..` segments (write the path as clients send it, like /api)"),
                    )));
                }
                path_prefix = trimmed.to_owned();
            }
            "certfile" | "keyfile" => {
                let f = base.join(string(value, k, err)?);
                if !f.is_file() {
                    let why = if f.exists() {
                        "is not a regular file"
                    } else {
                        "does not exist"
                    };
                    return Err(Some(err(span, k, format!("{} {why}", f.display()))));
                }
                origin.push((k.to_owned(), span.clone()));
                if k == "certfile" {
                    certfile = Some((f, span));
                } else {
                    keyfile = Some((f, span));
                }
            }
            "env" => {
                let DeValue::Table(vars) = value.get_ref() else {
                    return Err(Some(err(
                        span,
                        k,
                        "expected a table of NAME = \"value\"".into(),
                    )));
                };
                for (name, v) in vars {
                    // Named as TOML writes the key: `env.PORT`, `env."A B"`.
                    let bare = name
                        .get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    let field = if bare && !name.get_ref().is_empty() {
                        format!("{k}.{}", name.get_ref())
                    } else {
                        format!("{k}.{:?}", name.get_ref())
                    };
                    let value = string(v, &field, err)?;
                    crate::config::check_env_var(name.get_ref(), &value)
                        .map_err(|e| Some(err(name.span(), &field, e.to_string())))?;
                    env.insert(name.get_ref().to_string(), value);
                }
            }
            _ => {
                // Keys are the flags' names with `_`: `max-body` or `dir`
                // would otherwise pass as flags, and their errors could
                // not point at them.
                let spelt = key_of(&flag_of(k));
                if spelt != k {
                    return Err(Some(err(
                        key.span(),
                        k,
                        format!("unknown key; the key is spelt {spelt}"),
                    )));
                }
                // A list only where the flag takes many values: `memory = []`
                // would otherwise quietly mean the default.
                if matches!(value.get_ref(), DeValue::Array(_)) && !repeatable(&flag_of(k)) {
                    return Err(Some(err(span, k, "expected one value, not a list".into())));
                }
                for (v, span) in strings(value, k, err)? {
                    let v = if PATH_KEYS.contains(&k) {
                        relative_to(base, k, &v)
                    } else {
                        v
                    };
                    argv.push(format!("--{}={v}", flag_of(k)));
                    origin.push((k.to_owned(), span));
                }
            }
        }
    }
    let name = name.ok_or(None)?;
    let origin_of = |span: Range<usize>, field: &str| {
        let e = err(span, field, String::new());
        Origin(format!("{}:{}: {}", e.file, e.line, e.field))
    };
    let tls = match (certfile, keyfile) {
        (None, None) => None,
        (Some((_, span)), None) => {
            return Err(Some(err(
                span,
                "keyfile",
                "missing: certfile needs its keyfile".into(),
            )))
        }
        (None, Some((_, span))) => {
            return Err(Some(err(
                span,
                "certfile",
                "missing: keyfile needs its certfile".into(),
            )))
        }
        (Some((cert, span)), Some((key, key_span))) => {
            if hosts.is_empty() {
                return Err(Some(err(
                    span,
                    "certfile",
                    "an app's own certificate needs `hosts`: the names clients ask for (SNI)"
                        .into(),
                )));
            }
            Some(TenantCert {
                hosts: hosts.clone(),
                cert,
                key,
                cert_at: origin_of(span.clone(), "certfile"),
                key_at: origin_of(key_span, "keyfile"),
            })
        }
    };
    let Some((component, component_span)) = component else {
        return Err(Some(err(whole, "component", "missing".into())));
    };
    let component_at = origin_of(component_span, "component");

    let keys = AppKeys::try_parse_from(&argv).map_err(|e| Some(flag_error(&e, &origin, err)))?;
    let app = keys.app;
    let mut grants = app.grants.grants().map_err(|e| {
        // The files `grants` reads (the env file and the CA files), and
        // the directories it checks against each other.
        let field = match e.downcast_ref::<crate::config::ConfigError>() {
            Some(crate::config::ConfigError::TlsCa(..)) => "tls_ca",
            Some(crate::config::ConfigError::Dir { .. }) => "dirs",
            Some(crate::config::ConfigError::TmpSizeBesideTmpGrant(_)) => "tmp_size",
            _ => "env_file",
        };
        Some(err(span_of(&origin, field), field, format!("{e:#}")))
    })?;
    grants.env.extend(env);
    // Checked here, not only when the mounts are opened, to say where.
    let spans = origin.iter().filter(|(k, _)| k == "static").map(|(_, s)| s);
    for (i, (mount, span)) in app.statics.iter().zip(spans).enumerate() {
        if app.statics[..i].iter().any(|m| m.prefix == mount.prefix) {
            return Err(Some(err(
                span.clone(),
                "static",
                format!(
                    "the URL prefix {} is given twice; give each directory its own",
                    mount.prefix
                ),
            )));
        }
        // Static prefixes are matched against the whole path, and only
        // requests under the app's own prefix are routed to it.
        if !mount.prefix.starts_with(&format!("{path_prefix}/")) {
            return Err(Some(err(
                span.clone(),
                "static",
                format!(
                    "the URL prefix {} is outside this app's path_prefix {path_prefix}, so no request for it reaches this app; write {path_prefix}{}",
                    mount.prefix, mount.prefix
                ),
            )));
        }
    }
    Ok(TenantConfig {
        name,
        component,
        hosts,
        path_prefix,
        limits: app.limits(),
        grants,
        statics: app.statics,
        tls,
        component_at,
    })
}

/// A `dirs`, `static` or `env_file` value with its host path made relative
/// to the config file's directory.
fn relative_to(base: &Path, key: &str, value: &str) -> String {
    // Absolute, so an error names the path that was tried, not one that
    // reads as relative to the current directory.
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
    let join = |p: &str| base.join(p).display().to_string();
    match key {
        "dirs" => match value.split_once("::") {
            Some((host, rest)) if !host.is_empty() && !Path::new(host).is_absolute() => {
                format!("{}::{rest}", join(host))
            }
            _ => value.to_owned(),
        },
        "static" => match value.split_once('=') {
            Some((prefix, dir)) if !dir.is_empty() && !Path::new(dir).is_absolute() => {
                format!("{prefix}={}", join(dir))
            }
            _ => value.to_owned(),
        },
        _ if !value.is_empty() && !Path::new(value).is_absolute() => join(value),
        _ => value.to_owned(),
    }
}

fn span_of(origin: &[(String, Range<usize>)], key: &str) -> Range<usize> {
    origin
        .iter()
        .find(|(k, _)| k == key)
        .map_or(0..0, |(_, s)| s.clone())
}

/// A flag's parse error, told as the key it came from.
fn flag_error(e: &clap::Error, origin: &[(String, Range<usize>)], err: Located<'_>) -> TenantError {
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let key = key_of(
        flag.trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or_default(),
    );
    let span = span_of(origin, &key);
    let message = match e.kind() {
        ErrorKind::UnknownArgument => {
            let known: Vec<String> = AppKeys::command()
                .get_arguments()
                .filter_map(|a| a.get_long())
                .map(key_of)
                .filter(|k| k != "env")
                .collect();
            format!(
                "unknown key; an [[app]] takes name, component, hosts, path_prefix, certfile, keyfile, env, {}",
                known.join(", ")
            )
        }
        _ => match std::error::Error::source(e) {
            Some(cause) => cause.to_string(),
            None => e
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned(),
        },
    };
    err(span, &key, message)
}

/// Whether the flag `--long` takes a value per use (so its key a list).
fn repeatable(long: &str) -> bool {
    AppKeys::command()
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .is_some_and(|a| matches!(a.get_action(), clap::ArgAction::Append))
}

fn string(
    value: &Spanned<DeValue<'_>>,
    key: &str,
    err: Located<'_>,
) -> Result<String, Option<TenantError>> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s.to_string()),
        _ => Err(Some(err(value.span(), key, "expected a string".into()))),
    }
}

/// A key's value as flag values: a string, number or boolean is one, an
/// array one per item.
fn strings(
    value: &Spanned<DeValue<'_>>,
    key: &str,
    err: Located<'_>,
) -> Result<Vec<(String, Range<usize>)>, Option<TenantError>> {
    let one = |v: &Spanned<DeValue<'_>>| -> Result<String, Option<TenantError>> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .map(|n| n.to_string())
                .map_err(|_| Some(err(v.span(), key, "not a 64-bit integer".into()))),
            DeValue::Float(f) => Ok(f.as_str().replace('_', "")),
            DeValue::Boolean(b) => Ok(b.to_string()),
            _ => Err(Some(err(
                v.span(),
                key,
                "expected a string, a number or a list of them".into(),
            ))),
        }
    };
    match value.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .map(|v| one(v).map(|s| (s, v.span())))
            .collect(),
        _ => Ok(vec![(one(value)?, value.span())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_file_line_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
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
        // A syntax error shows what it points at: which key is twice.
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nworkers = 1\nworkers = 2\n",
        )
        .unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:5: syntax") && e.contains("`workers`"),
            "{e}"
        );
        // Values of the wrong shape are refused, not read as the default.
        for (line, field, why) in [
            ("memory = []", "memory", "not a list"),
            ("timeout = [\"1s\"]", "timeout", "not a list"),
            ("hosts = [1]", "hosts", "list of strings"),
        ] {
            std::fs::write(
                &cfg,
                format!("[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n{line}\n"),
            )
            .unwrap();
            let e = load(&cfg).unwrap_err().to_string();
            assert!(
                e.contains(&format!("t.toml:4: app[0].{field}")) && e.contains(why),
                "{e}"
            );
        }
        // A list where the flag repeats.
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\ndirs = []\nallow_net = []\n",
        )
        .unwrap();
        load(&cfg).unwrap();
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\npath_prefix = \"/api/\"\n",
        )
        .unwrap();
        let t = load(&cfg).unwrap();
        assert_eq!(t[0].path_prefix, "/api");
        // Its static files live under it too.
        let app = "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\npath_prefix = \"/api\"\n";
        std::fs::write(&cfg, format!("{app}static = [\"/api/s/=.\"]\n")).unwrap();
        load(&cfg).unwrap();
        std::fs::write(&cfg, format!("{app}static = [\"/s/=.\"]\n")).unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("t.toml:5: app[0].static") && e.contains("write /api/s/"),
            "{e}"
        );
    }

    #[test]
    fn keys_are_the_run_flags_with_the_same_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("static")).unwrap();
        std::fs::write(dir.join("a.wasm"), b"x").unwrap();
        std::fs::write(dir.join("app.env"), "FROM_FILE=1\nBOTH=file\n").unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
        let cfg = dir.join("t.toml");
        // Nothing set: exactly the flags' defaults.
        std::fs::write(&cfg, "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n").unwrap();
        let t = load(&cfg).unwrap().remove(0);
        let defaults = AppKeys::try_parse_from(Vec::<String>::new()).unwrap().app;
        assert_eq!(t.limits, defaults.limits());
        assert_eq!(t.grants, defaults.grants.grants().unwrap());
        assert!(t.statics.is_empty());
        // Every key set: what the same flags give, host paths taken
        // relative to the file.
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nworkers = 3\nqueue = 7\n\
             timeout = \"2s\"\nmax_body = \"1MiB\"\nmax_requests = 100\nmax_requests_jitter = 10\n\
             cpu = 0.5\nisolation = \"request\"\nmemory = \"64MiB\"\ntmp_size = \"1MiB\"\n\
             log_rate = 4096\nmax_open_files = 64\ndirs = [\"data::/data:quota=1MiB\"]\n\
             static = [\"/s/=static\"]\nenv_file = \"app.env\"\nallow_net = [\"127.0.0.1:5432\", \"*.example.com:443\"]\n\
             tls_ca = [\"ca.pem\"]\n\
             [app.env]\nBOTH = \"table\"\n",
        )
        .unwrap();
        let t = load(&cfg).unwrap().remove(0);
        let d = dir.display();
        let flags = AppKeys::try_parse_from([
            "--workers=3".to_owned(),
            "--queue=7".into(),
            "--timeout=2s".into(),
            "--max-body=1MiB".into(),
            "--max-requests=100".into(),
            "--max-requests-jitter=10".into(),
            "--cpu=0.5".into(),
            "--isolation=request".into(),
            "--memory=64MiB".into(),
            "--tmp-size=1MiB".into(),
            "--log-rate=4096".into(),
            "--max-open-files=64".into(),
            format!("--dir={d}/data::/data:quota=1MiB"),
            format!("--static=/s/={d}/static"),
            format!("--env-file={d}/app.env"),
            "--allow-net=127.0.0.1:5432".into(),
            "--allow-net=*.example.com:443".into(),
            format!("--tls-ca={d}/ca.pem"),
            "--env=BOTH=table".into(),
        ])
        .unwrap()
        .app;
        assert_eq!(t.limits, flags.limits());
        assert_eq!(t.grants, flags.grants.grants().unwrap());
        assert_eq!(t.statics, flags.statics);
        assert_eq!(t.limits.workers, 3);
        assert_eq!(t.grants.net.len(), 2);
        assert_eq!(t.grants.tls_ca.len(), 1);
        // The table's env comes after the file's, as --env after --env-file.
        let env = &t.grants.env;
        assert_eq!(env.iter().rfind(|(k, _)| k == "BOTH").unwrap().1, "table");
        assert!(env.contains(&("FROM_FILE".into(), "1".into())));
    }

    #[test]
    fn lines_are_counted_from_one() {
        let lines = Lines::of("a\nbb\n\nc");
        let at = |o| lines.line_of(o);
        assert_eq!(
            [at(0), at(1), at(2), at(4), at(5), at(6), at(99)],
            [1, 1, 2, 2, 3, 4, 4]
        );
    }

    #[test]
    fn host_names_are_compared_lower_case_without_a_final_dot() {
        assert_eq!(host_name("Dot.Test.").unwrap(), "dot.test");
        assert_eq!(host_name("*.Example.com").unwrap(), "*.example.com");
        assert_eq!(host_name("[::1]").unwrap(), "[::1]");
        assert_eq!(host_name("[0:0::1]").unwrap(), "[::1]");
        assert_eq!(host_name("10.0.0.1").unwrap(), "10.0.0.1");
        assert_eq!(
            host_name(&"a.".repeat(126)).unwrap(),
            "a.".repeat(125) + "a"
        );
        assert_eq!(
            host_name("xn--bcher-kva.test").unwrap(),
            "xn--bcher-kva.test"
        );
        for bad in [
            "",
            ".",
            "a..b",
            "*",
            "*.",
            "a*.b",
            "a/b",
            "::1",
            "[x]",
            "a.test:80",
            "a\nb",
            "-a.com",
            "a-.com",
            "999.1.1.1",
            "127.1",
            "*.10.0.0.1",
            "a.".repeat(128).as_str(),
        ] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
        let zoned = host_name("[fe80::1%eth0]").unwrap_err();
        assert!(zoned.contains("zone"), "{zoned}");
        assert!(host_name("[::1]:80")
            .unwrap_err()
            .contains("without a port"));
        assert!(host_name("[::g]")
            .unwrap_err()
            .contains("not an IPv6 address"));
    }

    #[test]
    fn a_bad_key_is_told_with_its_line_and_what_it_expects() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("a.wasm"), b"x").unwrap();
        let cfg = dir.join("t.toml");
        let error_of = |text: &str| {
            std::fs::write(&cfg, text).unwrap();
            load(&cfg).unwrap_err().to_string()
        };
        for (line, field, says) in [
            ("workers = 0", "workers", "out of range"),
            (
                "workers = \"many\"",
                "workers",
                "\"many\" is not a whole number",
            ),
            ("workers = 1.5", "workers", "not a whole number"),
            ("workers = true", "workers", "not a whole number"),
            ("cpu = [1, 2]", "cpu", "not a list"),
            (
                "memory = {}",
                "memory",
                "expected a string, a number or a list",
            ),
            ("isolation = \"shared\"", "isolation", "pooled or request"),
            ("listen = \"0.0.0.0:80\"", "listen", "unknown key"),
            ("env = [\"A=1\"]", "env", "expected a table"),
            ("env_file = \"missing.env\"", "env_file", "missing.env"),
            ("static = [\"/s/=nowhere\"]", "static", "cannot be used"),
            ("allow_net = [\"*:443\"]", "allow_net", "every host"),
            ("tls_ca = [\"nope.pem\"]", "tls_ca", "nope.pem"),
            ("env = { \"A=B\" = \"1\" }", "env.\"A=B\"", "contains '='"),
            ("env = { A = \"x\\u0000y\" }", "env.A", "NUL"),
            ("env = { PORT = 8000 }", "env.PORT", "expected a string"),
            (
                "env = { \"A B\" = true }",
                "env.\"A B\"",
                "expected a string",
            ),
            ("hosts = [\"a.test:8080\"]", "hosts", "without a port"),
            ("hosts = [\"b\u{fc}cher.test\"]", "hosts", "xn--"),
            ("hosts = [\"a b\"]", "hosts", "not a host name"),
            (
                &format!("hosts = [\"{}.test\"]", "a".repeat(64)),
                "hosts",
                "longer than DNS's 63 characters",
            ),
            (
                "path_prefix = \"/a?b\"",
                "path_prefix",
                "without spaces, %, ? or #",
            ),
            ("path_prefix = \"/a%2Fb\"", "path_prefix", "decoded"),
            ("path_prefix = \"/a/../b\"", "path_prefix", "segments"),
            ("path_prefix = \"//a\"", "path_prefix", "segments"),
            ("path_prefix = \"/api//\"", "path_prefix", "segments"),
            ("hosts = []", "hosts", "leave `hosts` out"),
            ("hosts = [\"1.2.3.999\"]", "hosts", "dotted-decimal"),
            ("tls_ca = [\"/dev/zero\"]", "tls_ca", "not a regular file"),
            ("certfile = \"/dev/zero\"", "certfile", "not a regular file"),
            ("cpu = 1e-15", "cpu", "from 0.01"),
            ("max-body = \"1B\"", "max-body", "spelt max_body"),
            ("path-prefix = \"/x\"", "path-prefix", "spelt path_prefix"),
            ("dir = [\"d::/d\"]", "dir", "spelt dirs"),
            (
                "tmp_size = \"1MiB\"\ndirs = [\".::/tmp\"]",
                "tmp_size",
                "limit the grant instead",
            ),
        ] {
            let e = error_of(&format!(
                "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n{line}\n"
            ));
            assert!(
                e.contains(&format!("t.toml:4: app[0].{field}: ")),
                "{line}: {e}"
            );
            assert!(e.contains(says), "{line}: {e}");
        }
        let e = error_of("[[app]]\ncomponent = \"a.wasm\"\n");
        assert!(e.contains("app[0].name: missing"), "{e}");
        let e = error_of("[[app]]\nname = \"a\\nb\"\ncomponent = \"a.wasm\"\n");
        assert!(e.contains("t.toml:2: app[0].name: \"a\\nb\": use"), "{e}");
        std::fs::create_dir_all(dir.join("d.wasm")).unwrap();
        let e = error_of("[[app]]\nname = \"a\"\ncomponent = \"d.wasm\"\n");
        assert!(
            e.contains("t.toml:3: app[0].component: ") && e.contains("is a directory"),
            "{e}"
        );
        // Two apps on one host and path: the second would never be reached.
        let e = error_of(
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nhosts = [\"x.test\"]\n\n\
             [[app]]\nname = \"b\"\ncomponent = \"a.wasm\"\nhosts = [\"y.test\", \"X.test.\"]\n",
        );
        assert!(e.contains("t.toml:9: app[1].hosts: host \"x.test\" under path / is already routed to app \"a\""), "{e}");
        let e = error_of(
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[[app]]\nname = \"b\"\ncomponent = \"a.wasm\"\n",
        );
        assert!(
            e.contains("t.toml:4: app[1].path_prefix: any host under path / is already routed to app \"a\""),
            "{e}"
        );
        // The same host under another path is another route.
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[[app]]\nname = \"b\"\ncomponent = \"a.wasm\"\npath_prefix = \"/b\"\n",
        )
        .unwrap();
        let apps = load(&cfg).unwrap();
        assert_eq!(
            apps[1].component_at.0,
            format!("{}:6: app[1].component", cfg.display())
        );
        let e = error_of("[[app]]\nname = \"a\"\n");
        assert!(e.contains("app[0].component: missing"), "{e}");
        let e = error_of("[[app]]\nname = \"a\"\ncomponent = \"\"\n");
        assert!(e.contains("t.toml:3: app[0].component: empty"), "{e}");
        let e =
            error_of("[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n\n[[app]]\nname = \"b\"\n");
        assert!(!e.contains("t.toml:1:"), "{e}");
        assert!(e.contains("app[1].component: missing"), "{e}");
        let e = error_of(
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\n",
        );
        assert!(e.contains("t.toml:5: app[1].name"), "{e}");
        // The second of two mounts at one prefix, wherever the slash is.
        std::fs::create_dir_all(dir.join("s")).unwrap();
        let e = error_of(
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nstatic = [\n  \"/s=s\",\n  \"/s/=s\",\n]\n",
        );
        assert!(
            e.contains("t.toml:6: app[0].static: the URL prefix /s/ is given twice"),
            "{e}"
        );
        let e = error_of("[[app.x]]\nname = \"a\"\n");
        assert!(e.contains("t.toml:1: app: found a table"), "{e}");
        let e = error_of("app = 1\n");
        assert!(e.contains("t.toml:1: app: found a value"), "{e}");
        // Where a tenant's certificate is set, for a server without TLS.
        std::fs::write(dir.join("c.pem"), b"x").unwrap();
        std::fs::write(
            &cfg,
            "[[app]]\nname = \"a\"\ncomponent = \"a.wasm\"\nhosts = [\"a.test\"]\n\
             certfile = \"c.pem\"\nkeyfile = \"c.pem\"\n",
        )
        .unwrap();
        let apps = load(&cfg).unwrap();
        let tls = apps[0].tls.as_ref().unwrap();
        assert_eq!(
            tls.cert_at.0,
            format!("{}:5: app[0].certfile", cfg.display())
        );
        assert_eq!(tls.key_at.0, format!("{}:6: app[0].keyfile", cfg.display()));
    }
}
