//! Runtime options: what containerd's clients pass to a runc shim, in every form they
//! send it, resolved against tether's config file into one [`ShimOptions`].
//!
//! Accepted `Any` types: `containerd.runc.v1.Options` (the runc v2 shim's options,
//! sent by ctr, Docker and CRI for runc runtimes), the older
//! `containerd.linux.runc.CreateOptions` / `RuncOptions`, and CRI's
//! `runtimeoptions.v1.Options` whose `config_path` names a tether config file. Any
//! other type is rejected: a runtime option the shim would silently ignore is a bug
//! report waiting to happen.

use std::path::{Path, PathBuf};

use containerd_shim::protos::{
    protobuf::{well_known_types::any::Any, Message},
    shim::oci::{CheckpointOptions, Options},
};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    error::{Error, Result},
    generated::{runctypes, runtimeoptions},
    runc::RuncConfig,
};

pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";

/// Everything the shim needs from the runtime options and the config file,
/// persisted in the bundle (`tether-options.json`) so the `delete` action, run
/// without options, uses the same runc.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
    pub criu_path: String,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
    pub io_uid: u32,
    pub io_gid: u32,
    pub shim_cgroup: String,
    pub criu_image_path: String,
    pub criu_work_path: String,
    pub config_path: Option<PathBuf>,
}

const OPTIONS_FILE: &str = "tether-options.json";

fn type_name(any: &Any) -> &str {
    // containerd writes bare names, protobuf's Any::pack prefixes a host.
    any.type_url.rsplit('/').next().unwrap_or_default()
}

fn decode<M: Message>(any: &Any, what: &'static str) -> Result<M> {
    M::parse_from_bytes(&any.value).map_err(|source| Error::Decode { what, source })
}

impl ShimOptions {
    /// Decodes the options of a Create request (or of `start`'s stdin).
    pub fn from_any(any: Option<&Any>) -> Result<Self> {
        let mut o = ShimOptions::default();
        let Some(any) = any.filter(|a| !a.type_url.is_empty() || !a.value.is_empty()) else {
            return Ok(o);
        };
        match type_name(any) {
            "containerd.runc.v1.Options" => {
                let r: Options = decode(any, "runc options")?;
                o.binary_name = r.binary_name;
                o.root = r.root;
                o.systemd_cgroup = r.systemd_cgroup;
                o.no_pivot_root = r.no_pivot_root;
                o.no_new_keyring = r.no_new_keyring;
                o.io_uid = r.io_uid;
                o.io_gid = r.io_gid;
                o.shim_cgroup = r.shim_cgroup;
                o.criu_image_path = r.criu_image_path;
                o.criu_work_path = r.criu_work_path;
            }
            "containerd.linux.runc.CreateOptions" => {
                let c: runctypes::CreateOptions = decode(any, "runc create options")?;
                o.no_pivot_root = c.no_pivot_root;
                o.no_new_keyring = c.no_new_keyring;
                o.io_uid = c.io_uid;
                o.io_gid = c.io_gid;
                o.shim_cgroup = c.shim_cgroup;
                o.criu_image_path = c.criu_image_path;
                o.criu_work_path = c.criu_work_path;
            }
            "containerd.linux.runc.RuncOptions" => {
                let r: runctypes::RuncOptions = decode(any, "runc runtime options")?;
                o.binary_name = r.runtime;
                o.root = r.runtime_root;
                o.criu_path = r.criu_path;
                o.systemd_cgroup = r.systemd_cgroup;
            }
            "runtimeoptions.v1.Options" => {
                let r: runtimeoptions::Options = decode(any, "runtime options")?;
                if !r.config_body.is_empty() {
                    return Err(Error::InvalidArgument(
                        "runtime option ConfigBody is not supported by tether; use ConfigPath"
                            .into(),
                    ));
                }
                if !r.config_path.is_empty() {
                    o.config_path = Some(PathBuf::from(r.config_path));
                }
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown runtime options type {other:?}"
                )))
            }
        }
        Ok(o)
    }

    /// The runc to use: runtime options first, then the config file, then defaults.
    pub fn runc_config(&self, config: &Config, namespace: &str) -> RuncConfig {
        let binary = if !self.binary_name.is_empty() {
            self.binary_name.clone()
        } else {
            config.runc.binary.clone().unwrap_or_else(|| "runc".into())
        };
        let base = if !self.root.is_empty() {
            PathBuf::from(&self.root)
        } else {
            config
                .runc
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNC_ROOT))
        };
        RuncConfig {
            binary: PathBuf::from(binary),
            root: base.join(namespace),
            systemd_cgroup: self.systemd_cgroup || config.runc.systemd_cgroup.unwrap_or(false),
            criu: (!self.criu_path.is_empty()).then(|| PathBuf::from(&self.criu_path)),
        }
    }

    pub fn save(&self, bundle: &Path) -> Result<()> {
        let data = serde_json::to_vec(self).map_err(|source| Error::Json {
            context: "encode shim options".into(),
            source,
        })?;
        std::fs::write(bundle.join(OPTIONS_FILE), data)
            .map_err(|e| Error::io(format!("write {OPTIONS_FILE}"), e))
    }

    /// Options saved by Create, or defaults if Create never got that far.
    pub fn load(bundle: &Path) -> Result<Self> {
        match std::fs::read(bundle.join(OPTIONS_FILE)) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| Error::Json {
                context: format!("parse {}", bundle.join(OPTIONS_FILE).display()),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::io(format!("read {OPTIONS_FILE}"), e)),
        }
    }
}

