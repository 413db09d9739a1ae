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
            Some(format!("RUST_LOG is not UTF-8; logging with {DEFAULT:?}")),
        ),
    }
}

fn parse(spec: &str) -> (EnvFilter, Option<String>) {
    match EnvFilter::try_new(translate(spec)) {
        Ok(filter) => (filter, None),
        Err(e) => (
            EnvFilter::new(DEFAULT),
            Some(format!(
                "RUST_LOG={spec:?} is not a log filter ({e}); logging with {DEFAULT:?} \
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

fn level_name(word: &str) -> &str {
    match word.trim().to_ascii_lowercase().as_str() {
        "warning" => "warn",
        "critical" | "fatal" => "error",
        "verbose" => "debug",
        _ => word,
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
        assert_eq!(
            parse("warning").0.to_string(),
            EnvFilter::new("warn").to_string()
        );
    }

    #[test]
    fn a_filter_that_cannot_parse_logs_at_the_default_and_says_so() {
        let (filter, warning) = parse("rsgi_wasm=loud");
        assert_eq!(filter.to_string(), EnvFilter::new(DEFAULT).to_string());
        assert!(warning.unwrap().contains("rsgi_wasm=loud"));
        assert!(parse("debug").1.is_none());
    }
}
