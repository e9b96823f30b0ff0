//! tether's node configuration file as the shim reads it: the schema is tether-api's
//! (`tether_api::config`: `/etc/tether/config.toml`, or the file a runtime option or
//! `$TETHER_CONFIG` names); this module turns its errors into the shim's. A missing
//! default file means defaults; a named file that is missing, unreadable or malformed is
//! an error naming the file and the problem.

pub use tether_api::config::Config;
use tether_api::ConfigError;

use crate::error::Error;

impl From<ConfigError> for Error {
    /// A file that cannot be read is an I/O error; one that is malformed or has an
    /// unknown key or invalid value, an invalid argument (Create fails with it).
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Read { path, source } => {
                Error::io(format!("read tether config {}", path.display()), source)
            }
            invalid @ ConfigError::Invalid { .. } => Error::InvalidArgument(invalid.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn config_errors_become_the_shims() {
        let e =
            Error::from(Config::parse("[runc]\nbinry = 1\n", Path::new("/t.toml")).unwrap_err());
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("binry")),
            "{e}"
        );
        let e = Error::from(Config::load(Some(Path::new("/nonexistent/t.toml"))).unwrap_err());
        assert!(matches!(&e, Error::Io { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("read tether config /nonexistent/t.toml: "),
            "{e}"
        );
    }
}
