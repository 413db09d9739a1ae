//! Validated settings: raw flag text → typed config, every check before bind.
//!
//! Parsers here return [`ConfigError`] values that say what was wrong and
//! what a correct value looks like.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::env_file;

/// A user-facing problem with a flag or config value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `--dir` value that is not `HOST::GUEST[:ro]` or names no directory.
    #[error(
        "--dir {value:?}: {reason} (expected HOST_DIR::GUEST_DIR, then :ro or :rw and/or :quota=SIZE)"
    )]
    Dir { value: String, reason: String },
    /// A `--tmp-size` beside a `--dir` grant of `/tmp`, which replaces the
    /// private `/tmp` that the size is for.
    #[error(
        "--tmp-size (tmp_size in tenants.toml) sizes the app's private /tmp, which the grant \
         {0}::/tmp replaces; limit the grant instead ({0}::/tmp:quota=SIZE) or drop the size"
    )]
    TmpSizeBesideTmpGrant(String),
    /// An `--env` value without `=` or with an empty name.
    #[error("--env {0:?}: expected NAME=VALUE")]
    Env(String),
    /// An environment variable no process environment can hold.
    #[error("environment variable {0:?}: {1}")]
    EnvVar(String, &'static str),
    /// A duration that is neither plain seconds nor `500ms` / `30s` / `2m`.
    #[error("{0:?} is not a duration (use seconds like 2 or 0.5, or 500ms, 30s, 2m, 1h, 7d)")]
    Duration(String),
    /// An `--allow-net` value that is not HOST:PORT.
    #[error("--allow-net {0:?}: {1} (expected HOST:PORT: an IP address, a name or *.domain, then a port or *; e.g. 10.0.0.5:5432, api.example.com:443, *.example.com:443)")]
    Net(String, String),
    /// A `--tls-ca` file that holds no usable certificate.
    #[error("--tls-ca {0:?}: {1} (expected a PEM file of CA certificates)")]
    TlsCa(String, String),
    /// An isolation mode other than `pooled` or `request`.
    #[error("isolation {0:?}: expected pooled or request")]
    Isolation(String),
    /// A `--world` other than `wsgi` or `wasi-http`.
    #[error("--world {0:?}: expected wsgi (rsgi-wasm's own, fastest boundary) or wasi-http (runs on any wasi:http host: wasmtime serve, Spin, SpinKube)")]
    World(String),
    /// A `--forwarded-allow-ips` value that is not `*` or a list of IPs.
    #[error("--forwarded-allow-ips (or $FORWARDED_ALLOW_IPS) {0:?}: {1}")]
    Peers(String, String),
    /// A duration, size or count outside what the setting allows.
    #[error("{value:?} is out of range (allowed: {allowed})")]
    Range { value: String, allowed: String },
    /// A count that is not a whole number.
    #[error("{0:?} is not a whole number (allowed: {1})")]
    NotCount(String, String),
    /// A CPU share that is not a number of cores in range.
    #[error("cpu {0:?}: expected a number of cores from 0.01 to 1024, like 0.5 or 2")]
    Cpu(String),
    /// A size that is neither bytes nor `128MiB` / `1GiB` / `64KiB`.
    #[error("{0:?} is not a size (use bytes, or units like 64KiB, 128MiB, 1GiB, 10MB)")]
    Size(String),
}

/// Log lines as JSON objects, their fields as keys (`--log-format json`).
pub static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where a value was written (`tenants.toml:6: app[1].component`), for
/// errors. Not part of what it qualifies: an app moved down the file by an
/// edit is the same app to a reload.
#[derive(Debug, Clone, Default)]
pub struct Origin(pub String);

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One directory granted to the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on the host (must exist).
    pub host: PathBuf,
    /// Where the guest sees it (absolute guest path, e.g. `/data`).
    pub guest: String,
    /// Granted read-only (`:ro`).
    pub read_only: bool,
    /// At most this many bytes stored under it, counting what is there
    /// already (`:quota=SIZE`); none: the host disk's own limit.
    pub quota: Option<u64>,
}

