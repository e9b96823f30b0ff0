//! `tether-runc`: a runc-compatible binary for callers that take an OCI runtime binary rather
//! than a shim (Docker 20.10's `runtimes`, containerd's runc shim `BinaryName`, Podman, CRI-O).
//!
//! Every runc command, flag, output and exit code passes through unchanged: most commands
//! `exec` the real runc. Three differ:
//! - `create`: after runc's `create` succeeds, the container's programs are attached (as the
//!   shim does between create and start) before `tether-runc` returns; a fail-closed attach
//!   failure force-deletes the container and exits 1 with the reason (also written to runc's
//!   `--log` in its format, where callers such as containerd's shim read runc's errors).
//! - `start`: interfaces that appeared since create are attached, then runc's `start` runs.
//! - `delete`: runc's `delete` runs, then the container's programs are detached.
//! - `run` is `create` + attach + `start` (+ wait, for a foreground run).
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::attach::ebpf::EbpfAttach;
use crate::attach::{AttachHook, CreatedContainer};
use crate::config::Config;
use crate::container::load_spec;

/// runc's global flags that take a value.
const GLOBAL_VALUE_FLAGS: &[&str] = &["--log", "--log-format", "--root", "--criu", "--rootless"];
/// Value flags of `create` and `run`.
const CREATE_VALUE_FLAGS: &[&str] = &[
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
];

/// A parsed runc command line: global flags, the command, its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuncArgs {
    pub global: Vec<OsString>,
    pub command: Option<String>,
    pub args: Vec<OsString>,
}

fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

fn takes_value(arg: &str, value_flags: &[&str]) -> bool {
    !arg.contains('=') && value_flags.contains(&flag_name(arg))
}

impl RuncArgs {
    pub fn parse(argv: &[OsString]) -> RuncArgs {
        let mut global = Vec::new();
        let mut i = 0;
        while i < argv.len() {
            let a = argv[i].to_string_lossy();
            if !a.starts_with('-') {
                break;
            }
            global.push(argv[i].clone());
            if takes_value(&a, GLOBAL_VALUE_FLAGS) && i + 1 < argv.len() {
                global.push(argv[i + 1].clone());
                i += 1;
            }
            i += 1;
        }
        let command = argv.get(i).map(|c| c.to_string_lossy().into_owned());
        let args = argv
            .get(i + 1..)
            .map(<[OsString]>::to_vec)
            .unwrap_or_default();
        RuncArgs {
            global,
            command,
            args,
        }
    }

    /// The value of a global flag (`--root X` or `--root=X`).
    pub fn global_value(&self, name: &str) -> Option<OsString> {
        value_of(&self.global, name)
    }

    /// The value of a command flag, before the first positional argument.
    pub fn arg_value(&self, names: &[&str]) -> Option<OsString> {
        names.iter().find_map(|n| value_of(self.command_flags(), n))
    }

    fn command_flags(&self) -> &[OsString] {
        let end = self.positional_start();
        &self.args[..end]
    }

    fn positional_start(&self) -> usize {
        let mut i = 0;
        while i < self.args.len() {
            let a = self.args[i].to_string_lossy();
            if !a.starts_with('-') {
                return i;
            }
            if takes_value(&a, CREATE_VALUE_FLAGS) {
                i += 1;
            }
            i += 1;
        }
        self.args.len()
    }

    /// The container id: the first positional argument of the command.
    pub fn container_id(&self) -> Option<String> {
        self.args
            .get(self.positional_start())
            .map(|s| s.to_string_lossy().into_owned())
    }

    pub fn has_flag(&self, names: &[&str]) -> bool {
        self.command_flags().iter().any(|a| {
            let a = a.to_string_lossy();
            names.contains(&flag_name(&a))
        })
    }

    /// The namespace tether files the container under: the last component of runc's
    /// `--root` (`/run/containerd/runc/<namespace>`, `/run/docker/runtime-runc/moby`).
    pub fn namespace(&self) -> String {
        self.global_value("--root")
            .and_then(|r| {
                Path::new(&r)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .filter(|n| tether_bpf::pins::check_name("namespace", n).is_ok())
            .unwrap_or_else(|| "runc".to_string())
    }
}

fn value_of(list: &[OsString], name: &str) -> Option<OsString> {
    let mut it = list.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if let Some(v) = s.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(OsString::from(v));
        }
        if s == name {
            return it.next().cloned();
        }
    }
    None
}

/// The real runc: `$TETHER_RUNC`, else `[runc] binary` of the config, else `runc` on PATH
/// (never this binary itself, should it be installed as `runc`).
fn real_runc(config: &Config) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("TETHER_RUNC") {
        return Ok(PathBuf::from(p));
    }
    let name = config.runc.binary.clone().unwrap_or_else(|| "runc".into());
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let me = std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(&name);
        if cand.is_file() && cand.canonicalize().ok() != me {
            return Ok(cand);
        }
    }
    Err(format!("tether-runc: no {name} on PATH (set TETHER_RUNC)"))
}

