//! A private containerd daemon: the fixture every scenario and the benchmark run against.
//!
//! [`Containerd`] owns a temporary directory holding the daemon's config, root, state, socket
//! and a `bin/` directory that puts the freshly built tether shim first on the daemon's PATH.
//! It owns exactly the daemon process it started, and cleans up after it in `Drop`: tasks and
//! containers, leftover shims serving *its* address (and their children), runc state, shim
//! sockets, mounts under its directory, the namespaces' cgroups, the directory itself. It never
//! touches the machine's own containerd or anything another fixture owns.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::ctr::Ctr;
use crate::process::{self, wait_with_deadline};
use crate::procfs::{self, ProcInfo};
use crate::runtime::Runtime;
use crate::{cgroup, containerd_release, wait};

/// How long containerd may take to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd may take to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of each cleanup `ctr` call in `Drop`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long removing a fixture's containers through containerd may take in all.
const CLEANUP_BUDGET: Duration = Duration::from_secs(120);
/// Env var naming the tether shim binary to test (default: next to the test binary).
pub const SHIM_BIN_ENV: &str = "TETHER_SHIM_BIN";
/// Env var for containerd's `--log-level` (default `info`).
pub const LOG_LEVEL_ENV: &str = "TETHER_CONTAINERD_LOG_LEVEL";
/// The runc root both runc shims use by default (`-root` of `runc`, per namespace below it).
pub const RUNC_ROOT: &str = "/run/containerd/runc";
/// Where containerd (1.6 to 2.x alike) keeps task bundles, below its state dir.
const TASK_DIR: &str = "io.containerd.runtime.v2.task";

/// Writes the CRI plugin's part of a fixture's config, given the fixture.
pub type CriConfig<'a> = dyn Fn(&Containerd) -> Result<String> + 'a;

/// A private containerd; see the module docs.
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    /// Namespaces handed out through [`Containerd::ctr`], for cleanup.
    namespaces: Mutex<BTreeSet<String>>,
    /// Extra environment for containerd (and so for its shims).
    env: Vec<(String, String)>,
}

impl Containerd {
    /// Starts a private containerd and waits (with a deadline) until it serves requests.
    pub fn start() -> Result<Self> {
        Self::start_with_env(Vec::new())
    }

    /// [`Containerd::start`] with extra environment variables (inherited by the shims).
    pub fn start_with_env(env: Vec<(String, String)>) -> Result<Self> {
        Self::start_inner(env, None)
    }

    /// [`Containerd::start_with_env`] with the CRI plugin on: `cri` returns the CRI part of
    /// the config (in the release's format), given the fixture's paths.
    pub fn start_with_cri(env: Vec<(String, String)>, cri: &CriConfig<'_>) -> Result<Self> {
        Self::start_inner(env, Some(cri))
    }

    fn start_inner(env: Vec<(String, String)>, cri: Option<&CriConfig<'_>>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tether-ctd-")
            .tempdir()
            .context("creating containerd's temporary directory")?;
        let mut cd = Containerd {
            dir,
            child: None,
            namespaces: Mutex::new(BTreeSet::new()),
            env,
        };
        let cri = cri.map(|f| f(&cd)).transpose()?;
        cd.write_config(cri.as_deref())?;
        cd.write_tether_config()?;
        cd.link_shims()?;
        cd.spawn()?;
        Ok(cd)
    }

    /// tether's own state for this containerd: a private bpffs (pins), tetherd's socket
    /// directory, and the config file the shims read through `TETHER_CONFIG`.
    fn write_tether_config(&self) -> Result<()> {
        let d = self.dir.path();
        let bpffs = self.bpffs_dir();
        fs::create_dir_all(&bpffs).context("creating bpffs mount point")?;
        crate::bpffs::mount(&bpffs)?;
        let mut toml = format!(
            "[broker]\nsocket = \"{sock}\"\npin_root = \"{pins}\"\naudit_log = \"{audit}\"\n",
            sock = self.tetherd_socket().display(),
            pins = self.pin_root().display(),
            audit = d.join("tetherd").join("audit.jsonl").display(),
        );
        // Under emulation (the kernel matrix's TCG VMs) the node's first load takes longer
        // than the default attach deadline: the matrix sets a longer one. Last in the file,
        // so a test may cut it off and write an [attach] section of its own.
        if let Some(ms) = std::env::var("TETHER_TEST_ATTACH_DEADLINE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            toml.push_str(&format!("[attach]\ndeadline_ms = {ms}\n"));
        }
        fs::write(self.tether_config(), toml).context("writing tether config")
    }