/// Parse `HOST::GUEST[:ro|:rw][:quota=SIZE]` and check the host directory exists.
pub fn parse_dir(value: &str) -> Result<DirGrant, ConfigError> {
    let err = |reason: &str| ConfigError::Dir {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    // The guest directory is absolute, so the last `::/` splits the two:
    // a host path may hold `::` itself.
    let at = value
        .rfind("::/")
        .or_else(|| value.find("::"))
        .ok_or_else(|| err("missing `::` between host and guest directory"))?;
    let (host, rest) = (&value[..at], &value[at + 2..]);
    let mut parts = rest.split(':');
    let guest = parts.next().unwrap_or_default();
    let (mut mode, mut quota) = (None, None);
    for opt in parts {
        match opt.split_once('=') {
            // Given twice, the last would win silently: a merged or
            // mistyped grant could turn a read-only one writable.
            None if opt == "ro" || opt == "rw" => {
                if mode.is_some_and(|m| m != opt) {
                    return Err(err("both `ro` and `rw` are given; keep one"));
                }
                mode = Some(opt);
            }
            Some(("quota", _)) if quota.is_some() => {
                return Err(err("`quota` is given twice; keep one"));
            }
            Some(("quota", size)) => {
                quota = Some(check_size(size, DISK).map_err(|e| err(&format!("quota: {e}")))?)
            }
            _ => {
                return Err(err(&format!(
                    "unknown option {opt:?} (options: ro, rw, quota=SIZE)"
                )))
            }
        }
    }
    if host.is_empty() || guest.is_empty() {
        return Err(err("host and guest directory must both be given"));
    }
    if !guest.starts_with('/') {
        return Err(err("the guest directory must be absolute, like /data"));
    }
    if guest.split('/').any(|c| c == "." || c == "..") || guest.contains("//") {
        return Err(err(
            "the guest directory must be a plain path, without `.`, `..` or `//`",
        ));
    }
    // Where every component mounts its own files (`bundle::mounts`): the
    // standard library at /python, the app's directories at /1, /2, ...
    // Refused here, so a reload cannot swap in an app that cannot load.
    let top = guest
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if top.is_empty() || top == "python" || top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            "the app's own files are mounted at /python and /1, /2, ...; pick another guest directory, like /data",
        ));
    }
    let read_only = mode == Some("ro");
    if read_only && quota.is_some() {
        return Err(err(
            "a read-only directory cannot take writes, so a quota means nothing; drop :ro or :quota",
        ));
    }
    let host = PathBuf::from(host);
    if !host.is_dir() {
        return Err(err(
            "the host directory does not exist or is not a directory",
        ));
    }
    Ok(DirGrant {
        host,
        guest: guest.to_owned(),
        read_only,
        quota,
    })
}

/// Parse `NAME=VALUE`.
pub fn parse_env(value: &str) -> Result<(String, String), ConfigError> {
    match value.split_once('=') {
        Some((k, v)) if !k.is_empty() => {
            check_env_var(k, v)?;
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(ConfigError::Env(value.to_owned())),
    }
}

/// A variable the guest's `os.environ` can hold: a name without `=`, and
/// neither part with a NUL (CPython refuses both, on every request).
pub fn check_env_var(name: &str, value: &str) -> Result<(), ConfigError> {
    let why = if name.is_empty() {
        "the name is empty"
    } else if name.contains('=') {
        "the name contains '='"
    } else if name.contains('\0') || value.contains('\0') {
        "it contains a NUL character"
    } else {
        return Ok(());
    };
    Err(ConfigError::EnvVar(name.to_owned(), why))
}

/// The most a config file (tenants file, env file) may hold.
const MAX_CONFIG_FILE: u64 = 16 << 20;

/// `p` made absolute against the working directory of now (lexically:
/// symlinks stay), or as it is if there is none.
pub fn absolute(p: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Read the config file `path` as text (see [`read_small_file`]).
pub fn read_config_file(path: &std::path::Path) -> std::io::Result<String> {
    String::from_utf8(read_small_file(path)?).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (line {line})"),
        )
    })
}

/// Read a file the operator named (config, env file, certificates, keys)
/// or a small file of the cache (`.sum`, `.hot`): a regular file (not a FIFO, which would block a reload forever, or a
/// device such as /dev/zero, which never ends) of at most
/// [`MAX_CONFIG_FILE`] bytes.
pub fn read_small_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE {
        return Err(Error::other(format!(
            "larger than {} MiB",
            MAX_CONFIG_FILE >> 20
        )));
    }
    Ok(bytes)
}

/// Read an env file as python-dotenv does (see [`env_file::parse`]).
pub fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = read_config_file(path)
        .map_err(|e| anyhow::anyhow!("--env-file {}: {e}", path.display()))?;
    let pairs = env_file::parse(&text)
        .map_err(|e| anyhow::anyhow!("--env-file {}:{}: {}", path.display(), e.line, e.reason))?;
    for (k, v) in &pairs {
        check_env_var(k, v).map_err(|e| anyhow::anyhow!("--env-file {}: {e}", path.display()))?;
    }
    Ok(pairs)
}

/// Parse `2`, `0.5`, `500ms`, `30s`, `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, ConfigError> {
    duration_seconds(value)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| ConfigError::Duration(value.to_owned()))
}

