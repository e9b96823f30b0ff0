//! The `ctr` CLI, bound to one containerd address and one namespace.
//!
//! Every call has a deadline ([`Ctr::timeout`], or an explicit one); a `ctr` that hangs is
//! killed and the call fails. This module builds every `ctr` command line the tests use.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::process::{self, Output};
use crate::runtime::Runtime;

/// Default deadline of one `ctr` call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// `ctr --address ADDRESS --namespace NAMESPACE ...`.
#[derive(Debug, Clone)]
pub struct Ctr {
    address: PathBuf,
    namespace: String,
    timeout: Duration,
}

/// One row of `ctr task ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    pub pid: u32,
    /// `RUNNING`, `PAUSED`, `STOPPED`, `CREATED`, ...
    pub status: String,
}

impl Ctr {
    pub fn new(address: impl Into<PathBuf>, namespace: impl Into<String>) -> Self {
        Ctr {
            address: address.into(),
            namespace: namespace.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A copy with another default deadline.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Ctr {
            timeout,
            ..self.clone()
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn address(&self) -> &Path {
        &self.address
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The command line `ctr --address A --namespace N ARGS`, not yet run.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(crate::containerd_release::binary("ctr"));
        // ctr's own dial gives up after 10 s: under emulation (the kernel matrix's VMs) a
        // burst of fifty ctr runs keeps containerd from accepting that long. The call's
        // deadline still holds.
        cmd.arg("--connect-timeout")
            .arg("60s")
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        cmd
    }

    /// Runs `ctr ARGS` with the default deadline; a non-zero exit is returned, not an error.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with(args, None, self.timeout)
    }

    /// Runs `ctr ARGS` feeding `stdin`, with deadline `timeout`.
    pub fn run_with<I, S>(&self, args: I, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::run(&mut self.command(args), stdin, timeout)
    }

    /// Runs `ctr ARGS` and fails unless it exits 0.
    pub fn ok<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        let what = process::describe(&cmd);
        process::run(&mut cmd, None, self.timeout)?
            .ok()
            .with_context(|| what)
    }

    /// Starts `ctr ARGS` in the background with stdio to /dev/null except piped stdout.
    /// The caller owns the child (and must reap it).
    pub fn spawn<I, S>(&self, args: I) -> Result<Child>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        let what = process::describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {what}"))
    }

    /// `ctr run ...` as built by `run`.
    pub fn run_container(&self, run: &Run) -> Result<Output> {
        self.run_with(
            run.args(),
            run.stdin.as_deref(),
            run.timeout.unwrap_or(self.timeout),
        )
    }

    /// The rows of `ctr task ls`.
    pub fn tasks(&self) -> Result<Vec<TaskRow>> {
        parse_task_ls(&self.ok(["task", "ls"])?.stdout)
    }

    /// The row of task `id` in `ctr task ls`, if listed.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        Ok(self.tasks()?.into_iter().find(|t| t.id == id))
    }

    /// The pids listed by `ctr task ps ID`.
    pub fn task_pids(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.ok(["task", "ps", id])?;
        out.stdout
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("parsing `ctr task ps` line {l:?}"))
            })
            .collect()
    }

    /// Kills (SIGKILL) and deletes task and container `id`, ignoring "not found".
    pub fn force_remove(&self, id: &str) -> Result<()> {
        let out = self.run(["task", "delete", "--force", id])?;
        if !out.success() && !out.stderr.contains("not found") {
            return Err(anyhow!("ctr task delete --force {id}: {out}"));
        }
        let out = self.run(["container", "delete", id])?;
        if !out.success() && !out.stderr.contains("not found") {
            return Err(anyhow!("ctr container delete {id}: {out}"));
        }
        Ok(())
    }
}

/// Parses `ctr task ls` (`TASK PID STATUS` columns).
pub fn parse_task_ls(text: &str) -> Result<Vec<TaskRow>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [id, pid, status] => Ok(TaskRow {
                    id: (*id).to_owned(),
                    pid: pid.parse().with_context(|| format!("pid in {l:?}"))?,
                    status: (*status).to_owned(),
                }),
                _ => Err(anyhow!("unexpected `ctr task ls` line {l:?}")),
            }
        })
        .collect()
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `ctr run --rootfs DIR`: no image, no snapshot.
    Rootfs(PathBuf),
    /// `ctr run IMAGE`: an image imported into containerd.
    Image(String),
}

/// Builder of a `ctr run` command line.
#[derive(Debug, Clone)]
pub struct Run {
    runtime: Runtime,
    source: Source,
    id: String,
    flags: Vec<String>,
    command: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

impl Run {
    pub fn new(runtime: Runtime, source: Source, id: impl Into<String>) -> Self {
        Run {
            runtime,
            source,
            id: id.into(),
            flags: Vec::new(),
            command: Vec::new(),
            stdin: None,
            timeout: None,
        }
    }

    /// `--rm`: delete the container when it exits.
    pub fn rm(self) -> Self {
        self.flag("--rm")
    }

    /// `--detach`.
    pub fn detach(self) -> Self {
        self.flag("--detach")
    }

    /// `--tty`.
    pub fn tty(self) -> Self {
        self.flag("--tty")
    }

    /// Any other `ctr run` flag, e.g. `--memory-limit=16777216`.
    pub fn flag(mut self, flag: impl Into<String>) -> Self {
        self.flags.push(flag.into());
        self
    }

    /// The process to run (argv).
    pub fn command<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.command = argv.into_iter().map(Into::into).collect();
        self
    }

    /// `/bin/sh -c SCRIPT`.
    pub fn sh(self, script: &str) -> Self {
        self.command(["/bin/sh", "-c", script])
    }

    /// Data piped to ctr's stdin.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Deadline of the whole `ctr run` (default: the [`Ctr`]'s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The arguments after `ctr --address A --namespace N`.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "run".to_owned(),
            "--runtime".to_owned(),
            self.runtime.name().to_owned(),
        ];
        a.extend(self.flags.iter().cloned());
        match &self.source {
            Source::Rootfs(dir) => {
                a.push("--rootfs".to_owned());
                a.push(dir.display().to_string());
            }
            Source::Image(image) => a.push(image.clone()),
        }
        a.push(self.id.clone());
        a.extend(self.command.iter().cloned());
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_ls() {
        let rows = parse_task_ls(
            "TASK    PID     STATUS    \nd1      7283    RUNNING\ng2      0       CREATED\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![
                TaskRow {
                    id: "d1".into(),
                    pid: 7283,
                    status: "RUNNING".into()
                },
                TaskRow {
                    id: "g2".into(),
                    pid: 0,
                    status: "CREATED".into()
                },
            ]
        );
        assert!(parse_task_ls("TASK PID STATUS\n").unwrap().is_empty());
    }

    #[test]
    fn builds_run_args() {
        let r = Run::new(Runtime::Tether, Source::Rootfs("/r".into()), "c1")
            .rm()
            .flag("--memory-limit=1")
            .sh("exit 3");
        assert_eq!(
            r.args(),
            [
                "run",
                "--runtime",
                "io.containerd.tether.v1",
                "--rm",
                "--memory-limit=1",
                "--rootfs",
                "/r",
                "c1",
                "/bin/sh",
                "-c",
                "exit 3"
            ]
        );
    }
}
