//! Fixtures for the end-to-end tests of the real tetherd (real kernel, real bpffs), beside
//! the shared kernel-test fixtures of `tether_bpf::testing` (re-exported here: private bpffs,
//! test cgroup, probe process, crafted packet): a `Node` (private bpffs mount, temporary
//! directory with socket, config and audit log, and the tetherd processes the test
//! started). Everything is undone in `Drop`: processes are killed by pid (never by name).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tether_api::types::{AcquireReply, StatusInfo};
use tether_api::Client;
pub use tether_bpf::testing::*;
use tether_bpf::{PinLayout, Programs};

pub const TETHERD: &str = env!("CARGO_BIN_EXE_tetherd");
pub const TETHERCTL: &str = env!("CARGO_BIN_EXE_tetherctl");
/// A `--tetherd` for tetherctl that cannot be spawned.
pub const NO_SPAWN: &str = "/nonexistent/tetherd";
/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `probe` until it returns `Some` or `deadline` has passed.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One node's worth of tetherd: its config, socket, audit log and private bpffs, and the
/// tetherd processes started for it.
pub struct Node {
    /// tetherds this test started itself (children), killed and reaped in `Drop`.
    daemons: Vec<Child>,
    pub bpffs: Bpffs,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub audit_log: PathBuf,
    started: u32,
}

impl Node {
    pub fn new() -> Result<Self> {
        Self::with_broker_keys("")
    }

    /// A node whose `[broker]` table also holds `extra` (TOML lines).
    pub fn with_broker_keys(extra: &str) -> Result<Self> {
        let bpffs = Bpffs::new()?;
        let dir = tempfile::Builder::new().prefix("tetherd-e2e-").tempdir()?;
        let socket = dir.path().join("run/tetherd.sock");
        let config = dir.path().join("config.toml");
        let audit_log = dir.path().join("log/audit.jsonl");
        fs::write(
            &config,
            format!(
                "[broker]\nsocket = {:?}\npin_root = {:?}\naudit_log = {:?}\n{extra}\n",
                socket.display().to_string(),
                bpffs.layout.root().display().to_string(),
                audit_log.display().to_string(),
            ),
        )?;
        Ok(Node {
            daemons: Vec::new(),
            bpffs,
            dir,
            socket,
            config,
            audit_log,
            started: 0,
        })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.bpffs.layout
    }

    /// Starts a tetherd and waits until it answers Status as itself. Returns its pid.
    pub fn start_tetherd(&mut self) -> Result<u32> {
        self.started += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("tetherd-{}.log", self.started));
        let log = fs::File::create(&log_path)?;
        let child = Command::new(TETHERD)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn tetherd")?;
        let pid = child.id();
        self.daemons.push(child);
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.try_wait_daemon(pid)? {
                bail!("tetherd exited at start ({status}): {}", self.logs());
            }
            match self.status() {
                Ok(s) if s.pid == pid => return Ok(pid),
                Ok(s) => bail!("a tetherd that is not ours answers: pid {}", s.pid),
                Err(e) if Instant::now() >= end => {
                    bail!("tetherd did not answer Status: {e:#}\n{}", self.logs())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn try_wait_daemon(&mut self, pid: u32) -> Result<Option<std::process::ExitStatus>> {
        match self.daemons.iter_mut().find(|c| c.id() == pid) {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("pid {pid} is not a tetherd of this test"),
        }
    }

    /// Whether the tetherd `pid` (started by this test) still runs.
    pub fn is_running(&mut self, pid: u32) -> Result<bool> {
        Ok(self.try_wait_daemon(pid)?.is_none())
    }

    /// `kill -9` of a tetherd this test started, and reaps it.
    pub fn kill9(&mut self, pid: u32) -> Result<()> {
        let i = self
            .daemons
            .iter()
            .position(|c| c.id() == pid)
            .context("not a tetherd of this test")?;
        let mut child = self.daemons.remove(i);
        let killed = child.kill();
        child.wait()?;
        Ok(killed?)
    }

    /// Status over the library client (one short-lived runtime per call).
    pub fn status(&self) -> Result<StatusInfo> {
        let socket = self.socket.clone();
        block_on(async move {
            let c = Client::connect(&socket, Duration::from_millis(200))
                .await?
                .with_timeout(DEADLINE);
            Ok(c.status().await?)
        })
    }

    /// Runs `tetherctl --socket <socket> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Result<Output> {
        Command::new(TETHERCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("run tetherctl")
    }

    /// Runs `tetherctl --socket <socket> --json ARGS`, which must succeed, and parses its
    /// output as one JSON document.
    pub fn ctl_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all)?;
        ensure!(
            out.status.success(),
            "tetherctl {args:?} failed ({}): {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "tetherctl {args:?}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `tetherctl acquire` against the running tetherd. The `--tetherd` it is given does
    /// not exist, so tetherctl can never start a daemon this test does not track.
    pub fn acquire(&self) -> Result<AcquireReply> {
        self.ctl_json(&["acquire", "--tetherd", NO_SPAWN])
    }

    /// `tetherctl --json stats`: one JSON object per line.
    pub fn stats_lines(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.ctl(&["--json", "stats"])?;
        ensure!(
            out.status.success(),
            "tetherctl stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)?
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| l.to_string()))
            .collect()
    }

    /// The pins of this build's version, opened in the test process.
    pub fn programs(&self) -> Result<Programs> {
        Ok(Programs::open(self.layout(), tether_bpf::VERSION)?)
    }

    /// Every tetherd log of this node (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<_> = fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.push(self.socket.with_file_name(tether_api::paths::LOG_FILE));
        names.sort();
        for p in names {
            if let Ok(text) = fs::read_to_string(&p) {
                out.push_str(&format!("--- {}\n{text}", p.display()));
            }
        }
        out
    }

    /// The pid in the instance lock file, if any.
    pub fn lock_pid(&self) -> Option<i32> {
        fs::read_to_string(self.socket.with_file_name(tether_api::paths::LOCK_FILE))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Kills the tetherd named in the lock file (one spawned on demand by tetherctl) if it
    /// still runs and serves this node's socket: its command line must name the socket, so
    /// a recycled pid is never hit.
    fn kill_lock_owner(&self) {
        let Some(pid) = self.lock_pid() else { return };
        let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
            let socket = self.socket.as_os_str().as_encoded_bytes();
            cmd.split(|b| *b == 0).any(|arg| arg == socket)
        });
        if !ours {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        // Not our child: init (or a subreaper) reaps it; wait until it is gone.
        let _ = wait_for("tetherd to exit", Duration::from_secs(10), || {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok();
            let gone = stat.is_none_or(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            });
            gone.then_some(())
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for mut c in self.daemons.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.kill_lock_owner();
        // Then the fields: bpffs is unmounted, the directory removed.
    }
}

/// Runs `f` on a current-thread tokio runtime of its own.
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Makes `path` world-readable and searchable (mode 0755).
pub fn chmod_755(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", path.display()))
}

/// Program ids the kernel holds now.
pub fn kernel_prog_ids() -> Result<Vec<u32>> {
    Ok(tether_bpf::sys::all_prog_ids()?)
}
