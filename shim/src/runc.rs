//! The one module that runs the `runc` binary.
//!
//! The shim's invocations are built by [`Runc::command`] (global flags: `--root`, `--log` in
//! JSON format, `--systemd-cgroup`, `--criu`), spawned through the [`Reaper`] so their
//! exit cannot be lost, and their failure turned into a [`RuncError`] whose message is
//! runc's own last error (read from the part of `log.json` this invocation wrote) and
//! whose kind is classified once ([`error`]), so nobody matches on message text later.
//! `tether-runc`'s are built by [`Passthrough::command`]: the caller's global flags, and
//! runc's output, exit code and log left to the caller, on the calling thread.

use std::{
    ffi::OsString,
    io::{Read, Seek, SeekFrom},
    os::fd::OwnedFd,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::Arc,
};

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::{
    error::{Error, Result},
    reaper::Reaper,
    runc::error::RuncError,
};

pub mod error;

/// Everything until EOF from one of a child's pipes (nothing for no pipe).
async fn read_pipe(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(Ok(mut r)) = fd.map(pipe::Receiver::from_owned_fd) {
        let _ = r.read_to_end(&mut v).await;
    }
    v
}

/// The stdio a runc invocation (and, for create/exec, the container process) gets.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

impl ProcessIo {
    /// The stdio of a runc command that hands it on to the container's process (create,
    /// exec, restore): a process without stderr (null IO) gets /dev/null, as with the runc
    /// shim. Otherwise it would inherit the pipe on which the shim reads runc's errors, and
    /// the read would wait for the container to exit. (runc's errors are in its log file.)
    fn for_process(mut self, console: bool) -> Result<Self> {
        if self.stderr.is_none() && !console {
            let null = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::io("open /dev/null", e))?;
            self.stderr = Some(OwnedFd::from(null));
        }
        Ok(self)
    }
}

/// How to reach runc: which binary, which state root, which cgroup driver.
#[derive(Debug, Clone)]
pub struct RuncConfig {
    pub binary: PathBuf,
    pub root: PathBuf,
    pub systemd_cgroup: bool,
    pub criu: Option<PathBuf>,
}

/// Handle to runc for one bundle (its log file lives there).
#[derive(Clone)]
pub struct Runc {
    config: RuncConfig,
    log: PathBuf,
    reaper: Arc<Reaper>,
}

#[derive(Debug)]
pub struct CreateArgs<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
}

#[derive(Debug)]
pub struct CheckpointArgs<'a> {
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub empty_namespaces: &'a [String],
    pub cgroups_mode: &'a str,
}

#[derive(Debug)]
pub struct RestoreArgs<'a> {
    pub bundle: &'a Path,
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot: bool,
}

#[derive(Deserialize)]
struct LogLine {
    level: String,
    msg: String,
}

impl Runc {
    pub fn new(config: RuncConfig, bundle: &Path, reaper: Arc<Reaper>) -> Self {
        Self {
            config,
            log: bundle.join("log.json"),
            reaper,
        }
    }

