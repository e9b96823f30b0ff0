//! Which containerd release the tests run against, and its config file in that release's own
//! format.
//!
//! By default the system's `containerd`, `ctr` and `containerd-shim-runc-v2` (found on PATH:
//! Debian 12's 1.6). With `TETHER_CONTAINERD_DIR` set, all three come from that directory
//! instead (a directory holding them, or an unpacked Debian package with them in `usr/bin`, as
//! `scripts/debs.sh fetch trixie containerd` prints), so the runc shim compared side by side
//! is always the one of the containerd under test. The release is read from
//! `containerd --version`: 1.x takes a `version = 2` config, 2.x a `version = 3` one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::process;

/// Env var naming the directory of the containerd under test (default: the system's).
pub const CONTAINERD_DIR_ENV: &str = "TETHER_CONTAINERD_DIR";

/// The containerd binaries under test: `containerd`, `ctr`, `containerd-shim-runc-v2`.
pub const BINARIES: [&str; 3] = ["containerd", "ctr", "containerd-shim-runc-v2"];

/// The directory `$TETHER_CONTAINERD_DIR` names (its `usr/bin` if that holds containerd), or
/// `None` for the system's containerd.
pub fn dir() -> Option<PathBuf> {
    let d = PathBuf::from(std::env::var_os(CONTAINERD_DIR_ENV)?);
    if d.as_os_str().is_empty() {
        return None;
    }
    let usr_bin = d.join("usr/bin");
    Some(if usr_bin.join("containerd").is_file() {
        usr_bin
    } else {
        d
    })
}

/// The path to run `name` (one of [`BINARIES`]) of the containerd under test: in
/// [`dir`], else the bare name (looked up on PATH).
pub fn binary(name: &str) -> PathBuf {
    match dir() {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

/// A containerd release, from `containerd --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The version as containerd prints it (`1.6.20~ds1`, `2.1.9+unknown`).
    pub version: String,
    pub major: u32,
    pub minor: u32,
}

impl Release {
    /// Parses `containerd --version` output: `containerd <module> <version> [<revision>]`.
    pub fn parse(version_output: &str) -> Result<Self> {
        let version = version_output
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| anyhow!("no version in {version_output:?}"))?;
        let mut parts = version.trim_start_matches('v').split(['.', '-', '~', '+']);
        let mut number = |what: &str| -> Result<u32> {
            parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("no {what} version in {version:?}"))
        };
        let major = number("major")?;
        let minor = number("minor")?;
        Ok(Release {
            version: version.to_owned(),
            major,
            minor,
        })
    }

    /// The config format this release reads natively: 2 for 1.x, 3 from 2.0 on.
    pub fn config_version(&self) -> u32 {
        if self.major >= 2 {
            3
        } else {
            2
        }
    }

    /// Plugins a private test daemon must not run. CRI, unless `cri` (tests use `ctr`
    /// unless they play kubelet) and, from 1.7, NRI, whose socket (`/var/run/nri/nri.sock`)
    /// is one per machine: 2.x enables it by default, and two daemons would fight over it.
    /// 2.x splits CRI into three plugins.
    pub fn disabled_plugins(&self, cri: bool) -> Vec<&'static str> {
        let mut p = Vec::new();
        if !cri {
            p.push("io.containerd.grpc.v1.cri");
        }
        if self.major >= 2 && !cri {
            p.extend([
                "io.containerd.cri.v1.runtime",
                "io.containerd.cri.v1.images",
            ]);
        }
        if (self.major, self.minor) >= (1, 7) {
            p.push("io.containerd.nri.v1.nri");
        }
        p
    }

    /// The daemon's config.toml in this release's format: its root, state and socket, NRI
    /// off, CRI off unless `cri`, no debug or metrics listeners.
    pub fn config_toml(&self, root: &Path, state: &Path, sock: &Path, cri: bool) -> String {
        let disabled: Vec<String> = self
            .disabled_plugins(cri)
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        format!(
            r#"version = {version}
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""
"#,
            version = self.config_version(),
            root = root.display(),
            state = state.display(),
            sock = sock.display(),
            disabled = disabled.join(", "),
        )
    }
}

/// The release of the containerd under test (asked once per process).
pub fn release() -> Result<Release> {
    static RELEASE: OnceLock<Result<Release, String>> = OnceLock::new();
    RELEASE
        .get_or_init(|| detect().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn detect() -> Result<Release> {
    if let Some(d) = dir() {
        for name in BINARIES {
            if !d.join(name).is_file() {
                bail!("${CONTAINERD_DIR_ENV}: no {name} in {}", d.display());
            }
        }
    }
    let mut cmd = Command::new(binary("containerd"));
    cmd.arg("--version");
    // Generous: the first exec of the binary in a fresh VM reads all of it from the host's
    // file system, under TCG, beside whatever else the machine runs.
    let out = process::run(&mut cmd, None, Duration::from_secs(120))?
        .ok()
        .context("containerd --version")?;
    Release::parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_version_lines() {
        let r = Release::parse(
            "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n",
        )
        .unwrap();
        assert_eq!((r.major, r.minor, r.config_version()), (1, 6, 2));
        assert_eq!(r.version, "1.6.20~ds1");
        let r = Release::parse("containerd github.com/containerd/containerd/v2 2.1.9+unknown \n")
            .unwrap();
        assert_eq!((r.major, r.minor, r.config_version()), (2, 1, 3));
        assert!(Release::parse("containerd").is_err());
    }

    #[test]
    fn plugins_off_per_release() {
        let r16 = Release::parse("c m 1.6.20").unwrap();
        assert_eq!(r16.disabled_plugins(false), ["io.containerd.grpc.v1.cri"]);
        assert!(r16.disabled_plugins(true).is_empty());
        let r17 = Release::parse("c m 1.7.24~ds1").unwrap();
        assert!(r17
            .disabled_plugins(false)
            .contains(&"io.containerd.nri.v1.nri"));
        assert_eq!(r17.disabled_plugins(true), ["io.containerd.nri.v1.nri"]);
        let r21 = Release::parse("c m 2.1.9").unwrap();
        let cri = r21.config_toml(Path::new("/r"), Path::new("/s"), Path::new("/c.sock"), true);
        assert!(!cri.contains("cri"), "{cri}");
        let toml = r21.config_toml(
            Path::new("/r"),
            Path::new("/s"),
            Path::new("/c.sock"),
            false,
        );
        assert!(toml.starts_with("version = 3\n"));
        assert!(toml.contains("\"io.containerd.cri.v1.runtime\""));
        assert!(toml.contains("address = \"/c.sock.ttrpc\""));
    }
}
