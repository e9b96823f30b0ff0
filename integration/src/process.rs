//! Running a child process with a deadline: the one place tests spawn and wait for commands.
//!
//! A child that outlives its deadline is killed (SIGKILL) and reaped, and the call fails with
//! whatever it had printed so far. Nothing here waits without a deadline.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a running child is polled for exit.
const POLL: Duration = Duration::from_millis(5);

/// The result of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `128 + signal` for a child killed by a signal (the shell's convention,
    /// which is also what `ctr` reports for a task killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// `self` if the command exited 0, else an error carrying its code and output.
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {}; stdout: {:?}; stderr: {:?}",
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Exit code of `status` with the shell's `128 + signal` convention.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

/// Describes `cmd` for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, feeding it `stdin` (or /dev/null), capturing stdout and stderr.
///
/// Fails if the command cannot be spawned or does not exit within `timeout` (it is then
/// killed). A non-zero exit is not an error here: see [`Output::ok`].
pub fn run(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    match stdin {
        None => run_inner(cmd, None, timeout),
        Some(data) => {
            let data = data.to_vec();
            run_fed(
                cmd,
                move |mut pipe| {
                    // Ignore EPIPE: the child may exit without reading its input.
                    let _ = pipe.write_all(&data);
                },
                timeout,
            )
        }
    }
}

/// Like [`run`], but stdin is a pipe handed to `feed` on its own thread; the child sees EOF
/// when `feed` drops it. Lets a caller hold stdin open until the child is ready for EOF.
pub fn run_fed(
    cmd: &mut Command,
    feed: impl FnOnce(ChildStdin) + Send + 'static,
    timeout: Duration,
) -> Result<Output> {
    run_inner(cmd, Some(Box::new(feed)), timeout)
}

type Feeder = Box<dyn FnOnce(ChildStdin) + Send + 'static>;

fn run_inner(cmd: &mut Command, feed: Option<Feeder>, timeout: Duration) -> Result<Output> {
    let what = describe(cmd);
    cmd.stdin(if feed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {what}"))?;

    let writer = match (feed, child.stdin.take()) {
        (Some(feed), Some(pipe)) => Some(thread::spawn(move || feed(pipe))),
        _ => None,
    };
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let status = wait_with_deadline(&mut child, timeout);
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = join_drain(stdout);
    let stderr = join_drain(stderr);
    match status {
        Ok(status) => Ok(Output {
            code: exit_code(status),
            stdout,
            stderr,
        }),
        Err(e) => Err(e.context(format!(
            "{what}: stdout so far: {:?}; stderr so far: {:?}",
            stdout.trim_end(),
            stderr.trim_end()
        ))),
    }
}

/// Waits for `child` to exit; kills and reaps it if `timeout` passes first.
pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill_and_reap(child);
            bail!("did not exit within {timeout:?}; killed it");
        }
        thread::sleep(POLL);
    }
}

/// SIGKILLs `child` and reaps it. Errors are ignored: it may already be gone.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn drain<R: Read + Send + 'static>(mut r: R) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_drain(h: Option<JoinHandle<String>>) -> String {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_code_and_output() {
        let out = run(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            Some(b"in\n"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.code, 3);
        assert_eq!(out.stdout, "in\n");
        assert_eq!(out.stderr, "err\n");
        assert!(out.ok().is_err());
    }

    #[test]
    fn signal_is_128_plus() {
        let out = run(
            Command::new("sh").args(["-c", "kill -9 $$"]),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.code, 137);
    }

    #[test]
    fn kills_on_deadline() {
        let start = Instant::now();
        let err = run(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(format!("{err:#}").contains("did not exit"), "{err:#}");
    }
}