/// The seconds `value` means, if it is a non-negative number with an
/// optional unit (however large).
fn duration_seconds(value: &str) -> Option<f64> {
    let v = value.trim();
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = v.strip_suffix('d') {
        (n, 86400.0)
    } else {
        (v, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| n * scale)
}

// Every default, written once: the flags' defaults, and so the keys' of an
// `[[app]]` in tenants.toml, which are parsed as flags.
/// `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// `--grace`.
pub const DEFAULT_GRACE: &str = "30s";
/// `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
/// `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: &str = "10000";
/// `--max-response-buffer`.
pub const DEFAULT_MAX_RESPONSE_BUFFER: &str = "256MiB";
/// `serve --max-loaded`.
pub const DEFAULT_MAX_LOADED: &str = "1000";
/// `--max-unpacked`: the files one component may unpack into the cache.
pub const DEFAULT_MAX_UNPACKED: &str = "1GiB";
/// `--forwarded-allow-ips`.
pub const DEFAULT_FORWARDED_ALLOW: &str = "127.0.0.1,::1";
/// `--http2-max-streams`.
pub const DEFAULT_HTTP2_MAX_STREAMS: &str = "100";
/// Largest request head (431 above); not a flag.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// `--workers` / `workers`.
pub const DEFAULT_WORKERS: &str = "1";
/// `--queue` / `queue`.
pub const DEFAULT_QUEUE: &str = "1024";
/// `--timeout` / `timeout`.
pub const DEFAULT_TIMEOUT: &str = "60s";
/// `--max-body` / `max_body`.
pub const DEFAULT_MAX_BODY: &str = "1GiB";
/// `--max-requests`, `--max-requests-jitter` and their keys: never.
pub const DEFAULT_MAX_REQUESTS: &str = "0";
/// `--isolation` / `isolation`.
pub const DEFAULT_ISOLATION: &str = "pooled";
/// `--memory` / `memory`.
pub const DEFAULT_MEMORY: &str = "512MiB";
/// `--tmp-size` / `tmp_size`.
pub const DEFAULT_TMP_SIZE: &str = "64MiB";
/// `--log-rate` / `log_rate`.
pub const DEFAULT_LOG_RATE: &str = "1MiB";
/// `--max-open-files` / `max_open_files`.
pub const DEFAULT_OPEN_FILES: &str = "1024";
/// `idle_timeout` of a `serve` tenant that sets none: five minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The allowed values of one setting, inclusive.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<T> {
    /// Smallest allowed.
    pub min: T,
    /// Largest allowed.
    pub max: T,
}

/// `--timeout` / `timeout`: a millisecond to a week.
pub const TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_millis(1),
    max: Duration::from_secs(7 * 24 * 3600),
};
/// `--build-timeout`: a second to a day.
pub const BUILD_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(24 * 3600),
};
/// `--build-timeout`'s default: minutes more than a big app needs on a slow
/// machine, seconds of which are compiling CPython.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// `--grace`: none to a day.
pub const GRACE: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(24 * 3600),
};
/// `--idle-timeout` / `idle_timeout`: zero (never unload) to a week.
pub const IDLE_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(7 * 24 * 3600),
};
/// `--header-timeout`: a millisecond to an hour.
pub const HEADER_TIMEOUT: Bounds<Duration> = Bounds {
    min: Duration::from_millis(1),
    max: Duration::from_secs(3600),
};
/// `--memory` / `memory`: 16 MiB (CPython's floor) to 4 GiB (wasm32's ceiling).
pub const MEMORY: Bounds<u64> = Bounds {
    min: 16 << 20,
    max: 4 << 30,
};
/// `--max-body` / `max_body`: up to 1 TiB.
pub const MAX_BODY: Bounds<u64> = Bounds {
    min: 0,
    max: 1 << 40,
};
/// `--tmp-size`, `tmp_size` and `:quota=`: up to 1 TiB.
pub const DISK: Bounds<u64> = Bounds {
    min: 0,
    max: 1 << 40,
};
/// `--max-unpacked`: 1 MiB to 1 TiB (the standard library alone is about 14 MB).
pub const MAX_UNPACKED: Bounds<u64> = Bounds {
    min: 1 << 20,
    max: 1 << 40,
};
/// `--log-rate` / `log_rate`: bytes of guest output a second, up to 1 GiB.
pub const LOG_RATE: Bounds<u64> = Bounds {
    min: 0,
    max: 1 << 30,
};
/// `--max-open-files` / `max_open_files`.
pub const OPEN_FILES: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
};
/// `--workers` / `workers`.
pub const WORKERS: Bounds<u64> = Bounds { min: 1, max: 1024 };
/// `--queue` / `queue`.
pub const QUEUE: Bounds<u64> = Bounds {
    min: 0,
    max: 1_000_000,
};
/// `serve --max-loaded`.
pub const MAX_LOADED: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
};
/// `--max-response-buffer`: room for one 1 MiB chunk, up to 1 TiB.
pub const MAX_RESPONSE_BUFFER: Bounds<u64> = Bounds {
    min: 1 << 20,
    max: 1 << 40,
};
/// `--max-connections`.
pub const MAX_CONNECTIONS: Bounds<u64> = Bounds {
    min: 1,
    max: 1_000_000,
};
/// `--http2-max-streams`.
pub const HTTP2_STREAMS: Bounds<u64> = Bounds {
    min: 1,
    max: 10_000,
};
/// `--max-requests` / `--max-requests-jitter` and their keys.
pub const MAX_REQUESTS: Bounds<u64> = Bounds {
    min: 0,
    max: 1_000_000_000_000,
};

fn out_of_range(value: &str, allowed: String) -> ConfigError {
    ConfigError::Range {
        value: value.to_owned(),
        allowed,
    }
}