    pub fn config(&self) -> &RuncConfig {
        &self.config
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.config.binary);
        // As containerd's runc shim: a runc that outlives a killed shim would finish a
        // create nobody will delete (the `delete` containerd runs for a dead shim finds
        // no container yet), leaving its state and cgroups behind.
        // The shim's runtime runs on one thread, the one that forks: the signal comes when
        // the shim dies, not when some other thread of it exits.
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2)
        // and getppid(2), which are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The shim died before the prctl: no signal will come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd.arg("--root")
            .arg(&self.config.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json");
        if self.config.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        if let Some(criu) = &self.config.criu {
            cmd.arg("--criu").arg(criu);
        }
        cmd
    }

    /// Runs runc with `args`. The child's stdio is `io` (null where unset); with
    /// `capture`, stdout is captured instead and returned. `input` is written to its stdin.
    async fn run(
        &self,
        name: &'static str,
        args: Vec<OsString>,
        io: ProcessIo,
        capture: bool,
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut cmd = self.command();
        cmd.args(args);
        cmd.stdin(match (input.is_some(), io.stdin) {
            (true, _) => Stdio::piped(),
            (false, Some(fd)) => Stdio::from(fd),
            (false, None) => Stdio::null(),
        });
        cmd.stdout(match (capture, io.stdout) {
            (true, _) => Stdio::piped(),
            (false, Some(fd)) => Stdio::from(fd),
            (false, None) => Stdio::null(),
        });
        let capture_stderr = io.stderr.is_none();
        cmd.stderr(match io.stderr {
            Some(fd) => Stdio::from(fd),
            None => Stdio::piped(),
        });
        let log_offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);

        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| Error::io(format!("run {}", self.config.binary.display()), e))?;
        // `cmd` still holds the parent's copies of the stdio fds given to the child;
        // drop them so pipes see EOF when the child side closes.
        drop(cmd);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().filter(|_| capture_stderr);
        // runc's pipes are read on this thread's event loop: no thread to hand them to (and
        // no wait for it to be scheduled), stdout and stderr drained together so that
        // neither can fill and stall runc.
        let write = async {
            if let (Some(w), Some(data)) = (stdin, input) {
                if let Ok(mut w) = pipe::Sender::from_owned_fd(OwnedFd::from(w)) {
                    let _ = w.write_all(&data).await;
                }
            }
        };
        let (_, out, err) = tokio::join!(
            write,
            read_pipe(stdout.map(OwnedFd::from)),
            read_pipe(stderr.map(OwnedFd::from))
        );
        let exit = exit
            .await
            .map_err(|_| Error::FailedPrecondition(format!("runc {name}: exit status lost")))?;
        if exit.status == 0 {
            return Ok(out);
        }
        let message = self
            .last_error_since(log_offset)
            .or_else(|| {
                let s = String::from_utf8_lossy(&err).trim().to_string();
                (!s.is_empty()).then_some(s)
            })
            .unwrap_or_else(|| format!("runc {name} exited with status {}", exit.status));
        Err(RuncError::classify(name, message).into())
    }

    /// The last error runc logged after `offset` in this bundle's log.
    fn last_error_since(&self, offset: u64) -> Option<String> {
        let mut f = std::fs::File::open(&self.log).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        last_error(&text)
    }

    pub async fn create(&self, id: &str, a: &CreateArgs<'_>, io: ProcessIo) -> Result<()> {
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into(), a.bundle.into()];
        args.extend(["--pid-file".into(), a.pid_file.into()]);
        if let Some(s) = a.console_socket {
            args.extend(["--console-socket".into(), s.into()]);
        }
        if a.no_pivot {
            args.push("--no-pivot".into());
        }
        if a.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(id.into());
        let io = io.for_process(a.console_socket.is_some())?;
        self.run("create", args, io, false, None).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        self.simple("start", &["start", id]).await
    }

    /// `runc exec --detach` of the process described by the JSON file `process`.
    pub async fn exec(
        &self,
        id: &str,
        process: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: ProcessIo,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec![
            "exec".into(),
            "--detach".into(),
            "--process".into(),
            process.into(),
            "--pid-file".into(),
            pid_file.into(),
        ];
        if let Some(s) = console_socket {
            args.extend(["--console-socket".into(), s.into()]);
        }
        args.push(id.into());
        let io = io.for_process(console_socket.is_some())?;
        self.run("exec", args, io, false, None).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        self.simple("kill", &args).await
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.simple("delete", &args).await
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.simple("pause", &["pause", id]).await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.simple("resume", &["resume", id]).await
    }

    /// Pids of every process in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let args = ["ps", "--format", "json", id].map(OsString::from).to_vec();
        let out = self
            .run("ps", args, ProcessIo::default(), true, None)
            .await?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|source| Error::Json {
                context: "parse runc ps output".into(),
                source,
            })
    }

    /// `runc update` with the JSON of an OCI `LinuxResources`.
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<()> {
        let args = ["update", "--resources", "-", id]
            .map(OsString::from)
            .to_vec();
        self.run(
            "update",
            args,
            ProcessIo::default(),
            false,
            Some(resources_json),
        )
        .await
        .map(drop)
    }

    pub async fn checkpoint(&self, id: &str, a: &CheckpointArgs<'_>) -> Result<()> {
        let mut args: Vec<OsString> = vec![
            "checkpoint".into(),
            "--image-path".into(),
            a.image_path.into(),
            "--work-path".into(),
            a.work_path.into(),
        ];
        for (on, flag) in [
            (a.leave_running, "--leave-running"),
            (a.tcp_established, "--tcp-established"),
            (a.ext_unix_sk, "--ext-unix-sk"),
            (a.shell_job, "--shell-job"),
            (a.file_locks, "--file-locks"),
        ] {
            if on {
                args.push(flag.into());
            }
        }
        for ns in a.empty_namespaces {
            args.extend(["--empty-ns".into(), ns.into()]);
        }
        if !a.cgroups_mode.is_empty() {
            args.extend(["--manage-cgroups-mode".into(), a.cgroups_mode.into()]);
        }
        args.push(id.into());
        self.run("checkpoint", args, ProcessIo::default(), false, None)
            .await
            .map(drop)
    }

    pub async fn restore(&self, id: &str, a: &RestoreArgs<'_>, io: ProcessIo) -> Result<()> {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "--detach".into(),
            "--bundle".into(),
            a.bundle.into(),
            "--image-path".into(),
            a.image_path.into(),
            "--work-path".into(),
            a.work_path.into(),
            "--pid-file".into(),
            a.pid_file.into(),
        ];
        if let Some(s) = a.console_socket {
            args.extend(["--console-socket".into(), s.into()]);
        }
        if a.no_pivot {
            args.push("--no-pivot".into());
        }
        args.push(id.into());
        let io = io.for_process(a.console_socket.is_some())?;
        self.run("restore", args, io, false, None).await.map(drop)
    }

    async fn simple(&self, name: &'static str, args: &[&str]) -> Result<()> {
        let args = args.iter().map(OsString::from).collect();
        self.run(name, args, ProcessIo::default(), false, None)
            .await
            .map(drop)
    }
}

