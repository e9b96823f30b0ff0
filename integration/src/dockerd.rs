//! A private dockerd for the Docker scenarios: own data root, exec root, socket, pid file and
//! `daemon.json` under a temporary directory, a bridge of its own on a subnet only it uses,
//! and tether registered both ways Docker can take it:
//!
//! - `tether-runc` (a runc-compatible binary, `"runtimes": {"tether-runc": {"path": ...}}`):
//!   every Docker release, the only way for Docker 20.10.
//! - From Docker 23: the shim itself (`docker run --runtime io.containerd.tether.v1`), and the
//!   `daemon.json` form tether ships (`"tether": {"runtimeType": "io.containerd.tether.v1",
//!   "options": {"ConfigPath": ...}}`).
//!
//! Which dockerd: the system's (Debian 12: 20.10), or the one in `$TETHER_DOCKER_DIR` (an
//! unpacked `docker.io` package with the matching `docker-cli` beside it, as
//! `scripts/docker-matrix.sh` prepares from Debian sid). Docker 20.10 runs its own managed
//! containerd (the system's); a Docker from 23 on runs over a private [`Containerd`] (the one
//! `$TETHER_CONTAINERD_DIR` names, e.g. 2.1 from sid) with the tether shim on its PATH, so a
//! dockerd restart (`live-restore`) leaves the containers running under that containerd.
//!
//! No host firewall rule or sysctl is touched (`--iptables=false`, `--ip-forward=false`).
//! Everything it started is stopped, and its mounts and bridges removed, in `Drop`.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;

use crate::containerd::{tether_shim_binary, Containerd};
use crate::process::{self, Output};
use crate::{procfs, rootfs, wait};

/// Env var naming the Docker under test: a directory holding `dockerd` and `docker`, or an
/// unpacked package tree with them in `usr/sbin` and `usr/bin` (default: the system's).
pub const DOCKER_DIR_ENV: &str = "TETHER_DOCKER_DIR";
/// The image every scenario runs (imported from a busybox rootfs).
pub const IMAGE: &str = "tether-busybox:latest";
/// The runtime name of `tether-runc` in every daemon's `daemon.json`.
pub const TETHER_RUNC: &str = "tether-runc";
/// The runtime name of the `runtimeType` form in `daemon.json` (Docker >= 23).
pub const TETHER: &str = "tether";
/// The shim's own runtime name, which Docker >= 23 takes as `--runtime`.
pub const TETHER_SHIM: &str = "io.containerd.tether.v1";
/// Deadline of one `docker` command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long dockerd may take to answer, and to exit after SIGTERM.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

/// The Docker under test: its binaries and release.
#[derive(Debug, Clone)]
pub struct Engine {
    pub dockerd: PathBuf,
    pub docker: PathBuf,
    /// As `dockerd --version` prints it (`20.10.24+dfsg1`, `28.5.2+dfsg4`).
    pub version: String,
    pub major: u32,
}

impl Engine {
    /// Docker 23 and later run containerd shims by name and take `runtimeType`.
    pub fn runs_shims(&self) -> bool {
        self.major >= 23
    }

    /// Parses `Docker version 28.5.2+dfsg4, build 3ef3c07`.
    pub fn parse_version(line: &str) -> Result<(String, u32)> {
        let version = line
            .split_whitespace()
            .nth(2)
            .map(|v| v.trim_end_matches(','))
            .ok_or_else(|| anyhow!("no version in {line:?}"))?;
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| anyhow!("no major version in {version:?}"))?;
        Ok((version.to_owned(), major))
    }
}

/// The Docker under test (asked once per process).
pub fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| detect().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("{e}"))
}

fn detect() -> Result<Engine> {
    let (dockerd, docker) = match std::env::var_os(DOCKER_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(d) => {
            let d = PathBuf::from(d);
            let find = |name: &str| {
                ["usr/sbin", "usr/bin", ""]
                    .iter()
                    .map(|sub| d.join(sub).join(name))
                    .find(|p| p.is_file())
                    .ok_or_else(|| anyhow!("${DOCKER_DIR_ENV}: no {name} in {}", d.display()))
            };
            (find("dockerd")?, find("docker")?)
        }
        None => (
            PathBuf::from("/usr/sbin/dockerd"),
            PathBuf::from("/usr/bin/docker"),
        ),
    };
    if !dockerd.is_file() {
        bail!("{} missing: install docker.io", dockerd.display());
    }
    let out = process::run(
        Command::new(&dockerd).arg("--version"),
        None,
        Duration::from_secs(20),
    )?
    .ok()
    .context("dockerd --version")?;
    let (version, major) = Engine::parse_version(&out.stdout)?;
    Ok(Engine {
        dockerd,
        docker,
        version,
        major,
    })
}

/// How a scenario wants its daemon.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    /// Appended to tether's node config (e.g. an `[attach]` section).
    pub tether_toml: String,
    /// Docker >= 23: appended to the config file that `daemon.json`'s `tether` runtime names
    /// in its options (`ConfigPath`), which otherwise is the node config. Must not repeat a
    /// section of `tether_toml`.
    pub runtime_toml: String,
    /// `live-restore`: containers keep running while dockerd is down.
    pub live_restore: bool,
}

