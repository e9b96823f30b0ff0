//! tetherd's configuration: the `[broker]` table of tether's node config file (schema in
//! `tether_api::config`, `/etc/tether/config.toml` by default) with its defaults applied,
//! its values checked, and tetherd's command-line flags overlaid.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_api::config::BrokerSection;
use tether_api::{paths, ConfigError};

use crate::error::Error;

pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;
/// Rotated audit logs kept by default: `<audit_log>.1`.
pub const DEFAULT_AUDIT_KEEP: u32 = 1;
/// How often tetherd collects garbage unless `[broker] gc_interval` says otherwise.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(60);

/// Where tetherd serves Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MetricsAddr {
    #[default]
    Off,
    /// A unix socket path (`unix:/path`).
    Unix(PathBuf),
    /// A loopback TCP address (`127.0.0.1:9464`, `[::1]:9464`).
    Tcp(SocketAddr),
}

impl MetricsAddr {
    /// Parses `off`, `unix:/path` or a loopback `ip:port`; any other address is refused.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(MetricsAddr::Off);
        }
        if let Some(path) = value.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!(
                    "metrics {value:?}: unix socket path must be absolute"
                ));
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = value.parse().map_err(|_| {
            format!("metrics {value:?}: expected \"off\", \"unix:/path\" or a loopback ip:port")
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "metrics {value:?}: {} is not a loopback address; metrics are only served on loopback or a unix socket",
                addr.ip()
            ));
        }
        Ok(MetricsAddr::Tcp(addr))
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Off => f.write_str("off"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// tetherd's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The ttrpc socket.
    pub socket: PathBuf,
    /// The bpffs directory holding one directory per object version.
    pub pin_root: PathBuf,
    /// The audit JSON-lines file.
    pub audit_log: PathBuf,
    /// Rotate `audit_log` to `<audit_log>.1` once it grows past this.
    pub audit_max_bytes: u64,
    /// Rotated audit logs kept (`.1` ... `.N`); 0: none.
    pub audit_keep: u32,
    pub metrics: MetricsAddr,
    /// Non-root uids allowed to call tetherd besides root.
    pub allowed_uids: Vec<u32>,
    /// Collect garbage this often (`[broker] gc_interval` in seconds; 0 = never).
    pub gc_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: paths::SOCKET.into(),
            pin_root: paths::PIN_ROOT.into(),
            audit_log: paths::AUDIT_LOG.into(),
            audit_max_bytes: DEFAULT_AUDIT_MAX_BYTES,
            audit_keep: DEFAULT_AUDIT_KEEP,
            metrics: MetricsAddr::Off,
            allowed_uids: Vec::new(),
            gc_interval: Some(DEFAULT_GC_INTERVAL),
        }
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub pin_root: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub metrics: Option<String>,
}

