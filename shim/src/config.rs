//! tether's node configuration file (`/etc/tether/config.toml`, or the file a runtime
//! option names). Missing default file means defaults; a named file that is missing,
//! unreadable or malformed is an error naming the file and the problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/tether/config.toml";

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runc: RuncSection,
    /// tetherd's section of the same file: tetherd validates it.
    #[serde(default, rename = "broker")]
    pub _broker: Option<toml::Table>,
}

/// How to run runc; the runtime options containerd passes override each key.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuncSection {
    /// The runc binary (name on PATH or absolute path). Default `runc`.
    pub binary: Option<String>,
    /// runc's state root; the namespace is appended. Default `/run/containerd/runc`.
    pub root: Option<PathBuf>,
    /// Use the systemd cgroup driver.
    pub systemd_cgroup: Option<bool>,
}

impl Config {
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        toml::from_str(text).map_err(|e| {
            Error::InvalidArgument(format!(
                "tether config {}: {}",
                origin.display(),
                e.message()
            ))
        })
    }

    /// Loads `path`, or the default file if `path` is `None` (absent default file:
    /// defaults).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let (path, required) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(
                format!("read tether config {}", path.display()),
                e,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_runc_section() {
        let c = Config::parse(
            "[runc]\nbinary = \"/usr/sbin/runc\"\nsystemd_cgroup = true\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.runc.binary.as_deref(), Some("/usr/sbin/runc"));
        assert_eq!(c.runc.systemd_cgroup, Some(true));
        assert_eq!(
            Config::parse("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_keys_and_bad_types_name_the_problem() {
        let e = Config::parse("[runc]\nbinry = \"x\"\n", Path::new("/etc/t.toml")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/t.toml") && m.contains("binry"), "{m}");
        let e = Config::parse("[runc]\nsystemd_cgroup = \"yes\"\n", Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("systemd_cgroup") || e.to_string().contains("bool"));
    }

    #[test]
    fn missing_named_file_is_an_error_missing_default_is_not() {
        let e = Config::load(Some(Path::new("/nonexistent/tether.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tether.toml"));
    }
}
