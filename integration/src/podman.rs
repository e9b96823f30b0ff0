//! A private rootful Podman (Debian 12's 4.3, which runs the OCI runtime itself through
//! conmon) with `tether-runc` as its runtime `tether`, from the containers.conf drop-in tether
//! ships (`podman run --runtime tether`).
//!
//! Podman's state is its own: `--root`, `--runroot`, `--tmpdir` (file locks, not the
//! machine-wide shm segment), `containers.conf` and `storage.conf` through
//! `CONTAINERS_CONF`/`CONTAINERS_STORAGE_CONF`, the `cgroupfs` manager, a `file` events
//! backend, a CNI network of its own (a bridge and subnet only it uses, no masquerading, no
//! firewall or port-map plugin), and an image imported from a busybox rootfs.
//!
//! tether's config: Podman runs the runtime's `create` and `start` through conmon, whose
//! environment is its `conmon_env_vars`, and runs `kill` and `delete` itself with nothing but
//! `XDG_RUNTIME_DIR`, no PATH either (`tether-runc` finds runc on the default path all the
//! same): `TETHER_CONFIG` reaches no verb that must see it, and `tether-runc` reads the
//! default `/etc/tether/config.toml`, as every verb does on a node. So every `podman` command runs
//! in a mount namespace of the fixture's own (`nsenter` into a holder process), where `/etc`
//! is an overlay whose `tether/config.toml` is the fixture's config, and where the private
//! bpffs is mounted. conmon, the containers and the tetherd that `tether-runc` starts live in
//! that namespace too; the machine's `/etc` is never written. Paths inside it are read from
//! the outside through `/proc/<holder>/root`.
//!
//! tetherd runs as a service would (the shipped systemd unit), started by the fixture before
//! any container, in that namespace. Started on demand by `tether-runc` instead, it would be
//! reparented to the first container's conmon (a child subreaper), which waits for all its
//! children before exiting: that conmon would outlive its container for as long as tetherd
//! runs.
//!
//! `Drop` removes every container through Podman, stops tetherd and the holder (the
//! namespace and its mounts go with the last process in it), and deletes the bridge.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::containerd::tether_shim_binary;
use crate::process::{self, Output};
use crate::{procfs, rootfs, wait};

/// The image every scenario runs.
pub const IMAGE: &str = "localhost/tether-busybox:latest";
/// The namespace tether files Podman's containers under: runc's default root (`/run/runc`),
/// which Podman does not change, ends in `runc`.
pub const NAMESPACE: &str = "runc";
/// runc's state directory for Podman's containers.
pub const RUNC_STATE: &str = "/run/runc";
/// Deadline of one `podman` command.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// A private Podman; see the module docs.
pub struct Podman {
    dir: TempDir,
    /// The process holding the private mount namespace.
    holder: Option<Child>,
    /// tetherd, serving the fixture's socket from inside the namespace.
    tetherd: Option<Child>,
    /// The third octet of the CNI network's subnet (10.218.N.0/24).
    octet: u8,
    /// Whether the fixture made the network's bridge (and so deletes it).
    bridge_made: bool,
}

/// A third octet no other fixture of this process uses, spread over processes by pid.
/// The `[engine]` section of the fixture's containers.conf: the drop-in tether ships
/// (`packaging/podman/tether.conf`: the `tether` runtime, JSON errors) with the built
/// `tether-runc` in place of the installed one, and `engine` (the fixture's own keys).
fn shipped_runtime(engine: &str) -> Result<String> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/podman/tether.conf");
    let text = fs::read_to_string(&shipped).with_context(|| shipped.display().to_string())?;
    let built = Podman::tether_runc()?;
    ensure!(
        text.contains("\n[engine]\n") && text.contains("/usr/local/bin/tether-runc"),
        "{} has no [engine] section or no tether-runc",
        shipped.display()
    );
    Ok(text
        .replace("/usr/local/bin/tether-runc", &built.display().to_string())
        .replacen("\n[engine]\n", &format!("\n[engine]\n{engine}"), 1))
}

fn next_octet() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id() % 24) * 10 + n % 10 + 1
}

/// The absolute path of `name` on PATH.
fn on_path(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("{name} not found on PATH"))
}