    /// An extra environment variable this containerd was started with.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The tether config file the shims of this containerd read.
    pub fn tether_config(&self) -> PathBuf {
        self.dir.path().join("tether.toml")
    }

    /// The private bpffs mount.
    pub fn bpffs_dir(&self) -> PathBuf {
        self.dir.path().join("bpffs")
    }

    /// Where tetherd pins the programs for this containerd's shims.
    pub fn pin_root(&self) -> PathBuf {
        self.bpffs_dir().join("tether")
    }

    /// tetherd's socket (tetherd is started on demand by the first shim that needs it).
    pub fn tetherd_socket(&self) -> PathBuf {
        self.dir.path().join("tetherd").join("tetherd.sock")
    }

    /// The pid of the tetherd serving this containerd's shims, if one runs.
    pub fn tetherd_pid(&self) -> Option<i32> {
        let lock = self.dir.path().join("tetherd").join("tetherd.lock");
        let pid: i32 = fs::read_to_string(lock).ok()?.trim().parse().ok()?;
        procfs::is_alive(pid).ok()?.then_some(pid)
    }

    fn stop_tetherd(&self) {
        if let Some(pid) = self.tetherd_pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = wait::wait_until("tetherd to exit", STOP_TIMEOUT, || {
                Ok((!procfs::is_alive(pid)?).then_some(()))
            });
        }
        let _ = nix::mount::umount2(&self.bpffs_dir(), nix::mount::MntFlags::MNT_DETACH);
    }

    /// The gRPC socket (`ctr --address`).
    pub fn address(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn root_dir(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// containerd's stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// The directory prepended to containerd's PATH.
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A `ctr` bound to this daemon and `namespace`.
    pub fn ctr(&self, namespace: &str) -> Ctr {
        if let Ok(mut ns) = self.namespaces.lock() {
            ns.insert(namespace.to_owned());
        }
        Ctr::new(self.address(), namespace)
    }

    /// The bundle directory of task `id` in `namespace`.
    pub fn bundle_dir(&self, namespace: &str, id: &str) -> PathBuf {
        self.state_dir().join(TASK_DIR).join(namespace).join(id)
    }

    /// Live (non-zombie) shim processes serving this daemon: their `argv` names this daemon's
    /// address. containerd starts shims as `containerd-shim-X -namespace N -address A ...`.
    pub fn shim_processes(&self) -> Result<Vec<ProcInfo>> {
        let address = self.address();
        let address = address.to_string_lossy();
        Ok(procfs::processes()?
            .into_iter()
            .filter(|p| {
                !p.is_zombie()
                    && p.program()
                        .is_some_and(|n| n.starts_with("containerd-shim"))
                    && p.arg_after("-address") == Some(&address)
            })
            .collect())
    }

    /// Stops containerd (only the daemon: shims and containers keep running) and starts it
    /// again with the same config, root and state.
    pub fn restart(&mut self) -> Result<()> {
        self.stop_daemon()?;
        self.spawn()
    }

    /// The last `lines` lines of containerd's log, without the plugin-loading lines of its boot.
    pub fn log_tail(&self, lines: usize) -> String {
        let Ok(f) = File::open(self.log_path()) else {
            return String::new();
        };
        // Plugin loading at boot says nothing about a failure and would crowd out what does.
        let all: Vec<String> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.contains("loading plugin"))
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The config in the format of the release under test (see [`containerd_release`]),
    /// with the CRI plugin's part `cri` if it is on.
    fn write_config(&self, cri: Option<&str>) -> Result<()> {
        let mut toml = containerd_release::release()?.config_toml(
            &self.root_dir(),
            &self.state_dir(),
            &self.address(),
            cri.is_some(),
        );
        if let Some(cri) = cri {
            toml.push('\n');
            toml.push_str(cri);
        }
        fs::write(self.dir.path().join("config.toml"), toml)
            .context("writing containerd config.toml")
    }

    /// Links the tether shim (if built) into `bin/`, which goes first on containerd's PATH,
    /// and, for a containerd from `$TETHER_CONTAINERD_DIR`, that package's runc shim.
    fn link_shims(&self) -> Result<()> {
        let bin = self.bin_dir();
        fs::create_dir_all(&bin).with_context(|| format!("creating {}", bin.display()))?;
        if let Some(dir) = containerd_release::dir() {
            let name = Runtime::RuncV2.shim_binary();
            symlink(dir.join(name), bin.join(name))
                .with_context(|| format!("linking {name} from {}", dir.display()))?;
        }
        if let Ok(shim) = tether_shim_binary() {
            let link = bin.join(Runtime::Tether.shim_binary());
            symlink(&shim, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), shim.display()))?;
        }
        Ok(())
    }

    fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening containerd.log")?;
        let log2 = log.try_clone().context("cloning containerd.log handle")?;
        let path = match std::env::var_os("PATH") {
            Some(p) => {
                let mut v = self.bin_dir().into_os_string();
                v.push(":");
                v.push(p);
                v
            }
            None => self.bin_dir().into_os_string(),
        };
        let level = std::env::var(LOG_LEVEL_ENV).unwrap_or_else(|_| "info".to_owned());
        let mut cmd = Command::new(containerd_release::binary("containerd"));
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .arg("--root")
            .arg(self.root_dir())
            .arg("--state")
            .arg(self.state_dir())
            .arg("--address")
            .arg(self.address())
            .arg("--log-level")
            .arg(level)
            .env("PATH", path)
            .env("TETHER_CONFIG", self.tether_config())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = cmd.spawn().context("spawning containerd")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let probe = Ctr::new(self.address(), "default").with_timeout(Duration::from_secs(5));
        let result = wait::wait_until("containerd to serve its socket", START_TIMEOUT, || {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("polling containerd")? {
                    bail!("containerd exited early with {status}");
                }
            }
            if !self.address().exists() {
                return Ok(None);
            }
            Ok(probe.run(["version"])?.success().then_some(()))
        });
        result.with_context(|| format!("containerd log:\n{}", self.log_tail(30)))
    }

    /// SIGTERM the daemon, wait, SIGKILL if needed. Shims are left alone.
    fn stop_daemon(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("containerd pid")?);
        if child.try_wait().context("polling containerd")?.is_some() {
            return Ok(());
        }
        kill(pid, Signal::SIGTERM).context("SIGTERM containerd")?;
        if wait_with_deadline(&mut child, STOP_TIMEOUT).is_err() {
            eprintln!("containerd {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killed it");
        }
        Ok(())
    }

    /// Namespaces this fixture used: handed out by [`Containerd::ctr`], or holding a bundle
    /// in its state directory. Only these are cleaned outside the daemon (runc state,
    /// cgroups): runc's root and the cgroup tree are shared with every other containerd on
    /// the machine.
    fn own_namespaces(&self) -> BTreeSet<String> {
        let mut ns = self
            .namespaces
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default();
        ns.extend(list_dir(&self.state_dir().join(TASK_DIR)));
        ns.retain(|n| !n.is_empty());
        ns
    }

    /// All namespaces of the (live) daemon, for cleanup through the daemon itself.
    fn daemon_namespaces(&self) -> BTreeSet<String> {
        Ctr::new(self.address(), "default")
            .with_timeout(CLEANUP_TIMEOUT)
            .run(["namespaces", "ls", "--quiet"])
            .map(|out| {
                out.stdout
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Deletes every task and container through containerd, as a user would.
    fn remove_all_containers(&self, namespaces: &BTreeSet<String>) {
        // A wedged containerd would make every call wait its full timeout, one container at a
        // time; past the budget the rest is left to the kill below.
        let deadline = std::time::Instant::now() + CLEANUP_BUDGET;
        for ns in namespaces {
            let ctr = Ctr::new(self.address(), ns.as_str()).with_timeout(CLEANUP_TIMEOUT);
            let Ok(out) = ctr.run(["container", "ls", "--quiet"]) else {
                continue;
            };
            for id in out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if std::time::Instant::now() > deadline {
                    eprintln!("cleanup: containerd took over {CLEANUP_BUDGET:?}; killing the rest");
                    return;
                }
                if let Err(e) = ctr.force_remove(id) {
                    eprintln!("cleanup: {e:#}");
                }
            }
        }
    }

    /// SIGKILLs shims of this daemon that are still alive, and everything below them;
    /// returns the pids signalled. Processes of a frozen (paused) container only die once
    /// thawed, which `runc delete --force` does, so the caller waits after that.
    fn kill_leftover_shims(&self) -> Result<Vec<i32>> {
        let shims = self.shim_processes()?;
        if shims.is_empty() {
            return Ok(Vec::new());
        }
        let all = procfs::processes()?;
        let mut victims: Vec<i32> = Vec::new();
        for shim in &shims {
            eprintln!(
                "cleanup: killing leftover shim {} ({})",
                shim.pid,
                shim.cmdline_string()
            );
            descendants(&all, shim.pid, &mut victims);
            victims.push(shim.pid);
        }
        for pid in &victims {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        Ok(victims)
    }

    /// `runc delete --force` for runc state left by this daemon's containers (those with a
    /// bundle in its state directory, nothing else), and removes their shim sockets.
    fn remove_runtime_state(&self, namespaces: &BTreeSet<String>) {
        for ns in namespaces {
            let runc_root = Path::new(RUNC_ROOT).join(ns);
            let bundles = self.state_dir().join(TASK_DIR).join(ns);
            for id in list_dir(&bundles) {
                if runc_root.join(&id).exists() {
                    eprintln!("cleanup: runc delete --force {id}");
                    let mut cmd = Command::new("runc");
                    cmd.arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force", &id]);
                    if let Err(e) = process::run(&mut cmd, None, CLEANUP_TIMEOUT) {
                        eprintln!("cleanup: {e:#}");
                    }
                }
                if let Ok(addr) = fs::read_to_string(bundles.join(&id).join("address")) {
                    if let Some(sock) = addr.trim().strip_prefix("unix://") {
                        let _ = fs::remove_file(sock);
                    }
                }
            }
            // Only if empty: another daemon may use the same namespace name.
            let _ = fs::remove_dir(&runc_root);
        }
    }

    /// Detaches every mount below this fixture's directory, deepest first.
    fn unmount_all(&self) -> Result<()> {
        let mut points: Vec<PathBuf> = procfs::mounts()?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {}: {e}", p.display());
            }
        }
        Ok(())
    }

    /// Removes the (empty) per-namespace parent cgroups runc leaves behind (`/NS`).
    fn remove_namespace_cgroups(&self, namespaces: &BTreeSet<String>) {
        let Ok(hierarchies) = cgroup::hierarchies() else {
            return;
        };
        for h in hierarchies {
            for ns in namespaces {
                let _ = fs::remove_dir(h.mount_point.join(ns));
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log ({}) ---\n{}\n--- end of containerd log ---",
                self.log_path().display(),
                self.log_tail(60)
            );
        }
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let namespaces = self.own_namespaces();
        if alive {
            let mut all = self.daemon_namespaces();
            all.extend(namespaces.iter().cloned());
            self.remove_all_containers(&all);
        }
        if let Err(e) = self.stop_daemon() {
            eprintln!("cleanup: stopping containerd: {e:#}");
        }
        let victims = self.kill_leftover_shims().unwrap_or_else(|e| {
            eprintln!("cleanup: {e:#}");
            Vec::new()
        });
        self.remove_runtime_state(&namespaces);
        let dead = wait::wait_until("leftover shims and containers to die", STOP_TIMEOUT, || {
            for pid in &victims {
                if procfs::is_alive(*pid)? {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        });
        if let Err(e) = dead {
            eprintln!("cleanup: {e:#}");
        }
        if let Err(e) = self.unmount_all() {
            eprintln!("cleanup: {e:#}");
        }
        self.remove_namespace_cgroups(&namespaces);
        self.stop_tetherd();
        // TempDir's own Drop removes the directory.
    }
}

/// Names of the entries of `dir` (none if it cannot be read).
fn list_dir(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Appends the pids of all descendants of `pid` to `out` (children before parents' parents).
fn descendants(all: &[ProcInfo], pid: i32, out: &mut Vec<i32>) {
    for p in all.iter().filter(|p| p.ppid == pid) {
        descendants(all, p.pid, out);
        out.push(p.pid);
    }
}

/// The tether shim binary to test: `$TETHER_SHIM_BIN`, else `containerd-shim-tether-v1` in the
/// cargo target directory this binary was built into, else `<workspace>/target/debug`.
pub fn tether_shim_binary() -> Result<PathBuf> {
    let name = Runtime::Tether.shim_binary();
    if let Some(p) = std::env::var_os(SHIM_BIN_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(anyhow!("${SHIM_BIN_ENV}={} is not a file", p.display()))
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // Test binaries live in target/debug/deps, other binaries in target/debug.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/debug")
            .join(name),
    );
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "{name} not found (looked at {candidates:?}); build it with \
             `cargo build -p tether-shim` or set ${SHIM_BIN_ENV}"
            )
        })
}
