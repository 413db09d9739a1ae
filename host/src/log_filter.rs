//! The log filter: `RUST_LOG`, also understood in the level names Python
//! servers use (gunicorn's `--log-level warning`), or the default.

use tracing_subscriber::EnvFilter;

/// What is logged when `RUST_LOG` is unset: notify logs, up to warnings,
/// what is not news to an operator (a watch on a directory already deleted
/// could not be removed, as `--reload` watches a replaced app directory
/// again).
const DEFAULT: &str = "info,notify=error";

/// The filter `RUST_LOG` asks for, and a warning to log once logging is up
/// when it could not be used.
pub fn from_env() -> (EnvFilter, Option<String>) {
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => parse(&spec),
        Ok(_) | Err(std::env::VarError::NotPresent) => (EnvFilter::new(DEFAULT), None),
        Err(std::env::VarError::NotUnicode(_)) => (
            EnvFilter::new(DEFAULT),
            Some("RUST_LOG is not UTF-8; logging at INFO".to_owned()),
        ),
    }
}

/// The target the filter's own warning is logged under, let through
/// whatever the filter says.
pub const TARGET: &str = "rsgi_wasm::log_filter";

/// Log what [`from_env`] said of `RUST_LOG`.
pub fn warn(warning: &str) {
    tracing::warn!(target: TARGET, "{warning}");
}

fn parse(spec: &str) -> (EnvFilter, Option<String>) {
    let mut translated = translate(spec);
    let mut warning = None;
    if !translated.split(',').any(|d| LEVELS.contains(&d.trim())) {
        // Every directive names a target: tracing would log nothing else,
        // not even a traceback. A mistyped level (`warnig`) is such a name.
        translated.push_str(",error");
        warning = Some(format!(
            "RUST_LOG={spec:?} gives no level for everything else (a word that is not a level, \
             such as a mistyped one, is taken for a target's name), so only errors are logged \
             besides; give one (off, error, warn, info, debug, trace; or warning, critical), \
             alone or after the targets, as in `{spec},info` (targets: access, guest, rsgi_wasm)"
        ));
    }
    match EnvFilter::try_new(format!("{translated},{TARGET}=warn")) {
        Ok(filter) => (filter, warning),
        Err(e) => (
            EnvFilter::new(DEFAULT),
            Some(format!(
                "RUST_LOG={spec:?} is not a log filter ({e}; Python's warning and critical are \
                 taken too); logging at INFO \
                 (give a level such as `warn`, or `rsgi_wasm=debug,info`)"
            )),
        ),
    }
}

/// `spec` with Python's level names in tracing's. Unknown to tracing, a
/// bare `warning` was taken for a module's name: everything else was
/// silenced, warnings and errors included.
fn translate(spec: &str) -> String {
    spec.split(',')
        .map(|directive| match directive.rsplit_once('=') {
            Some((target, level)) => format!("{target}={}", level_name(level)),
            None => level_name(directive).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What a directive without a target may say.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn level_name(word: &str) -> &str {
    let lower = word.trim().to_ascii_lowercase();
    match lower.as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        "verbose" => "debug",
        _ => LEVELS
            .iter()
            .find(|l| **l == lower)
            .copied()
            .unwrap_or(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_level_names_mean_the_same_levels() {
        assert_eq!(translate("warning"), "warn");
        assert_eq!(translate("CRITICAL"), "error");
        assert_eq!(
            translate("rsgi_wasm=Warning,hyper=verbose"),
            "rsgi_wasm=warn,hyper=debug"
        );
        assert_eq!(translate("info,notify=error"), "info,notify=error");
        // A target named like a level, or a span filter, is left as it is.
        assert_eq!(
            translate("my_app[span{x=1}]=debug"),
            "my_app[span{x=1}]=debug"
        );
        assert_eq!(translate("WARN"), "warn");
        let (filter, warning) = parse("warning");
        assert!(filter.to_string().contains("warn") && warning.is_none());
    }

    #[test]
    fn a_filter_of_targets_alone_still_logs_errors_and_says_so() {
        for spec in ["garbage", "warnig", "rsgi_wasm=debug"] {
            let (filter, warning) = parse(spec);
            assert!(filter.to_string().contains("error"), "{spec}: {filter}");
            assert!(warning.unwrap().contains(&format!("as in `{spec},info`")));
        }
        assert!(parse("rsgi_wasm=debug,info").1.is_none());
        assert!(parse("off").1.is_none());
    }

    #[test]
    fn a_filter_that_cannot_parse_logs_at_the_default_and_says_so() {
        let (filter, warning) = parse("rsgi_wasm=loud,info");
        assert_eq!(filter.to_string(), EnvFilter::new(DEFAULT).to_string());
        assert!(warning.unwrap().contains("rsgi_wasm=loud"));
        assert!(parse("debug").1.is_none());
    }
}
