//! tetherd's logger (env_logger): one line per record on stderr,
//! `<unix time> LEVEL target: message`. The level comes from `--debug` or `RUST_LOG`: a
//! plain level (`error`, `warn`, `info`, `debug`, `trace`), or env_logger's directives
//! (`info,ttrpc=warn`). A value that is neither leaves the default, `info`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::LevelFilter;

/// The level for `--debug` / the value of `RUST_LOG` (default `info`).
pub fn level(debug: bool, rust_log: Option<&str>) -> LevelFilter {
    if debug {
        return LevelFilter::Debug;
    }
    rust_log
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// The logger for `--debug` / `RUST_LOG`: `level`'s level for every target, and with
/// `RUST_LOG` directives on top (never with `--debug`).
pub fn builder(debug: bool, rust_log: Option<&str>) -> env_logger::Builder {
    let mut b = env_logger::Builder::new();
    b.target(env_logger::Target::Stderr)
        .filter_level(level(debug, rust_log))
        .format(|out, record| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            writeln!(
                out,
                "{}.{:03} {:<5} {}: {}",
                now.as_secs(),
                now.subsec_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    if let Some(directives) = rust_log.filter(|v| !debug && v.contains(['=', ','])) {
        b.parse_filters(directives);
    }
    b
}

/// Installs the logger; a second call leaves the first logger in place.
pub fn init(debug: bool, rust_log: Option<&str>) {
    let _ = builder(debug, rust_log).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level(true, Some("error")), LevelFilter::Debug);
        assert_eq!(level(false, Some("warn")), LevelFilter::Warn);
        assert_eq!(level(false, Some("bogus")), LevelFilter::Info);
        assert_eq!(level(false, None), LevelFilter::Info);
    }

    #[test]
    fn directives() {
        let max = |debug, v| builder(debug, v).build().filter();
        assert_eq!(
            max(false, Some("warn,tether_broker=trace")),
            LevelFilter::Trace
        );
        assert_eq!(max(false, Some("bogus")), LevelFilter::Info);
        assert_eq!(max(true, Some("error")), LevelFilter::Debug);
        assert_eq!(max(false, None), LevelFilter::Info);
    }
}
