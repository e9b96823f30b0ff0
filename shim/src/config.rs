//! tether's node configuration file (`/etc/tether/config.toml`, or the file a runtime
//! option names). Missing default file means defaults; a named file that is missing,
//! unreadable or malformed is an error naming the file and the problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/tether/config.toml";
/// An environment variable naming the config file (e.g. set for a private containerd).
pub const CONFIG_ENV: &str = "TETHER_CONFIG";

#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub runc: RuncSection,
    #[serde(default)]
    pub attach: AttachSection,
    #[serde(default)]
    pub broker: BrokerSection,
}

/// What every container of the runtime gets, before its annotations are applied.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSection {
    /// Attach programs at all (default true).
    pub enabled: Option<bool>,
    /// Which programs: "all" (default), "none", "accounting", "policy".
    pub programs: Option<String>,
    /// Egress deny CIDRs for every container (annotations add to them).
    pub egress_deny: Option<Vec<String>>,
    /// Interfaces of the container's netns that get TC programs: "all" (default), "none",
    /// or a comma-separated list of names.
    pub interfaces: Option<String>,
    /// "closed" or "open"; default closed when the plan enforces a policy, else open.
    pub failure_policy: Option<String>,
    /// Where packets and bytes are counted: "auto" (default), "cgroup" or "interfaces".
    pub count_at: Option<String>,
    /// Audit events: "denials" (default), "connections" (denials and new connections), "off".
    pub audit: Option<String>,
    /// Keep one audit event in N (default 1).
    pub audit_sample: Option<u32>,
    /// Audit events per second and CPU per container (default 100; 0 = unlimited).
    pub audit_rate: Option<u32>,
    /// Deadline of the whole attach step in milliseconds (default 2000).
    pub deadline_ms: Option<u64>,
    /// Nice value of the shim's thread during the attach step (default -20; 0: the
    /// shim's own).
    pub nice: Option<i32>,
    /// The tetherd binary started on demand (default: `tetherd` next to the shim, or on PATH).
    pub tetherd: Option<PathBuf>,
}

/// The part of tetherd's section the shim reads; tetherd validates the whole section.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
pub struct BrokerSection {
    /// tetherd's socket (default `/run/tether/tetherd.sock`).
    pub socket: Option<PathBuf>,
    /// Where the programs are pinned (default `/sys/fs/bpf/tether`).
    pub pin_root: Option<PathBuf>,
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
        let config: Self = toml::from_str(text).map_err(|e| {
            Error::InvalidArgument(format!(
                "tether config {}: {}",
                origin.display(),
                e.message()
            ))
        })?;
        // Values a type allows but the attach step cannot use: one event in 0, a deadline
        // no attach can meet.
        let zero = |key: &str, value: Option<u64>| match value {
            Some(0) => Err(Error::InvalidArgument(format!(
                "tether config {}: [attach] {key} = 0: must be at least 1",
                origin.display()
            ))),
            _ => Ok(()),
        };
        zero("audit_sample", config.attach.audit_sample.map(u64::from))?;
        zero("deadline_ms", config.attach.deadline_ms)?;
        Ok(config)
    }

    /// Loads `path`, or the default file if `path` is `None` (absent default file:
    /// defaults).
    pub fn load(path: Option<&Path>) -> Result<Self> {
        // TETHER_CONFIG (in containerd's environment, which shims inherit) names the file
        // when the runtime options do not.
        let from_env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let (path, required) = match (path, from_env.as_deref()) {
            (Some(p), _) => (p, true),
            (None, Some(p)) => (p, true),
            (None, None) => (Path::new(DEFAULT_CONFIG_PATH), false),
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
    fn zero_sample_or_deadline_is_refused() {
        for key in ["audit_sample", "deadline_ms"] {
            let e = Config::parse(&format!("[attach]\n{key} = 0\n"), Path::new("t.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("at least 1"), "{e}");
        }
        let c = Config::parse(
            "[attach]\naudit_sample = 1\ndeadline_ms = 5\n",
            Path::new("t"),
        );
        assert_eq!(c.unwrap().attach.deadline_ms, Some(5));
    }

    #[test]
    fn the_packaged_default_config_parses() {
        let text = include_str!("../../packaging/config.toml");
        Config::parse(text, Path::new("packaging/config.toml")).unwrap();
    }

    #[test]
    fn missing_named_file_is_an_error_missing_default_is_not() {
        let e = Config::load(Some(Path::new("/nonexistent/tether.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tether.toml"));
    }
}