fn runc_cmd(runc: &Path, args: &RuncArgs, command: &str, rest: &[OsString]) -> Command {
    let mut c = Command::new(runc);
    c.args(&args.global).arg(command).args(rest);
    c
}

fn status_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// Writes an error the way runc does: to stderr, and to `--log` in runc's format.
fn report(args: &RuncArgs, msg: &str) {
    eprintln!("{msg}");
    let Some(log) = args.global_value("--log") else {
        return;
    };
    let json = args
        .global_value("--log-format")
        .is_some_and(|f| f == "json");
    let line = if json {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!(
            "{}\n",
            serde_json::json!({"level": "error", "msg": msg, "time": rfc3339(now)})
        )
    } else {
        format!("level=error msg={msg:?}\n")
    };
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// `secs` since the epoch as an RFC 3339 UTC time, as runc's JSON log writes it.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The pid of a created container, from `runc state`.
fn container_pid(runc: &Path, args: &RuncArgs, id: &str) -> Result<u32, String> {
    container_state(runc, args, id).map(|(pid, _)| pid)
}

/// The pid and bundle of a container, from `runc state`.
fn container_state(runc: &Path, args: &RuncArgs, id: &str) -> Result<(u32, PathBuf), String> {
    let out = runc_cmd(runc, args, "state", &[OsString::from(id)])
        .output()
        .map_err(|e| format!("runc state {id}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "runc state {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("runc state {id}: {e}"))?;
    let pid = v["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| format!("runc state {id}: no pid"))?;
    let bundle = v["bundle"].as_str().map(PathBuf::from).unwrap_or_default();
    Ok((pid, bundle))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tether-runc: tokio runtime: {e}"))
}

/// `create` (also the first half of `run`): runc's create, then the attach step. Returns
/// the exit code and the container's init pid (0 unless created).
fn create(runc: &Path, args: &RuncArgs, config: &Config, create_args: &[OsString]) -> (i32, u32) {
    let Some(id) = args.container_id() else {
        return (exec(runc, args), 0);
    };
    let bundle = args
        .arg_value(&["--bundle", "-b"])
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    // A bad plan fails before runc runs, as in the shim.
    let spec = match load_spec(&bundle) {
        Ok(s) => s,
        Err(e) => {
            report(args, &format!("tether-runc: {e}"));
            return (1, 0);
        }
    };
    let hook = EbpfAttach::new();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            report(args, &e);
            return (1, 0);
        }
    };
    if let Err(e) = rt.block_on(hook.prepare(&id, &spec, config, None)) {
        report(args, &format!("tether-runc: {e}"));
        return (1, 0);
    }
    let status = match runc_cmd(runc, args, "create", create_args).status() {
        Ok(s) => s,
        Err(e) => {
            report(args, &format!("tether-runc: run {}: {e}", runc.display()));
            return (1, 0);
        }
    };
    if !status.success() {
        return (status_code(status), 0);
    }
    let namespace = args.namespace();
    let mut init_pid = 0;
    let pid = match args
        .arg_value(&["--pid-file"])
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|p| p.trim().parse::<u32>().ok())
    {
        // runc wrote it at create: no second runc run needed.
        Some(pid) => Ok(pid),
        None => container_pid(runc, args, &id),
    };
    let result = pid.and_then(|pid| {
        init_pid = pid;
        rt.block_on(async {
            let created = CreatedContainer {
                namespace: &namespace,
                id: &id,
                bundle: &bundle,
                spec: &spec,
                config,
                config_path: None,
                pid,
            };
            hook.attach(&created).await.map_err(|e| e.to_string())
        })
    });
    match result {
        Ok(()) => {
            spawn_watcher(&namespace, &id, &bundle, init_pid);
            (0, init_pid)
        }
        Err(e) => {
            let _ = runc_cmd(runc, args, "delete", &["--force".into(), id.clone().into()]).status();
            report(args, &format!("tether-runc: {e}"));
            (1, 0)
        }
    }
}

/// Starts the container's link watcher: a small detached process that attaches to links
/// added to the container's namespace later (`docker network connect`) and exits with the
/// container. (The shim does this in-process; `tether-runc` returns right after create.)
fn spawn_watcher(namespace: &str, id: &str, bundle: &Path, pid: u32) {
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    let r = Command::new(me)
        .arg(WATCH_ARG)
        .arg(namespace)
        .arg(id)
        .arg(bundle)
        .arg(pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = r {
        log::warn!("{id}: link watcher not started: {e}");
    }
}

/// The link watcher: `--tether-watch NAMESPACE ID BUNDLE PID`. Waits for links added to the
/// container's network namespace and attaches to them; exits when the container's init
/// is gone or its programs were detached.
fn watch(argv: &[OsString]) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let [ns, id, bundle, pid] = argv else {
        return 2;
    };
    let Ok(pid) = pid.to_string_lossy().parse::<u32>() else {
        return 2;
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let (ns, id) = (
        ns.to_string_lossy().into_owned(),
        id.to_string_lossy().into_owned(),
    );
    let Ok(config) = Config::load(None) else {
        return 1;
    };
    let Ok(spec) = load_spec(Path::new(bundle)) else {
        return 1;
    };
    let Ok(plan) = crate::attach::plan::Plan::resolve(&config, &spec) else {
        return 1;
    };
    use crate::attach::plan::{Interfaces, Netns};
    if !plan.enabled || plan.netns == Netns::Host || plan.interfaces == Interfaces::None {
        return 0;
    }
    let layout = crate::attach::ebpf::layout(&config);
    let Ok(dir) = layout.container_dir(&ns, &id) else {
        return 1;
    };
    let Ok(programs) = tether_bpf::Programs::open(&layout, tether_bpf::VERSION) else {
        return 1;
    };
    let Some(cgid) = programs.maps().cgroup_of(&ns, &id).ok().flatten() else {
        return 0;
    };
    let netns_path = match &plan.netns {
        Netns::Path(p) => p.clone(),
        _ => proc_dir.join("ns/net"),
    };
    let Ok(netns) = std::fs::File::open(&netns_path) else {
        return 1;
    };
    let only = match &plan.interfaces {
        Interfaces::Named(n) => Some(n.clone()),
        _ => None,
    };
    let Ok(sock) = tether_bpf::container::link_events_socket(netns.as_fd()) else {
        return 1;
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // The container's init is gone, or its programs were detached (`delete`): done.
        if !dir.exists() || !proc_dir.exists() {
            return 0;
        }
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
        let mut new_link = false;
        while let Ok(n) = nix::sys::socket::recv(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            if n == 0 {
                return 0;
            }
            new_link |= has_new_link(&buf[..n]);
        }
        if !new_link || !dir.exists() {
            continue;
        }
        let _ = tether_bpf::container::attach_netns_only(
            &programs,
            &layout,
            &ns,
            &id,
            cgid,
            netns.as_fd(),
            only.as_deref(),
        );
    }
}

/// Whether a netlink datagram holds an RTM_NEWLINK (16) message.
pub(crate) fn has_new_link(buf: &[u8]) -> bool {
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if u16::from_ne_bytes([buf[off + 4], buf[off + 5]]) == 16 {
            return true;
        }
        if len < 16 {
            break;
        }
        off += (len + 3) & !3;
    }
    false
}

fn exec(runc: &Path, args: &RuncArgs) -> i32 {
    let mut c = Command::new(runc);
    c.args(&args.global);
    if let Some(cmd) = &args.command {
        c.arg(cmd);
    }
    c.args(&args.args);
    let err = c.exec();
    report(
        args,
        &format!("tether-runc: exec {}: {err}", runc.display()),
    );
    127
}

/// The first argument that makes `tether-runc` the link watcher of one container (never a
/// runc flag).
const WATCH_ARG: &str = "--tether-watch";

/// Runs `tether-runc` with `argv` (without the program name); returns the exit code.
pub fn main_with(argv: Vec<OsString>) -> i32 {
    if argv.first().is_some_and(|a| a == WATCH_ARG) {
        return watch(&argv[1..]);
    }
    let args = RuncArgs::parse(&argv);
    let config = match Config::load(None) {
        Ok(c) => c,
        Err(e) => {
            report(&args, &format!("tether-runc: {e}"));
            return 1;
        }
    };
    let runc = match real_runc(&config) {
        Ok(r) => r,
        Err(e) => {
            report(&args, &e);
            return 127;
        }
    };
    match args.command.as_deref() {
        Some("create") => create(&runc, &args, &config, &args.args).0,
        Some("start") => {
            if let Some(id) = args.container_id() {
                if let Err(e) = resync(&runc, &args, &config, &id) {
                    report(&args, &format!("tether-runc: {e}"));
                    return 1;
                }
            }
            exec(&runc, &args)
        }
        Some("delete") => {
            // Read before `runc delete` removes the cgroup, and its local counters with it.
            let earlier = args
                .container_id()
                .and_then(|id| EbpfAttach::read_before_delete(&args.namespace(), &id, &config));
            let status = match runc_cmd(&runc, &args, "delete", &args.args).status() {
                Ok(s) => s,
                Err(e) => {
                    report(&args, &format!("tether-runc: run {}: {e}", runc.display()));
                    return 1;
                }
            };
            // A delete runc refused (a running container without --force) keeps the
            // container, and its programs with it; a container runc no longer knows has
            // nothing left to keep them for.
            let gone = |id: &str| status.success() || container_state(&runc, &args, id).is_err();
            if let Some(id) = args.container_id().filter(|id| gone(id.as_str())) {
                let namespace = args.namespace();
                if let Ok(rt) = runtime() {
                    rt.block_on(EbpfAttach::new().detach_now(&namespace, &id, &config, earlier));
                }
            }
            status_code(status)
        }
        Some("run") => run(&runc, &args, &config),
        _ => exec(&runc, &args),
    }
}

/// Interfaces added between create and start (e.g. CNI run by the caller) get programs.
fn resync(runc: &Path, args: &RuncArgs, config: &Config, id: &str) -> Result<(), String> {
    let (pid, bundle) = container_state(runc, args, id)?;
    let spec = load_spec(&bundle).map_err(|e| e.to_string())?;
    let plan = crate::attach::plan::Plan::resolve(config, &spec).map_err(|e| e.to_string())?;
    let rt = runtime()?;
    rt.block_on(EbpfAttach::new().resync(&args.namespace(), id, pid, config, &plan))
        .map_err(|e| e.to_string())
}

/// `run`: create + attach + start; a foreground run then waits for the container's init (this
/// process is its subreaper) and exits with its status, deleting it unless `--keep`.
fn run(runc: &Path, args: &RuncArgs, config: &Config) -> i32 {
    let Some(id) = args.container_id() else {
        return exec(runc, args);
    };
    let detach = args.has_flag(&["--detach", "-d"]);
    let keep = args.has_flag(&["--keep"]);
    // run's own flags are not create's.
    let create_args: Vec<OsString> = args
        .args
        .iter()
        .filter(|a| {
            let a = a.to_string_lossy();
            !matches!(
                flag_name(&a),
                "--detach" | "-d" | "--keep" | "--no-subreaper"
            )
        })
        .cloned()
        .collect();
    if !detach {
        // Children of runc's create (the container's init) are reparented to us.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            report(args, &format!("tether-runc: PR_SET_CHILD_SUBREAPER: {e}"));
            return 1;
        }
    }
    let (code, pid) = create(runc, args, config, &create_args);
    if code != 0 {
        return code;
    }
    match runc_cmd(runc, args, "start", &[OsString::from(&id)]).status() {
        Ok(s) if s.success() => {}
        Ok(s) => return status_code(s),
        Err(e) => {
            report(args, &format!("tether-runc: start: {e}"));
            return 1;
        }
    }
    if detach {
        return 0;
    }
    let code = wait_for(pid);
    if !keep {
        let earlier = EbpfAttach::read_before_delete(&args.namespace(), &id, config);
        let _ = runc_cmd(
            runc,
            args,
            "delete",
            &["--force".into(), OsStr::new(&id).into()],
        )
        .status();
        if let Ok(rt) = runtime() {
            rt.block_on(EbpfAttach::new().detach_now(&args.namespace(), &id, config, earlier));
        }
    }
    code
}