/// `d` as it would be written in a flag: `0`, `500ms`, `10s`, `5m`, `7d`.
fn spelt(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0".to_owned(),
        _ if ms.is_multiple_of(86_400_000) => format!("{}d", ms / 86_400_000),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// `n` bytes as a flag would say it: `16MiB`, `1TiB`, `1000`.
fn bytes_spelt(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n > 0 && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// A duration within `b`.
pub fn check_duration(value: &str, b: Bounds<Duration>) -> Result<Duration, ConfigError> {
    let range = || out_of_range(value, format!("{} to {}", spelt(b.min), spelt(b.max)));
    let d = match parse_duration(value) {
        Ok(d) => d,
        // A number past what a duration can hold is out of range, not malformed.
        Err(_) if duration_seconds(value).is_some() => return Err(range()),
        Err(e) => return Err(e),
    };
    if d < b.min || d > b.max {
        return Err(range());
    }
    Ok(d)
}

/// A size within `b`.
pub fn check_size(value: &str, b: Bounds<u64>) -> Result<u64, ConfigError> {
    let range = || {
        out_of_range(
            value,
            format!("{} to {}", bytes_spelt(b.min), bytes_spelt(b.max)),
        )
    };
    let n = match parse_size(value) {
        Ok(n) => n,
        Err(_) if size_bytes(value).is_some() => return Err(range()),
        Err(e) => return Err(e),
    };
    if n < b.min || n > b.max {
        return Err(range());
    }
    Ok(n)
}

/// A whole number within `b`.
pub fn check_count(value: &str, b: Bounds<u64>) -> Result<u64, ConfigError> {
    let allowed = || format!("whole numbers {} to {}", b.min, b.max);
    let v = value.trim();
    match v.parse::<u64>() {
        Ok(n) if (b.min..=b.max).contains(&n) => Ok(n),
        // Digits past u64 are a number too large, not a malformed one.
        _ if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => {
            Err(out_of_range(value, allowed()))
        }
        Ok(_) => Err(out_of_range(value, allowed())),
        Err(_) => Err(ConfigError::NotCount(value.to_owned(), allowed())),
    }
}

/// A clap value parser for a duration within `b`.
pub fn duration_in(
    b: Bounds<Duration>,
) -> impl Fn(&str) -> Result<Duration, ConfigError> + Clone + Send + Sync + 'static {
    move |v| check_duration(v, b)
}

/// A listen address: `IP:PORT`, or `HOST:PORT` with a name the system
/// resolves (`localhost:8000`, as gunicorn's `-b` takes), its first address.
pub fn listen_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    // gunicorn's other `--bind` forms, named rather than taken for a host.
    if text.starts_with("unix:") || text.starts_with('/') {
        return Err(format!(
            "{text:?}: Unix sockets are not supported; listen on TCP (like 127.0.0.1:8000) and point the proxy there"
        ));
    }
    if text.starts_with("fd://") {
        return Err(format!(
            "{text:?}: inherited sockets (fd://, socket activation) are not supported; give HOST:PORT"
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "{text:?} is not HOST:PORT (like 127.0.0.1:8000, [::1]:8000 or localhost:8000)"
        ));
    };
    // What did not parse as an address above but looks like IPv6 is a
    // malformed one, not a host name.
    if host.starts_with('[') || host.contains(':') {
        return Err(format!(
            "{text:?} is not an IPv6 address and port (like [::1]:8000)"
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} in {text:?} is not a port (0 to 65535)"))?;
    if host.is_empty() {
        return Err(format!(
            "{text:?} has no host: give 0.0.0.0:{port} (every interface) or 127.0.0.1:{port} (this machine only)"
        ));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{host:?} resolves to no address"))
}

/// A clap value parser for a size within `b`.
pub fn size_in(
    b: Bounds<u64>,
) -> impl Fn(&str) -> Result<u64, ConfigError> + Clone + Send + Sync + 'static {
    move |v| check_size(v, b)
}

/// A clap value parser for a count within `b`.
pub fn count_in(
    b: Bounds<u64>,
) -> impl Fn(&str) -> Result<u64, ConfigError> + Clone + Send + Sync + 'static {
    move |v| check_count(v, b)
}

/// Parse `1048576`, `64KiB`, `128MiB`, `1GiB`, `10MB`.
pub fn parse_size(value: &str) -> Result<u64, ConfigError> {
    size_bytes(value)
        // Not past u64: `as` would saturate silently.
        .filter(|n| *n < u64::MAX as f64)
        .map(|n| n as u64)
        .ok_or_else(|| ConfigError::Size(value.to_owned()))
}

/// The bytes `value` means, if it is a non-negative number with a known
/// unit (however large).
fn size_bytes(value: &str) -> Option<f64> {
    let v = value.trim();
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        // Past every limit, but sizes all the same: "out of range", not
        // "not a size".
        "p" | "pb" => 1_000_000_000_000_000,
        "pib" => 1 << 50,
        "e" | "eb" => 1_000_000_000_000_000_000,
        "eib" => 1 << 60,
        _ => return None,
    };
    num.parse::<f64>()
        .ok()
        .map(|n| n * scale as f64)
        .filter(|n| n.is_finite() && *n >= 0.0)
}

/// The smallest CPU cap: a hundredth of a core already makes a 1 ms slice
/// wait 100 ms.
const MIN_CPU: f64 = 0.01;

/// Parse a CPU share in cores: `0.25`, `1`, `2.5`.
pub fn parse_cpu(value: &str) -> Result<f64, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|c| (MIN_CPU..=1024.0).contains(c))
        .ok_or_else(|| ConfigError::Cpu(value.to_owned()))
}

