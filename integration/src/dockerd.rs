//! A private dockerd (Debian's 20.10) for the Docker scenarios: own data root, exec root,
//! socket and pid file under a temporary directory, its own managed containerd, a private
//! bpffs for tether's pins, `tether` registered as a runc-compatible runtime
//! (`tether-runc`), and a default bridge on a subnet only it uses. No host firewall rules
//! are touched (`--iptables=false`). Everything it started is stopped, and its mounts and
//! bridge removed, in `Drop`.
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::{procfs, rootfs, wait};

/// The Docker client that matches the daemon (Debian's), not another one on PATH.
pub const DOCKER: &str = "/usr/bin/docker";
/// The subnet of the private daemon's default bridge.
pub const BRIDGE_CIDR: &str = "10.216.0.1/24";
/// The bridge's own address, for traffic tests.
pub const BRIDGE_IP: &str = "10.216.0.1";
/// The image every scenario runs (imported from a busybox rootfs).
pub const IMAGE: &str = "tether-busybox:latest";

pub struct Dockerd {
    dir: TempDir,
    child: Option<Child>,
}

/// What a `docker` command printed.
#[derive(Debug)]
pub struct DockerOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for DockerOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}; stdout: {:?}; stderr: {:?}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Dockerd {
    /// Starts the daemon with `tether_toml` appended to tether's config (e.g. an `[attach]`
    /// section) and waits until it answers; imports [`IMAGE`].
    pub fn start(tether_toml: &str) -> Result<Self> {
        crate::harness::require_root()?;
        if !Path::new("/usr/sbin/dockerd").exists() {
            bail!("dockerd missing: install docker.io");
        }
        let dir = tempfile::Builder::new()
            .prefix("tether-dockerd-")
            .tempdir()?;
        let mut d = Dockerd { dir, child: None };
        let bpffs = d.bpffs();
        fs::create_dir_all(&bpffs)?;
        nix::mount::mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .context("mount -t bpf")?;
        let toml = format!(
            "[broker]\nsocket = \"{}\"\npin_root = \"{}\"\naudit_log = \"{}\"\n{tether_toml}\n",
            d.tetherd_socket().display(),
            d.pin_root().display(),
            d.path().join("tetherd/audit.jsonl").display(),
        );
        fs::write(d.path().join("tether.toml"), toml)?;
        let tether_runc = crate::containerd::tether_shim_binary()?
            .parent()
            .map(|p| p.join("tether-runc"))
            .context("no directory for tether-runc")?;
        if !tether_runc.is_file() {
            bail!("{} is not built", tether_runc.display());
        }
        let log = File::create(d.path().join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(d.path().join("root"))
            .arg("--exec-root")
            .arg(d.path().join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", d.socket().display()))
            .arg("--pidfile")
            .arg(d.path().join("docker.pid"))
            .arg("--bip")
            .arg(BRIDGE_CIDR)
            .arg("--iptables=false")
            .arg("--ip-masq=false")
            .arg("--add-runtime")
            .arg(format!("tether={}", tether_runc.display()))
            .env("TETHER_CONFIG", d.path().join("tether.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning dockerd")?;
        d.child = Some(child);
        wait::wait_until("dockerd to answer", Duration::from_secs(60), || {
            Ok(d.docker(&["version"])?.code.eq(&0).then_some(()))
        })?;
        let rootfs = rootfs::build_busybox(&d.path().join("rootfs"))?;
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", d.socket().display()))
            .args(["import", "-", IMAGE])
            .stdin(tar.stdout.context("tar stdout")?)
            .output()?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("docker.sock")
    }

    pub fn bpffs(&self) -> PathBuf {
        self.path().join("bpffs")
    }

    pub fn pin_root(&self) -> PathBuf {
        self.bpffs().join("tether")
    }

    pub fn tetherd_socket(&self) -> PathBuf {
        self.path().join("tetherd").join("tetherd.sock")
    }

    /// Runs `docker ARGS` against this daemon.
    pub fn docker(&self, args: &[&str]) -> Result<DockerOutput> {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .context("running docker")?;
        Ok(DockerOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `docker ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<DockerOutput> {
        let out = self.docker(args)?;
        if out.code != 0 {
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

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}\n--- end ---", self.log_tail(40));
        }
        if let Ok(out) = self.docker(&["ps", "-aq"]) {
            for id in out.stdout.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        // Networks a test made: their bridges outlive the daemon otherwise.
        let _ = self.docker(&["network", "prune", "-f"]);
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let stopped = wait::wait_until("dockerd to exit", Duration::from_secs(30), || {
                Ok(child.try_wait()?.map(|_| ()))
            });
            if stopped.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Some(pid) = self.tetherd_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for sub in ["exec", "root"] {
            let _ = Command::new("umount")
                .arg("-R")
                .arg(self.path().join(sub))
                .stderr(Stdio::null())
                .status();
        }
        let _ = nix::mount::umount2(&self.bpffs(), nix::mount::MntFlags::MNT_DETACH);
        // The default bridge the daemon made for its private subnet.
        let _ = Command::new("ip")
            .args(["link", "del", "docker0"])
            .stderr(Stdio::null())
            .status();
    }
}