/// Waits for `pid` (our child through the subreaper) and returns its exit code.
fn wait_for(pid: u32) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    loop {
        match waitpid(target, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_643_740), "2026-11-25T21:55:40Z");
    }

    #[test]
    fn parses_containerd_shim_command_lines() {
        let a = RuncArgs::parse(&argv(
            "--root /run/containerd/runc/k8s.io --log /b/log.json --log-format json --systemd-cgroup \
             create --bundle /b --pid-file /b/init.pid --console-socket /tmp/c.sock web-1",
        ));
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.container_id().as_deref(), Some("web-1"));
        assert_eq!(a.arg_value(&["--bundle", "-b"]), Some("/b".into()));
        assert_eq!(a.global_value("--log"), Some("/b/log.json".into()));
        assert_eq!(a.namespace(), "k8s.io");
        assert_eq!(a.global.len(), 7);

        let a = RuncArgs::parse(&argv(
            "--root=/run/docker/runtime-runc/moby delete --force abc",
        ));
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id().as_deref(), Some("abc"));
        assert!(a.has_flag(&["--force", "-f"]));
        assert_eq!(a.namespace(), "moby");

        let a = RuncArgs::parse(&argv("run -d -b /x --keep c1"));
        assert_eq!(a.container_id().as_deref(), Some("c1"));
        assert!(a.has_flag(&["--detach", "-d"]) && a.has_flag(&["--keep"]));
        assert_eq!(a.namespace(), "runc");

        let a = RuncArgs::parse(&argv("--version"));
        assert_eq!(a.command, None);
    }
}
