//! tetherd's logger: one line per record on stderr, `<unix time> LEVEL target: message`.
//! The level comes from `--debug` or `RUST_LOG` (`error`, `warn`, `info`, `debug`,
//! `trace`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}.{:03} {:<5} {}: {}",
            now.as_secs(),
            now.subsec_millis(),
            record.level(),
            record.target(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// The level for `--debug` / the value of `RUST_LOG` (default `info`).
pub fn level(debug: bool, rust_log: Option<&str>) -> LevelFilter {
    if debug {
        return LevelFilter::Debug;
    }
    rust_log
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::Info)
}

/// Installs the logger (once; later calls only change the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
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
}