impl Podman {
    /// Sets up the private Podman and imports [`IMAGE`].
    pub fn start() -> Result<Self> {
        crate::harness::require_root()?;
        for tool in ["podman", "conmon", "unshare", "nsenter"] {
            on_path(tool).with_context(|| format!("{tool} missing: install podman"))?;
        }
        let dir = tempfile::Builder::new()
            .prefix("tether-podman-")
            .tempdir()?;
        let mut p = Podman {
            dir,
            holder: None,
            tetherd: None,
            octet: u8::try_from(next_octet()).context("subnet octet")?,
            bridge_made: false,
        };
        p.write_configs()?;
        p.make_bridge()?;
        p.spawn_holder()?;
        p.spawn_tetherd()?;
        let rootfs = rootfs::build_busybox(&p.path().join("rootfs"))?;
        let tar = p.path().join("rootfs.tar");
        process::run(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
            None,
            Duration::from_secs(60),
        )?
        .ok()?;
        p.ok(&["import", &tar.to_string_lossy(), IMAGE])?;
        Ok(p)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `tether-runc`, built beside the shim.
    pub fn tether_runc() -> Result<PathBuf> {
        let p = tether_shim_binary()?
            .parent()
            .map(|p| p.join("tether-runc"))
            .context("no directory for tether-runc")?;
        if !p.is_file() {
            bail!("{} is not built", p.display());
        }
        Ok(p)
    }

    /// The fixture's CNI network (also Podman's default network here).
    pub fn network(&self) -> String {
        format!("tpm{}", self.octet)
    }

    /// The network's gateway, the bridge's own address, for traffic tests.
    pub fn gateway(&self) -> String {
        format!("10.218.{}.1", self.octet)
    }

    pub fn tetherd_socket(&self) -> PathBuf {
        self.path().join("tetherd").join("tetherd.sock")
    }

    /// The pin directory of a container, as seen from outside the private mount namespace.
    pub fn container_dir(&self, id: &str) -> Result<PathBuf> {
        let pin_root = self.path().join("bpffs").join("tether");
        Ok(self
            .in_namespace(&pin_root)?
            .join("containers")
            .join(NAMESPACE)
            .join(id))
    }

    /// `path` of the private mount namespace, reached through the holder's `/proc/PID/root`.
    fn in_namespace(&self, path: &Path) -> Result<PathBuf> {
        let pid = self.holder_pid()?;
        let rel = path.strip_prefix("/").unwrap_or(path);
        Ok(PathBuf::from(format!("/proc/{pid}/root")).join(rel))
    }

    fn holder_pid(&self) -> Result<u32> {
        self.holder
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| anyhow!("no mount namespace holder"))
    }

