//! The schema of tether's node config file (`/etc/tether/config.toml`, see
//! [`crate::paths`]): one table per component, every key optional, defined here once for
//! the shim and tetherd. An unknown table or key is an error naming it and the file.
//!
//! [`Config`] is the whole file as the shim reads it (`[runc]`, `[attach]`, `[broker]`,
//! every key checked). tetherd reads only `[broker]` ([`BrokerSection::load`]), leaving
//! the shim's tables to the shim. What a key's value means, and the defaults applied to an
//! absent key, belong to the component that reads it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::paths;

/// The whole config file.
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

/// `[runc]`: how to run runc; the runtime options containerd passes override each key.
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

/// `[attach]`: what every container of the runtime gets, before its annotations are
/// applied.
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
    /// Where a container's packets are judged against its deny rules: "auto" (default: at
    /// the interfaces where it is counted there, else at the cgroup), "cgroup" (the
    /// cgroup_skb egress program, every denied send fails with EPERM) or "interfaces"
    /// (TC alone, for a container whose network namespace runc creates; raw and ICMP
    /// packets are dropped there without an error, and the cgroup_skb hook's cost is saved).
    pub judge_at: Option<String>,
    /// Audit events: "denials" (default), "connections" (denials and new connections), "off".
    pub audit: Option<String>,
    /// Keep one audit event in N (default 1).
    pub audit_sample: Option<u32>,
    /// Audit events per second and CPU per container (default 100; 0 = unlimited).
    pub audit_rate: Option<u32>,
    /// Deadline of the whole attach step in milliseconds (default 2000); also how long a
    /// delete waits to hand the container's final counters to tetherd.
    pub deadline_ms: Option<u64>,
    /// Nice value of the shim's thread during the attach step (default -20; 0: the
    /// shim's own).
    pub nice: Option<i32>,
    /// Deny rules per container, the node's and its annotation's together (default 256).
    pub max_rules: Option<u32>,
    /// Interfaces per network namespace that get TC programs (default 64).
    pub max_interfaces: Option<u32>,
    /// The `tether.io/` annotations containers may set (full keys); default: those that
    /// can only add to the node's policy. Whatever the list, an annotation can never lower
    /// what this section sets.
    pub annotations: Option<Vec<String>>,
    /// The tetherd binary started on demand (default: `tetherd` next to the shim, or on PATH).
    pub tetherd: Option<PathBuf>,
}

/// `[broker]`: tetherd's settings. The shim reads `socket` and `pin_root`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// tetherd's socket (default [`paths::SOCKET`]).
    pub socket: Option<PathBuf>,
    /// Where the programs are pinned (default [`paths::PIN_ROOT`]).
    pub pin_root: Option<PathBuf>,
    /// The audit JSON-lines file (default [`paths::AUDIT_LOG`]).
    pub audit_log: Option<PathBuf>,
    /// Where tetherd serves metrics: "off" (default), "unix:/path" or a loopback ip:port.
    pub metrics: Option<String>,
    /// Rotate the audit log once it grows past this many bytes.
    pub audit_max_bytes: Option<u64>,
    /// Rotated audit logs kept (default 1; 0: none).
    pub audit_keep: Option<u32>,
    /// Non-root uids allowed to call tetherd besides root.
    pub allowed_uids: Option<Vec<u32>>,
    /// Collect garbage this often, in seconds (0: never).
    pub gc_interval: Option<u64>,
}

/// The attach step's deadline when the config names none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(2000);

impl AttachSection {
    /// `deadline_ms`, or [`DEFAULT_DEADLINE`].
    pub fn deadline(&self) -> Duration {
        self.deadline_ms
            .map_or(DEFAULT_DEADLINE, Duration::from_millis)
    }
}