/// Refuse two grants of one app where one holds the other and either has
/// a quota: what is written or deleted through one would not be charged
/// or credited to the other's, so deleting through the inner grant gave
/// the outer quota room it never charged.
pub fn refuse_quotas_over_other_grants(dirs: &[DirGrant]) -> Result<(), ConfigError> {
    let canonical: Vec<_> = dirs
        .iter()
        .map(|d| std::fs::canonicalize(&d.host).unwrap_or_else(|_| d.host.clone()))
        .collect();
    for (i, outer) in dirs.iter().enumerate() {
        for (j, inner) in dirs.iter().enumerate() {
            if i != j
                && canonical[j].starts_with(&canonical[i])
                && (outer.quota.is_some() || inner.quota.is_some())
                && (i < j || canonical[i] != canonical[j])
            {
                return Err(ConfigError::Dir {
                    value: format!("{}::{}", inner.host.display(), inner.guest),
                    reason: format!(
                        "it is {} the grant {}::{}, and one of them has a quota: writes through one \
                         would not count against the other's; grant only the outer directory",
                        if canonical[i] == canonical[j] { "the same directory as" } else { "inside" },
                        outer.host.display(),
                        outer.guest
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What the sandbox grants one app: nothing unless listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// Environment variables (the host's own never reach the guest).
    pub env: Vec<(String, String)>,
    /// Where the app may open TCP connections (nowhere by default).
    pub net: Vec<NetRule>,
    /// CA certificates (DER) the app's TLS trusts besides its own choice
    /// of roots (`--tls-ca`).
    pub tls_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// What the app's private /tmp may hold, all its instances together.
    pub tmp_size: u64,
    /// Bytes of stdout/stderr a second the app may log (bursts of 4 s).
    pub log_rate: u64,
    /// Host files the app's instances may hold open together.
    pub max_open_files: usize,
}

/// Where an allowed connection may go: one `--allow-net` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRule {
    /// The address or names it covers.
    pub host: NetHost,
    /// The port (none: any port, written `*`).
    pub port: Option<u16>,
}

/// The host part of a [`NetRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetHost {
    /// Connections to exactly this address.
    Ip(std::net::IpAddr),
    /// This name (lower case, no trailing dot): the guest may look it up
    /// and connect to what it resolves to.
    Name(String),
    /// Every name under this domain (`*.example.com` is stored as
    /// `example.com`; it does not cover `example.com` itself).
    Subdomains(String),
}

impl std::fmt::Display for NetRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            NetHost::Ip(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            NetHost::Ip(ip) => write!(f, "{ip}")?,
            NetHost::Name(name) => write!(f, "{name}")?,
            NetHost::Subdomains(domain) => write!(f, "*.{domain}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => write!(f, ":*"),
        }
    }
}

/// Parse `HOST:PORT` for `--allow-net`: an IP address (`[v6]` in brackets),
/// a name, or `*.domain`, then a port or `*`. Names are not resolved here:
/// the guest looks them up when it connects, through the host, which lets
/// only listed names through.
pub fn parse_net(value: &str) -> Result<NetRule, ConfigError> {
    let err = |why: &str| ConfigError::Net(value.to_owned(), why.to_owned());
    if let Some((_, rest)) = value.split_once("://") {
        return Err(err(&format!(
            "a rule is a host and port, not a URL: write {}",
            rest.split('/').next().unwrap_or(rest)
        )));
    }
    let (host, port) = value.rsplit_once(':').ok_or_else(|| err("no port"))?;
    let port = match port {
        "*" => None,
        p => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(err("the port must be 1 to 65535, or *")),
            Ok(p) => Some(p),
        },
    };
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // `[::ffff:10.0.0.5]` is 10.0.0.5: connections are compared so.
        NetHost::Ip(
            std::net::IpAddr::V6(v6.parse().map_err(|_| err("not an IPv6 address"))?)
                .to_canonical(),
        )
    } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        NetHost::Ip(ip.into())
    } else if host.contains(':') {
        return Err(err("an IPv6 address goes in brackets, like [::1]:5432"));
    } else if host == "*" {
        return Err(err(
            "a bare * would allow every host; list the names, or *.domain",
        ));
    } else if let Some(domain) = host.strip_prefix("*.") {
        NetHost::Subdomains(host_name(domain).ok_or_else(|| err("not a domain name after *."))?)
    } else if looks_like_ipv4(host) {
        // `127.1` or `010.0.0.5`: a resolver reads these as IPv4 (010 is
        // octal), so as a name rule they would open another address.
        return Err(err(NOT_DOTTED_DECIMAL));
    } else {
        NetHost::Name(host_name(host).ok_or_else(|| {
            err(if host.contains('*') {
                "a wildcard must be a whole first label, like *.example.com"
            } else {
                "not a host name"
            })
        })?)
    };
    if matches!(host, NetHost::Ip(ip) if ip.is_unspecified()) {
        return Err(err(
            "0.0.0.0 and :: are no address to connect to; name the one the app connects to",
        ));
    }
    Ok(NetRule { host, port })
}

/// Why a host that [`looks_like_ipv4`] but does not parse as one is refused.
pub const NOT_DOTTED_DECIMAL: &str = "looks like an IPv4 address but is not one in dotted-decimal form (four numbers 0-255, no leading zeros)";

/// Whether a resolver would read `host` as an IPv4 address (its last label
/// a number, or hexadecimal): true of real ones, and of `127.1`, `010.0.0.5`
/// or `999.1.1.1`, which are no names either.
pub fn looks_like_ipv4(host: &str) -> bool {
    host.trim_end_matches('.')
        .rsplit('.')
        .next()
        .is_some_and(|last| {
            !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())
                || last.to_ascii_lowercase().starts_with("0x")
        })
}