/// A private dockerd; see the module docs.
pub struct Dockerd {
    engine: Engine,
    /// The private containerd under a Docker >= 23 (None: dockerd's managed one).
    containerd: Option<Containerd>,
    dir: TempDir,
    child: Option<Child>,
    /// The third octet of this daemon's subnets (10.216.N.0/24 bridge, 10.217.N.0/24 spare).
    octet: u8,
}

/// Picks a third octet no other fixture of this process uses, spread over processes by pid.
fn next_octet() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id() % 24) * 10 + n % 10 + 1
}

impl Dockerd {
    /// Starts the daemon with `tether_toml` appended to tether's config and waits until it
    /// answers; imports [`IMAGE`].
    pub fn start(tether_toml: &str) -> Result<Self> {
        Self::start_with(Setup {
            tether_toml: tether_toml.to_owned(),
            ..Setup::default()
        })
    }

    /// Starts the daemon as `setup` says; see [`Dockerd::start`].
    pub fn start_with(setup: Setup) -> Result<Self> {
        crate::harness::require_root()?;
        let engine = engine()?;
        let dir = tempfile::Builder::new()
            .prefix("tether-dockerd-")
            .tempdir()?;
        let containerd = if engine.runs_shims() {
            Some(Containerd::start()?)
        } else {
            None
        };
        let mut d = Dockerd {
            engine,
            containerd,
            dir,
            child: None,
            octet: 0,
        };
        d.make_bridge()?;
        d.write_configs(&setup)?;
        d.spawn()?;
        d.import_image()?;
        Ok(d)
    }

    /// The Docker this daemon is.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The private containerd under a Docker >= 23.
    pub fn containerd(&self) -> Option<&Containerd> {
        self.containerd.as_ref()
    }

    /// Creates this daemon's default bridge (`--bridge`), on a /24 no other fixture uses.
    fn make_bridge(&mut self) -> Result<()> {
        for _ in 0..10 {
            let octet = u8::try_from(next_octet()).context("subnet octet")?;
            let name = format!("tdk{octet}");
            if Path::new("/sys/class/net").join(&name).exists() {
                continue;
            }
            ip(&["link", "add", "name", &name, "type", "bridge"])?;
            self.octet = octet;
            ip(&["addr", "add", &format!("10.216.{octet}.1/24"), "dev", &name])?;
            ip(&["link", "set", &name, "up"])?;
            return Ok(());
        }
        bail!("no free bridge name tdkN")
    }

    /// The default bridge's name.
    pub fn bridge(&self) -> String {
        format!("tdk{}", self.octet)
    }

    /// The default bridge's own address (the containers' gateway), for traffic tests.
    pub fn bridge_ip(&self) -> String {
        format!("10.216.{}.1", self.octet)
    }

    /// A /24 for a network a scenario creates (`docker network create --subnet`).
    pub fn spare_subnet(&self) -> String {
        format!("10.217.{}.0/24", self.octet)
    }

    fn tether_runc() -> Result<PathBuf> {
        let p = tether_shim_binary()?
            .parent()
            .map(|p| p.join("tether-runc"))
            .context("no directory for tether-runc")?;
        if !p.is_file() {
            bail!("{} is not built", p.display());
        }
        Ok(p)
    }

    /// tether's node config (the containerd fixture's under Docker >= 23), the config named
    /// by the `tether` runtime's options, and `daemon.json`.
    fn write_configs(&self, setup: &Setup) -> Result<()> {
        let node_config = self.tether_config();
        let base = match &self.containerd {
            Some(cd) => fs::read_to_string(cd.tether_config())?,
            None => format!(
                "[broker]\nsocket = \"{}\"\npin_root = \"{}\"\naudit_log = \"{}\"\n",
                self.tetherd_socket().display(),
                self.pin_root().display(),
                self.path().join("tetherd/audit.jsonl").display(),
            ),
        };
        let node = format!("{base}{}\n", setup.tether_toml);
        fs::write(&node_config, &node)?;
        let mut runtimes = serde_json::json!({
            TETHER_RUNC: { "path": Self::tether_runc()? },
        });
        if self.engine.runs_shims() {
            let options_config = self.path().join("tether-runtime.toml");
            fs::write(&options_config, format!("{node}{}\n", setup.runtime_toml))?;
            runtimes[TETHER] = serde_json::json!({
                "runtimeType": TETHER_SHIM,
                "options": { "ConfigPath": options_config },
            });
        }
        let json = serde_json::json!({
            "runtimes": runtimes,
            "live-restore": setup.live_restore,
        });
        fs::write(
            self.path().join("daemon.json"),
            serde_json::to_vec_pretty(&json)?,
        )?;
        if self.containerd.is_none() {
            let bpffs = self.bpffs();
            fs::create_dir_all(&bpffs)?;
            crate::bpffs::mount(&bpffs)?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::File::options()
            .create(true)
            .append(true)
            .open(self.path().join("dockerd.log"))?;
        let mut cmd = Command::new(&self.engine.dockerd);
        cmd.arg("--config-file")
            .arg(self.path().join("daemon.json"))
            .arg("--data-root")
            .arg(self.path().join("root"))
            .arg("--exec-root")
            .arg(self.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("--pidfile")
            .arg(self.path().join("docker.pid"))
            .arg("--bridge")
            .arg(self.bridge())
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            .env("TETHER_CONFIG", self.tether_config())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(cd) = &self.containerd {
            cmd.arg("--containerd").arg(cd.address());
        }
        self.child = Some(cmd.spawn().context("spawning dockerd")?);
        let answered = wait::wait_until("dockerd to answer", DAEMON_TIMEOUT, || {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bail!("dockerd exited early with {status}");
            }
            Ok(self.docker(&["version"])?.success().then_some(()))
        });
        answered.with_context(|| format!("dockerd log:\n{}", self.log_tail(30)))
    }

    fn import_image(&self) -> Result<()> {
        let rootfs = rootfs::build_busybox(&self.path().join("rootfs"))?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = Command::new(&self.engine.docker)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.context("tar stdout")?)
            .output()?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Stops dockerd (SIGTERM; with `live-restore` its containers keep running) and starts it
    /// again with the same configuration.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon();
        self.spawn()
    }

    fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if process::wait_with_deadline(&mut child, DAEMON_TIMEOUT).is_err() {
                eprintln!("dockerd {pid} ignored SIGTERM; killed it");
            }
        }
    }

    /// The pid of the running dockerd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("docker.sock")
    }

    /// The tether node config every tether runtime of this daemon reads: under Docker >= 23,
    /// the private containerd's (its shims inherit `TETHER_CONFIG` from it), else its own
    /// (dockerd's managed containerd inherits it from dockerd).
    pub fn tether_config(&self) -> PathBuf {
        match &self.containerd {
            Some(cd) => cd.tether_config(),
            None => self.path().join("tether.toml"),
        }
    }

    pub fn bpffs(&self) -> PathBuf {
        match &self.containerd {
            Some(cd) => cd.bpffs_dir(),
            None => self.path().join("bpffs"),
        }
    }

    pub fn pin_root(&self) -> PathBuf {
        match &self.containerd {
            Some(cd) => cd.pin_root(),
            None => self.bpffs().join("tether"),
        }
    }

    pub fn tetherd_socket(&self) -> PathBuf {
        match &self.containerd {
            Some(cd) => cd.tetherd_socket(),
            None => self.path().join("tetherd").join("tetherd.sock"),
        }
    }

    /// Runs `docker ARGS` against this daemon (with a deadline).
    pub fn docker(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.engine.docker);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        process::run(&mut cmd, None, DOCKER_TIMEOUT)
    }

    /// `docker ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.docker(args)?;
        if !out.success() {
            bail!("docker {args:?}: {out}");
        }
        Ok(out)
    }

    /// The pin directory of a Docker container (namespace `moby`).
    pub fn container_dir(&self, full_id: &str) -> PathBuf {
        self.pin_root()
            .join("containers")
            .join("moby")
            .join(full_id)
    }

    fn tetherd_pid(&self) -> Option<i32> {
        let lock = self.path().join("tetherd").join("tetherd.lock");
        let pid: i32 = fs::read_to_string(lock).ok()?.trim().parse().ok()?;
        procfs::is_alive(pid).ok()?.then_some(pid)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(self.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> Result<()> {
    process::run(Command::new("ip").args(args), None, Duration::from_secs(20))?
        .ok()
        .map(|_| ())
        .with_context(|| format!("ip {}", args.join(" ")))
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}\n--- end ---", self.log_tail(40));
        }
        if self.child.is_some() {
            if let Ok(out) = self.docker(&["ps", "-aq"]) {
                for id in out.stdout.split_whitespace() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
            // Networks a test made: their bridges outlive the daemon otherwise.
            let _ = self.docker(&["network", "prune", "-f"]);
        }
        self.stop_daemon();
        if self.containerd.is_none() {
            if let Some(pid) = self.tetherd_pid() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        // Everything dockerd mounted below its roots (overlays, `exec/netns/default`, the
        // netns of each sandbox) and the private bpffs, deepest first.
        let mut points: Vec<PathBuf> = procfs::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {}: {e}", p.display());
            }
        }
        if self.octet != 0 {
            let _ = ip(&["link", "del", &self.bridge()]);
        }
        // The private containerd (if any) cleans up after itself when dropped, after this.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockerd_version_lines() {
        let (v, major) =
            Engine::parse_version("Docker version 28.5.2+dfsg4, build 3ef3c07c883b\n").unwrap();
        assert_eq!((v.as_str(), major), ("28.5.2+dfsg4", 28));
        let (v, major) =
            Engine::parse_version("Docker version 20.10.24+dfsg1, build 297e128").unwrap();
        assert_eq!((v.as_str(), major), ("20.10.24+dfsg1", 20));
        assert!(Engine::parse_version("Docker").is_err());
    }
}