/// runc as `tether-runc` runs it: the caller's global flags passed through unchanged, the
/// caller's stdio inherited, blocking. (`tether-runc` is runc to its caller.)
pub struct Passthrough {
    binary: PathBuf,
    global: Vec<OsString>,
}

/// What `runc state` says of a container that `tether-runc` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// The container's init process.
    pub pid: u32,
    pub bundle: PathBuf,
    /// Whether it is created and not started: its init process has run nothing.
    pub created: bool,
}

impl Passthrough {
    /// `binary` with the caller's global flags (`--root`, `--log`...).
    pub fn new(binary: PathBuf, global: Vec<OsString>) -> Self {
        Self { binary, global }
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn command(&self, command: Option<&str>, args: &[OsString]) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(&self.global);
        if let Some(command) = command {
            c.arg(command);
        }
        c.args(args);
        c
    }

    /// Runs `runc <global flags> <command> <args>` and waits for it.
    pub fn status(&self, command: &str, args: &[OsString]) -> std::io::Result<ExitStatus> {
        self.command(Some(command), args).status()
    }

    /// Replaces this process with `runc <global flags> [command] <args>`. Returns only if
    /// that failed, with the reason.
    pub fn exec(&self, command: Option<&str>, args: &[OsString]) -> std::io::Error {
        use std::os::unix::process::CommandExt;
        self.command(command, args).exec()
    }

    /// The init pid and bundle of container `id`, from `runc state`.
    pub fn state(&self, id: &str) -> Result<State> {
        let out = self
            .command(Some("state"), &[OsString::from(id)])
            .output()
            .map_err(|e| Error::io(format!("runc state {id}"), e))?;
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(RuncError::classify("state", message).into());
        }
        parse_state(id, &out.stdout)
    }
}

/// The pid and bundle in `runc state`'s JSON.
fn parse_state(id: &str, json: &[u8]) -> Result<State> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|source| Error::Json {
        context: format!("runc state {id}"),
        source,
    })?;
    let pid = v["pid"].as_u64().map(|p| p as u32).ok_or_else(|| {
        RuncError::new(
            "state",
            error::RuncErrorKind::Failed,
            format!("no pid for {id}"),
        )
    })?;
    let bundle = v["bundle"].as_str().map(PathBuf::from).unwrap_or_default();
    let created = v["status"] == "created";
    Ok(State {
        pid,
        bundle,
        created,
    })
}

/// The message of the last `error`-level line of runc's JSON log.
fn last_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .find(|l| l.level == "error" || l.level == "fatal")
        .map(|l| l.msg.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gives_pid_and_bundle() {
        let s = parse_state(
            "c1",
            br#"{"id":"c1","pid":42,"status":"created","bundle":"/b"}"#,
        );
        assert_eq!(
            s.unwrap(),
            State {
                pid: 42,
                bundle: "/b".into(),
                created: true,
            }
        );
        assert!(parse_state("c1", br#"{"id":"c1","status":"stopped"}"#).is_err());
        assert!(parse_state("c1", b"not json").is_err());
    }

    #[test]
    fn last_error_is_taken_from_json_log() {
        let log = r#"{"level":"info","msg":"starting","time":"t"}
{"level":"error","msg":"first","time":"t"}
not json
{"level":"error","msg":"runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory\n","time":"t"}
{"level":"warning","msg":"later","time":"t"}"#;
        assert_eq!(
            last_error(log).as_deref(),
            Some("runc create failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory")
        );
        assert_eq!(last_error("{\"level\":\"info\",\"msg\":\"x\"}"), None);
    }
}