/// `name` as a lower-case DNS name without its trailing dot, if it is one
/// (labels of letters, digits, `-` and `_`, neither starting nor ending
/// with `-`; at most 253 characters).
pub fn host_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)).then_some(name)
}

/// Read the CA certificates of a `--tls-ca` PEM file.
pub fn read_tls_ca(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let err = |why: String| ConfigError::TlsCa(path.display().to_string(), why);
    let pem = read_small_file(path).map_err(|e| err(e.to_string()))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block in it".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| err(format!("a certificate that cannot be a trust anchor: {e}")))?;
    }
    Ok(certs)
}

/// Per-app resource limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Instances serving at once (and kept warm).
    pub workers: usize,
    /// Requests that may wait for a busy instance (503 beyond).
    pub queue: usize,
    /// Wall-clock budget of one request (504 and a fresh instance after).
    pub timeout: Duration,
    /// Linear-memory cap of one instance.
    pub memory: u64,
    /// Largest request body accepted (413 above).
    pub max_body: u64,
    /// Requests an instance serves before it is replaced (0 = never).
    pub max_requests: u64,
    /// Up to this many extra requests, different per instance, so
    /// instances do not all retire at once.
    pub max_requests_jitter: u64,
    /// Reuse warm instances, or give every request a fresh one.
    pub isolation: Isolation,
    /// At most this many cores for the app's guests together, averaged over
    /// a short window (none: no cap, but still a fair share).
    pub cpu: Option<f64>,
    /// Unload the app after this long without a request (zero: never);
    /// none: the command's default ([`DEFAULT_IDLE_TIMEOUT`] under `serve`,
    /// never under `run`).
    pub idle_timeout: Option<Duration>,
}

/// How much state requests of one app share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Warm instances serve many requests (module state survives), like a
    /// gunicorn worker.
    Pooled,
    /// A fresh instance per request: nothing leaks between requests
    /// (`wsgi.run_once` is True).
    Request,
}

/// Parse `pooled` or `request`.
pub fn parse_isolation(value: &str) -> Result<Isolation, ConfigError> {
    match value {
        "pooled" => Ok(Isolation::Pooled),
        "request" => Ok(Isolation::Request),
        _ => Err(ConfigError::Isolation(value.to_owned())),
    }
}

/// Which world a build exports (`--world`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum World {
    /// `rsgi-wasm:wsgi/wsgi-app`: rsgi-wasm's own boundary (the default).
    #[default]
    Wsgi,
    /// `wasi:http/proxy`: `wasi:http/incoming-handler@0.2.0`, for any
    /// wasi:http host.
    WasiHttp,
}

impl World {
    /// The name `--world` takes.
    pub fn name(self) -> &'static str {
        match self {
            World::Wsgi => "wsgi",
            World::WasiHttp => "wasi-http",
        }
    }
}

/// Parse `wsgi` or `wasi-http`.
pub fn parse_world(value: &str) -> Result<World, ConfigError> {
    match value {
        "wsgi" => Ok(World::Wsgi),
        "wasi-http" => Ok(World::WasiHttp),
        _ => Err(ConfigError::World(value.to_owned())),
    }
}

/// Server-wide HTTP settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// How long in-flight requests may run after SIGINT/SIGTERM.
    pub grace: Duration,
    /// Time a client has to send a complete request head.
    pub header_timeout: Duration,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// Open connections at most; further clients wait in the kernel's
    /// accept backlog.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-Proto` / `Forwarded` headers are believed.
    pub forwarded_allow: TrustedPeers,
    /// Concurrent streams one HTTP/2 connection may open.
    pub http2_max_streams: u32,
}

/// Which peers may set the URL scheme through proxy headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustedPeers {
    /// Any peer (`*`): only behind a proxy that overwrites the headers.
    All,
    /// Only these addresses and networks.
    Only(Vec<ipnet::IpNet>),
}

impl TrustedPeers {
    /// Whether `peer` is trusted. An IPv4 client of a dual-stack listener
    /// (`[::]`) arrives as `::ffff:a.b.c.d`, and is trusted as `a.b.c.d`.
    pub fn contains(&self, peer: std::net::IpAddr) -> bool {
        match self {
            TrustedPeers::All => true,
            TrustedPeers::Only(list) => list.iter().any(|net| net.contains(&peer.to_canonical())),
        }
    }
}