impl BrokerSection {
    /// The socket, or the default one.
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| paths::SOCKET.into())
    }

    /// The pin root, or the default one.
    pub fn pin_root(&self) -> PathBuf {
        self.pin_root
            .clone()
            .unwrap_or_else(|| paths::PIN_ROOT.into())
    }

    /// Parses the text of a config file for its `[broker]` table; `origin` names the file
    /// in errors. The shim's tables, and a `[defaults]` table, are accepted unread: the
    /// shim checks its own.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct BrokerView {
            #[serde(default)]
            broker: BrokerSection,
            #[serde(default)]
            #[allow(dead_code)]
            runc: Option<toml::Value>,
            #[serde(default)]
            #[allow(dead_code)]
            attach: Option<toml::Value>,
            #[serde(default)]
            #[allow(dead_code)]
            defaults: Option<toml::Value>,
        }
        Ok(from_toml::<BrokerView>(text, origin)?.broker)
    }

    /// [`Self::parse`] of the file at `path`, or of the default file if `path` is `None`
    /// (an absent default file means defaults; a named file must exist).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match read(path)? {
            Some((text, path)) => Self::parse(&text, path),
            None => Ok(Self::default()),
        }
    }
}

impl Config {
    /// Parses the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let config: Self = from_toml(text, origin)?;
        // Values a type allows but the attach step cannot use: one event in 0, a deadline
        // no attach can meet.
        let zero = |key: &str, value: Option<u64>| match value {
            Some(0) => Err(ConfigError::Invalid {
                path: origin.to_path_buf(),
                reason: format!("[attach] {key} = 0: must be at least 1"),
            }),
            _ => Ok(()),
        };
        zero("audit_sample", config.attach.audit_sample.map(u64::from))?;
        zero("deadline_ms", config.attach.deadline_ms)?;
        Ok(config)
    }

    /// Loads the file the runtime options name (`from_options`), else the one
    /// `$TETHER_CONFIG` names (in containerd's environment, which shims inherit), else the
    /// default file. A named file must exist; an absent default file means defaults.
    pub fn load(from_options: Option<&Path>) -> Result<Self, ConfigError> {
        let path = paths::config_file(from_options);
        match read(path.as_deref())? {
            Some((text, path)) => Self::parse(&text, path),
            None => Ok(Self::default()),
        }
    }
}

/// Deserializes `text`; a syntax error, unknown key or wrong type names `origin`.
fn from_toml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: origin.to_path_buf(),
        reason: e.message().to_string(),
    })
}

/// The text of `path`, or of the default file; `None` if the default file is absent.
fn read(path: Option<&Path>) -> Result<Option<(String, &Path)>, ConfigError> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(paths::CONFIG_FILE), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some((text, path))),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
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
        let origin = Path::new("packaging/config.toml");
        Config::parse(text, origin).unwrap();
        BrokerSection::parse(text, origin).unwrap();
    }

    #[test]
    fn missing_named_file_is_an_error_missing_default_is_not() {
        let e = Config::load(Some(Path::new("/nonexistent/tether.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tether.toml"));
        let e = BrokerSection::load(Some(Path::new("/nonexistent/tether.toml"))).unwrap_err();
        assert!(e
            .to_string()
            .contains("read tether config /nonexistent/tether.toml"));
    }

    #[test]
    fn the_broker_reads_its_table_and_leaves_the_shims_to_the_shim() {
        let text = "[attach]\nwhatever = 1\n[broker]\nsocket = \"/s.sock\"\ngc_interval = 5\n";
        let b = BrokerSection::parse(text, Path::new("t")).unwrap();
        assert_eq!(
            (b.socket(), b.gc_interval),
            (PathBuf::from("/s.sock"), Some(5))
        );
        assert_eq!(b.pin_root(), PathBuf::from(paths::PIN_ROOT));
        let e = Config::parse(text, Path::new("t")).unwrap_err().to_string();
        assert!(e.contains("whatever"), "{e}");
        // The shim checks the broker's keys too: one schema, one set of names.
        let e = Config::parse("[broker]\nsockett = \"/x\"\n", Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockett"), "{e}");
    }
}