    fn write_configs(&self) -> Result<()> {
        let d = self.path();
        let runc = on_path("runc").context("runc missing")?;
        let etc_tether = d.join("etc-upper/tether");
        for sub in [
            "etc-upper/tether",
            "etc-work",
            "bpffs",
            "tetherd",
            "cni",
            "tmp",
        ] {
            fs::create_dir_all(d.join(sub))?;
        }
        // No runc path: Podman runs `kill` and `delete` with no PATH, and `tether-runc`
        // finds runc all the same.
        ensure!(
            runc.starts_with("/usr/sbin") || runc.starts_with("/usr/bin"),
            "runc at {} is off the default path",
            runc.display()
        );
        let toml = format!(
            "[broker]\nsocket = \"{sock}\"\n\
             pin_root = \"{pins}\"\naudit_log = \"{audit}\"\n",
            sock = self.tetherd_socket().display(),
            pins = d.join("bpffs/tether").display(),
            audit = d.join("tetherd/audit.jsonl").display(),
        );
        fs::write(etc_tether.join("config.toml"), toml)?;
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d.join("root").display(),
            d.join("runroot").display()
        );
        fs::write(d.join("storage.conf"), storage)?;
        // Root here lacks CAP_SYS_RESOURCE: Podman's default ulimits (as high as the hard
        // limits) would make runc's setrlimit fail, under any runtime.
        let containers = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[network]
network_backend = "cni"
network_config_dir = "{cni}"
cni_plugin_dirs = ["/usr/lib/cni"]
default_network = "{net}"

{engine}"#,
            cni = d.join("cni").display(),
            net = self.network(),
            engine = shipped_runtime(&format!(
                r#"cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
lock_type = "file"
tmp_dir = "{d}/tmp"
static_dir = "{d}/root/libpod"
volume_path = "{d}/root/volumes"
"#,
                d = d.display()
            ))?,
        );
        fs::write(d.join("containers.conf"), containers)?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.network(),
            "plugins": [{
                "type": "bridge",
                "bridge": self.network(),
                // The fixture gave the bridge its address: as a gateway, the plugin would
                // also turn on the host's IP forwarding.
                "isGateway": false,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": d.join("cni-ipam"),
                    "ranges": [[{
                        "subnet": format!("10.218.{}.0/24", self.octet),
                        "gateway": self.gateway(),
                    }]],
                },
            }],
        });
        fs::write(
            d.join("cni").join(format!("{}.conflist", self.network())),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        Ok(())
    }

    /// Creates the network's bridge with the gateway's address (the CNI plugin then uses it).
    fn make_bridge(&mut self) -> Result<()> {
        let name = self.network();
        if Path::new("/sys/class/net").join(&name).exists() {
            bail!("bridge {name} exists already");
        }
        let cidr = format!("{}/24", self.gateway());
        let ip = |args: &[&str]| -> Result<()> {
            process::run(Command::new("ip").args(args), None, Duration::from_secs(20))?
                .ok()
                .map(|_| ())
                .with_context(|| format!("ip {}", args.join(" ")))
        };
        ip(&["link", "add", "name", &name, "type", "bridge"])?;
        self.bridge_made = true;
        ip(&["addr", "add", &cidr, "dev", &name])?;
        ip(&["link", "set", &name, "up"])
    }

    /// Starts the process that holds the private mount namespace, once its `/etc` overlay
    /// and bpffs are mounted.
    fn spawn_holder(&mut self) -> Result<()> {
        let d = self.path().to_path_buf();
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work /etc \
             && mount -t bpf bpf {d}/bpffs && touch {d}/ready && exec sleep infinity",
            d = d.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.join("holder.log"))?)
            .spawn()
            .context("spawning the mount namespace holder")?;
        self.holder = Some(child);
        wait::wait_until(
            "the private mount namespace",
            Duration::from_secs(10),
            || {
                if let Some(status) = self.holder.as_mut().and_then(|c| c.try_wait().ok()?) {
                    let log = fs::read_to_string(d.join("holder.log")).unwrap_or_default();
                    bail!("the namespace holder exited with {status}: {log}");
                }
                Ok(d.join("ready").exists().then_some(()))
            },
        )
    }

    /// Starts tetherd (beside the shim) in the namespace and waits for its socket.
    fn spawn_tetherd(&mut self) -> Result<()> {
        let tetherd = tether_shim_binary()?
            .parent()
            .map(|p| p.join("tetherd"))
            .context("no directory for tetherd")?;
        let log = fs::File::create(self.path().join("tetherd/tetherd.log"))?;
        let child = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder_pid()?.to_string())
            .args(["-m", "--"])
            .arg(&tetherd)
            .arg("--socket")
            .arg(self.tetherd_socket())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", tetherd.display()))?;
        self.tetherd = Some(child);
        wait::wait_until("tetherd's socket", Duration::from_secs(30), || {
            if let Some(status) = self.tetherd.as_mut().and_then(|c| c.try_wait().ok()?) {
                let log = fs::read_to_string(self.path().join("tetherd/tetherd.log"));
                bail!("tetherd exited with {status}: {}", log.unwrap_or_default());
            }
            Ok(self.tetherd_socket().exists().then_some(()))
        })
    }

    /// Runs `podman ARGS` in the private mount namespace, with the fixture's configuration.
    pub fn podman(&self, args: &[&str]) -> Result<Output> {
        let d = self.path();
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.holder_pid()?.to_string())
            .args(["-m", "--", "podman"])
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"));
        process::run(&mut cmd, None, PODMAN_TIMEOUT)
    }

    /// `podman ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.podman(args)?;
        if !out.success() {
            bail!("podman {args:?}: {out}");
        }
        Ok(out)
    }

    fn tetherd_pid(&self) -> Option<i32> {
        let lock = self.path().join("tetherd").join("tetherd.lock");
        let pid: i32 = fs::read_to_string(lock).ok()?.trim().parse().ok()?;
        procfs::is_alive(pid).ok()?.then_some(pid)
    }

    /// Live processes (`pid cmdline`) whose command line contains `needle`: a container id
    /// (its conmon, tether-runc's link watcher) or the fixture's directory.
    pub fn processes_naming(&self, needle: &str) -> Result<Vec<String>> {
        let me = std::process::id() as i32;
        Ok(procfs::processes()?
            .into_iter()
            .filter(|p| p.pid != me && !p.is_zombie())
            .map(|p| format!("{} {}", p.pid, p.cmdline_string()))
            .filter(|c| c.contains(needle))
            .collect())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.holder.is_some() {
            if let Err(e) = self.podman(&["rm", "--all", "--force", "--time", "0"]) {
                eprintln!("cleanup: podman rm: {e:#}");
            }
        }
        if let Some(mut tetherd) = self.tetherd.take() {
            let _ = kill(Pid::from_raw(tetherd.id() as i32), Signal::SIGTERM);
            if process::wait_with_deadline(&mut tetherd, Duration::from_secs(10)).is_err() {
                process::kill_and_reap(&mut tetherd);
            }
        }
        // One started on demand all the same (a test that stopped the fixture's).
        if let Some(pid) = self.tetherd_pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let _ = wait::wait_until("tetherd to exit", Duration::from_secs(10), || {
                Ok((!procfs::is_alive(pid)?).then_some(()))
            });
        }
        // conmon of a container Podman could not remove: it holds the namespace.
        let dir = self.path().to_string_lossy().into_owned();
        if let Ok(left) = self.processes_naming(&dir) {
            for p in left {
                eprintln!("cleanup: killing {p}");
                if let Some(pid) = p.split_whitespace().next().and_then(|s| s.parse().ok()) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        if let Some(mut holder) = self.holder.take() {
            process::kill_and_reap(&mut holder);
        }
        if self.bridge_made {
            let _ = process::run(
                Command::new("ip").args(["link", "del", &self.network()]),
                None,
                Duration::from_secs(20),
            );
        }
    }
}