/// Checkpoint options in either form (`containerd.runc.v1.CheckpointOptions` or the
/// older `containerd.linux.runc.CheckpointOptions`).
pub fn checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
        return Ok(CheckpointOptions::default());
    };
    match type_name(any) {
        "containerd.runc.v1.CheckpointOptions" => decode(any, "checkpoint options"),
        "containerd.linux.runc.CheckpointOptions" => {
            let c: runctypes::CheckpointOptions = decode(any, "checkpoint options")?;
            Ok(CheckpointOptions {
                exit: c.exit,
                open_tcp: c.open_tcp,
                external_unix_sockets: c.external_unix_sockets,
                terminal: c.terminal,
                file_locks: c.file_locks,
                empty_namespaces: c.empty_namespaces,
                cgroups_mode: c.cgroups_mode,
                image_path: c.image_path,
                work_path: c.work_path,
                ..Default::default()
            })
        }
        other => Err(Error::InvalidArgument(format!(
            "unknown checkpoint options type {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_of<M: Message>(url: &str, m: &M) -> Any {
        Any {
            type_url: url.into(),
            value: m.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[test]
    fn runc_v2_options() {
        let opts = Options {
            binary_name: "/usr/local/sbin/runc".into(),
            root: "/run/custom".into(),
            systemd_cgroup: true,
            io_uid: 1000,
            ..Default::default()
        };
        let o = ShimOptions::from_any(Some(&any_of("containerd.runc.v1.Options", &opts))).unwrap();
        assert_eq!(o.io_uid, 1000);
        let rc = o.runc_config(&Config::default(), "k8s.io");
        assert_eq!(rc.binary, PathBuf::from("/usr/local/sbin/runc"));
        assert_eq!(rc.root, PathBuf::from("/run/custom/k8s.io"));
        assert!(rc.systemd_cgroup);
        // Packed by protobuf (host-prefixed type URL) works the same.
        let packed = Any::pack(&opts).unwrap();
        assert_eq!(ShimOptions::from_any(Some(&packed)).unwrap(), o);
    }

    #[test]
    fn legacy_create_and_runc_options() {
        let c = runctypes::CreateOptions {
            no_pivot_root: true,
            shim_cgroup: "/shims".into(),
            ..Default::default()
        };
        let o = ShimOptions::from_any(Some(&any_of("containerd.linux.runc.CreateOptions", &c)))
            .unwrap();
        assert!(o.no_pivot_root);
        assert_eq!(o.shim_cgroup, "/shims");
        let r = runctypes::RuncOptions {
            runtime: "crun".into(),
            ..Default::default()
        };
        let o =
            ShimOptions::from_any(Some(&any_of("containerd.linux.runc.RuncOptions", &r))).unwrap();
        assert_eq!(
            o.runc_config(&Config::default(), "ns").binary,
            PathBuf::from("crun")
        );
    }

    #[test]
    fn cri_config_path() {
        let r = runtimeoptions::Options {
            config_path: "/etc/tether/profile.toml".into(),
            ..Default::default()
        };
        let o = ShimOptions::from_any(Some(&any_of("runtimeoptions.v1.Options", &r))).unwrap();
        assert_eq!(
            o.config_path,
            Some(PathBuf::from("/etc/tether/profile.toml"))
        );
    }

    #[test]
    fn defaults_and_config_file() {
        let o = ShimOptions::from_any(None).unwrap();
        let rc = o.runc_config(&Config::default(), "default");
        assert_eq!(rc.binary, PathBuf::from("runc"));
        assert_eq!(rc.root, PathBuf::from("/run/containerd/runc/default"));
        let cfg = Config::parse(
            "[runc]\nbinary=\"/opt/runc\"\nsystemd_cgroup=true\n",
            Path::new("c"),
        )
        .unwrap();
        let rc = o.runc_config(&cfg, "default");
        assert_eq!(rc.binary, PathBuf::from("/opt/runc"));
        assert!(rc.systemd_cgroup);
    }

    #[test]
    fn unknown_type_and_garbage_are_rejected() {
        let a = Any {
            type_url: "example.Unknown".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        let e = ShimOptions::from_any(Some(&a)).unwrap_err();
        assert!(e.to_string().contains("example.Unknown"));
        let a = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0xff, 0xff, 0xff],
            ..Default::default()
        };
        assert!(ShimOptions::from_any(Some(&a)).is_err());
    }

    #[test]
    fn options_round_trip_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ShimOptions::load(dir.path()).unwrap(),
            ShimOptions::default()
        );
        let o = ShimOptions {
            binary_name: "runc".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        o.save(dir.path()).unwrap();
        assert_eq!(ShimOptions::load(dir.path()).unwrap(), o);
    }
}