impl Config {
    /// Parses the text of a config file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, Error> {
        Self::from_section(BrokerSection::parse(text, origin)?, origin)
    }

    /// Loads `path`, or the default file if `path` is `None` (a missing default file
    /// means defaults; a named file must exist).
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let origin = path.unwrap_or(Path::new(paths::CONFIG_FILE));
        Self::from_section(BrokerSection::load(path)?, origin)
    }

    /// The `[broker]` table of the file `origin` with defaults applied and values checked.
    fn from_section(b: BrokerSection, origin: &Path) -> Result<Self, Error> {
        let err = |reason: String| ConfigError::Invalid {
            path: origin.to_path_buf(),
            reason,
        };
        let d = Config::default();
        let metrics = match b.metrics {
            Some(m) => MetricsAddr::parse(&m).map_err(|r| err(format!("[broker] {r}")))?,
            None => d.metrics,
        };
        if b.audit_max_bytes == Some(0) {
            return Err(err("[broker] audit_max_bytes must be > 0".into()).into());
        }
        Ok(Config {
            socket: b.socket.unwrap_or(d.socket),
            pin_root: b.pin_root.unwrap_or(d.pin_root),
            audit_log: b.audit_log.unwrap_or(d.audit_log),
            audit_max_bytes: b.audit_max_bytes.unwrap_or(d.audit_max_bytes),
            audit_keep: b.audit_keep.unwrap_or(d.audit_keep),
            metrics,
            allowed_uids: b.allowed_uids.unwrap_or_default(),
            gc_interval: match b.gc_interval {
                None => d.gc_interval,
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
            },
        })
    }

    /// Applies command-line overrides.
    pub fn apply(&mut self, o: Overrides) -> Result<(), Error> {
        if let Some(s) = o.socket {
            self.socket = s;
        }
        if let Some(p) = o.pin_root {
            self.pin_root = p;
        }
        if let Some(a) = o.audit_log {
            self.audit_log = a;
        }
        if let Some(m) = o.metrics {
            self.metrics = MetricsAddr::parse(&m).map_err(|reason| Error::Flag {
                flag: "--metrics",
                reason,
            })?;
        }
        Ok(())
    }

    /// The directory holding the socket, the instance lock and tetherd's log.
    pub fn socket_dir(&self) -> PathBuf {
        paths::socket_dir(&self.socket)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_packaged_default_config_parses() {
        let text = include_str!("../../packaging/config.toml");
        Config::parse(text, std::path::Path::new("packaging/config.toml")).unwrap();
    }

    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(text, Path::new("/etc/tether/config.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn parses_broker_table_and_ignores_shim_tables() {
        let c = parse(
            r#"
[runc]
binary = "/usr/sbin/runc"
[attach]
whatever = 1
[defaults]
x = "y"
[broker]
socket = "/tmp/t/tetherd.sock"
pin_root = "/sys/fs/bpf/t2"
audit_log = "/tmp/audit.jsonl"
metrics = "127.0.0.1:9464"
audit_max_bytes = 1024
allowed_uids = [1000]
gc_interval = 300
"#,
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/t/tetherd.sock"));
        assert_eq!(c.pin_root, PathBuf::from("/sys/fs/bpf/t2"));
        assert_eq!(c.audit_log, PathBuf::from("/tmp/audit.jsonl"));
        assert_eq!(
            c.metrics,
            MetricsAddr::Tcp("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(c.audit_max_bytes, 1024);
        assert_eq!(c.allowed_uids, vec![1000]);
        assert_eq!(c.gc_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.socket_dir(), PathBuf::from("/tmp/t"));
    }

    #[test]
    fn gc_interval_defaults_to_a_minute_and_zero_turns_it_off() {
        assert_eq!(parse("").unwrap().gc_interval, Some(DEFAULT_GC_INTERVAL));
        assert_eq!(DEFAULT_GC_INTERVAL, Duration::from_secs(60));
        assert_eq!(
            parse("[broker]\ngc_interval = 0\n").unwrap().gc_interval,
            None
        );
        assert_eq!(
            parse("[broker]\ngc_interval = 5\n").unwrap().gc_interval,
            Some(Duration::from_secs(5))
        );
        let e = parse("[broker]\ngc_interval = -1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("gc_interval") || e.contains("invalid value"),
            "{e}"
        );
        let e = parse("[broker]\ngc_interval = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/tether/config.toml"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = parse("[broker]\nsockett = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sockett"), "{e}");
        assert!(e.contains("/etc/tether/config.toml"), "{e}");
        let e = parse("[brokr]\n").unwrap_err().to_string();
        assert!(e.contains("brokr"), "{e}");
    }

    #[test]
    fn metrics_addresses() {
        assert_eq!(MetricsAddr::parse("off").unwrap(), MetricsAddr::Off);
        assert_eq!(
            MetricsAddr::parse("unix:/run/tether/metrics.sock").unwrap(),
            MetricsAddr::Unix("/run/tether/metrics.sock".into())
        );
        assert!(matches!(
            MetricsAddr::parse("[::1]:9464").unwrap(),
            MetricsAddr::Tcp(_)
        ));
        for bad in [
            "0.0.0.0:9464",
            "10.1.2.3:9464",
            "[::]:9464",
            "localhost:9464",
            "unix:rel",
        ] {
            let e = MetricsAddr::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let e = parse("[broker]\nmetrics = \"0.0.0.0:9464\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.0:9464") && e.contains("loopback"), "{e}");
    }

    #[test]
    fn default_paths_are_the_api_s_and_the_pin_root_tether_bpf_s() {
        let d = Config::default();
        assert_eq!(d.socket, PathBuf::from(paths::SOCKET));
        assert_eq!(d.audit_log, PathBuf::from(paths::AUDIT_LOG));
        // tether-bpf keeps its own default for the pins; both must name one directory.
        assert_eq!(paths::PIN_ROOT, tether_bpf::pins::DEFAULT_ROOT);
        assert_eq!(d.pin_root, PathBuf::from(paths::PIN_ROOT));
    }

    #[test]
    fn overrides_win() {
        let mut c = parse("[broker]\nsocket = \"/a.sock\"\n").unwrap();
        c.apply(Overrides {
            socket: Some("/b/c.sock".into()),
            metrics: Some("unix:/m.sock".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/b/c.sock"));
        assert_eq!(c.metrics, MetricsAddr::Unix("/m.sock".into()));
        assert!(c
            .apply(Overrides {
                metrics: Some("192.168.1.1:1".into()),
                ..Default::default()
            })
            .is_err());
    }
}