/// An IPv4 network written IPv6-mapped (`::ffff:127.0.0.1`, as a
/// dual-stack listener logs IPv4 peers) as the IPv4 one peers are
/// compared with.
fn unmapped(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(Into::into)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// Parse `*` or a comma-separated list of IP addresses and networks
/// (`10.0.0.0/8`, as a cluster's proxies have addresses of their own).
pub fn parse_trusted(value: &str) -> Result<TrustedPeers, ConfigError> {
    if value.trim() == "*" {
        return Ok(TrustedPeers::All);
    }
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let refused = |why: String| ConfigError::Peers(value.to_owned(), why);
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(Into::into))
                .map_err(|_| {
                    refused(format!(
                        "{s:?} is not an IP address or network; expected * or a comma-separated \
                         list like 127.0.0.1,::1,10.0.0.0/8"
                    ))
                })?;
            if net != net.trunc() {
                // As Python's `ip_network`: 10.1.2.3/8 is more likely a
                // slip than the whole of 10.0.0.0/8.
                return Err(refused(format!(
                    "{s:?} has bits set past its prefix: the network is {}",
                    net.trunc()
                )));
            }
            Ok(unmapped(net))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(TrustedPeers::Only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_may_name_a_host() {
        assert_eq!(
            listen_addr("127.0.0.1:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(listen_addr("[::1]:80").unwrap().to_string(), "[::1]:80");
        let local = listen_addr("localhost:8000").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8000, "{local}");
        for (bad, says) in [
            ("8000", "is not HOST:PORT"),
            ("localhost:99999", "is not a port"),
            ("localhost:", "is not a port"),
            ("no-such-host.invalid:80", "cannot resolve"),
            ("[::1", "not an IPv6 address"),
            ("::1:80", "not an IPv6 address"),
            ("unix:/run/app.sock", "Unix sockets are not supported"),
            ("/run/app.sock", "Unix sockets are not supported"),
            ("fd://3", "inherited sockets"),
            (":8000", "give 0.0.0.0:8000"),
        ] {
            let err = listen_addr(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn env_files_are_read_as_dotenv_does() {
        // The syntax is `env_file`'s to test; here, what reading adds.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        std::fs::write(&file, "export A='1'\nB=2 # note\n").unwrap();
        let got = read_env_file(&file).unwrap();
        assert_eq!(got, [("A".into(), "1".into()), ("B".into(), "2".into())]);
        std::fs::write(&file, "A=1\nB C=2\n").unwrap();
        let e = read_env_file(&file).unwrap_err().to_string();
        assert!(e.contains("app.env:2: expected `=`"), "{e}");
        std::fs::write(&file, "A=\"x\\0\"\nNUL=\"\0\"\n").unwrap();
        let e = read_env_file(&file).unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
        // Not a regular file: refused, not read (a FIFO would block).
        assert!(read_env_file(dir.path()).is_err());
    }

    #[test]
    fn allow_net_rules_parse_and_reject() {
        let rule = |s: &str| parse_net(s).map(|r| r.to_string());
        for (input, parsed) in [
            ("10.0.0.5:5432", "10.0.0.5:5432"),
            ("[::1]:443", "[::1]:443"),
            ("[::ffff:10.0.0.5]:443", "10.0.0.5:443"),
            ("API.Example.com.:443", "api.example.com:443"),
            ("*.example.com:443", "*.example.com:443"),
            ("db_1.internal:*", "db_1.internal:*"),
            ("localhost:8443", "localhost:8443"),
        ] {
            assert_eq!(rule(input).unwrap(), parsed, "{input}");
        }
        for (input, why) in [
            ("example.com", "no port"),
            ("example.com:0", "1 to 65535"),
            ("example.com:https", "1 to 65535"),
            ("::1:443", "brackets"),
            ("[nope]:443", "IPv6"),
            ("*:443", "every host"),
            ("a.*.com:443", "whole first label"),
            ("*.:443", "domain name"),
            ("bad name:443", "not a host name"),
            ("-x.com:443", "not a host name"),
            ("127.1:80", "dotted-decimal"),
            ("010.0.0.5:80", "dotted-decimal"),
            ("host.0x1f:80", "dotted-decimal"),
            ("a..b:443", "not a host name"),
            ("0.0.0.0:80", "no address to connect to"),
            ("[::]:80", "no address to connect to"),
            ("http://x.com:80/path", "write x.com:80"),
        ] {
            let e = rule(input).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--allow-net"), "{input}: {e}");
        }
        let long = format!("{}.com:1", "a".repeat(64));
        assert!(parse_net(&long).is_err());
    }

    #[test]
    fn a_config_file_that_is_not_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, b"A=1\nB=caf\xe9\n").unwrap();
        let e = read_config_file(&path).unwrap_err().to_string();
        assert_eq!(e, "not UTF-8 text (line 2)");
    }

    #[test]
    fn a_host_directory_may_hold_two_colons() {
        let dir = tempfile::Builder::new().prefix("a::b").tempdir().unwrap();
        let g = parse_dir(&format!("{}::/data:ro", dir.path().display())).unwrap();
        assert_eq!((g.host.as_path(), g.guest.as_str()), (dir.path(), "/data"));
        assert!(g.read_only);
    }

    #[test]
    fn dir_grants_parse_and_reject() {
        let tmp = std::env::temp_dir();
        let host = tmp.to_str().unwrap();
        let g = parse_dir(&format!("{host}::/data:ro")).unwrap();
        assert_eq!(g.guest, "/data");
        assert!(g.read_only);
        let g = parse_dir(&format!("{host}::/data")).unwrap();
        assert!(!g.read_only);
        assert!(parse_dir("nodir").is_err());
        assert!(parse_dir(&format!("{host}::data")).is_err());
        for odd in ["/data/../x", "/./data", "//data", "/data/.."] {
            assert!(parse_dir(&format!("{host}::{odd}")).is_err(), "{odd}");
        }
        // Where the app's own files are mounted.
        for taken in ["/", "/python", "/python/x", "/1", "/12/x"] {
            let e = parse_dir(&format!("{host}::{taken}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("mounted at /python"), "{taken}: {e}");
        }
        parse_dir(&format!("{host}::/python3")).unwrap();
        parse_dir(&format!("{host}::/1a")).unwrap();
        let e = parse_dir("/does/not/exist::/data").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let g = parse_dir(&format!("{host}::/data:quota=10MiB")).unwrap();
        assert_eq!((g.guest.as_str(), g.quota), ("/data", Some(10 << 20)));
        let g = parse_dir(&format!("{host}::/data:rw:quota=4096")).unwrap();
        assert_eq!(g.quota, Some(4096));
        for bad in [":quota=2TiB", ":quota=lots", ":ro:quota=1MiB", ":fast"] {
            let e = parse_dir(&format!("{host}::/data{bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("/data"), "{bad}: {e}");
        }
        // Contradictions are refused, not settled by the last word.
        for (bad, why) in [
            (":ro:rw", "both `ro` and `rw`"),
            (":rw:ro", "both `ro` and `rw`"),
            (":quota=1MiB:quota=2GiB", "`quota` is given twice"),
        ] {
            let e = parse_dir(&format!("{host}::/data{bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(
            parse_dir(&format!("{host}::/data:ro:ro"))
                .unwrap()
                .read_only
        );
    }

    #[test]
    fn env_durations_and_sizes() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("x").is_err());
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1e300GiB").is_err());
        assert!(parse_duration("1e300").is_err());
        // Too large to hold is out of range, with the range said.
        for e in [
            check_duration("1e300", TIMEOUT).unwrap_err(),
            check_size("100000000000000000000GiB", MEMORY).unwrap_err(),
            check_size("1PiB", MEMORY).unwrap_err(),
            check_size("2EiB", MEMORY).unwrap_err(),
        ] {
            assert!(matches!(e, ConfigError::Range { .. }), "{e}");
            assert!(e.to_string().contains("allowed"), "{e}");
        }
        assert!(matches!(
            check_duration("soon", TIMEOUT).unwrap_err(),
            ConfigError::Duration(_)
        ));
        let e = check_duration("0", TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("out of range") && e.contains("1ms"), "{e}");
        assert_eq!(
            check_duration("2s", TIMEOUT).unwrap(),
            Duration::from_secs(2)
        );
        assert!(check_size("1MiB", MEMORY).is_err());
        assert!(check_size("8GiB", MEMORY).is_err());
        assert!(check_count("0", WORKERS).is_err());
        assert!(check_count("18446744073709551615", MAX_REQUESTS).is_err());
        assert_eq!(check_count("4", WORKERS).unwrap(), 4);
        assert_eq!(parse_trusted("*").unwrap(), TrustedPeers::All);
        let t = parse_trusted(DEFAULT_FORWARDED_ALLOW).unwrap();
        assert!(t.contains("::1".parse().unwrap()));
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("10.0.0.1".parse().unwrap()));
        let t = parse_trusted("10.0.0.0/8, fd00::/8, ::ffff:192.168.0.0/112").unwrap();
        assert!(t.contains("192.168.7.1".parse().unwrap()));
        assert!(parse_trusted("::ffff:127.0.0.1")
            .unwrap()
            .contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains("10.200.0.7".parse().unwrap()));
        assert!(t.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        for (bad, says) in [
            ("localhost", "not an IP address"),
            ("10.0.0.0/33", "not an IP address"),
            ("10.0.0.0/", "not an IP address"),
            ("/8", "not an IP address"),
            ("::1/129", "not an IP address"),
            ("10.1.2.3/8", "the network is 10.0.0.0/8"),
        ] {
            let e = parse_trusted(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(parse_cpu("0.25").unwrap(), 0.25);
        assert_eq!(parse_cpu("2").unwrap(), 2.0);
        for bad in ["0", "-1", "nan", "inf", "1e300", "1e-15", "0.001", "lots"] {
            assert!(parse_cpu(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod nested_quota_tests {
    use super::*;

    fn grant(host: &std::path::Path, guest: &str, quota: Option<u64>) -> DirGrant {
        DirGrant {
            host: host.to_owned(),
            guest: guest.to_owned(),
            read_only: false,
            quota,
        }
    }

    #[test]
    fn a_quota_over_or_under_another_grant_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let other = tempfile::tempdir().unwrap();
        let quota = Some(1 << 20);
        for dirs in [
            vec![grant(dir.path(), "/data", quota), grant(&sub, "/sub", None)],
            vec![grant(&sub, "/sub", quota), grant(dir.path(), "/data", None)],
            vec![
                grant(dir.path(), "/a", quota),
                grant(dir.path(), "/b", quota),
            ],
        ] {
            let e = refuse_quotas_over_other_grants(&dirs)
                .unwrap_err()
                .to_string();
            assert!(e.contains("one of them has a quota"), "{e}");
        }
        // Apart, or nested without any quota, they stay allowed.
        refuse_quotas_over_other_grants(&[
            grant(dir.path(), "/data", quota),
            grant(other.path(), "/o", quota),
        ])
        .unwrap();
        refuse_quotas_over_other_grants(&[
            grant(dir.path(), "/data", None),
            grant(&sub, "/sub", None),
        ])
        .unwrap();
    }
}
