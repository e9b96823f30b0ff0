//! Running a command on a fresh pseudo terminal, as a user at a terminal would run `ctr -t`.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::pty::{openpty, Winsize};

use crate::process::{self, exit_code, wait_with_deadline};

/// How long to keep reading the terminal after the command exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit code and everything the command wrote to the terminal.
#[derive(Debug, Clone)]
pub struct PtyOutput {
    pub code: i32,
    /// Terminal output, with the terminal's `\r\n` line endings.
    pub output: String,
}

/// Runs `cmd` as the session leader of a new session whose controlling terminal is a new pty
/// of `rows` x `cols`, with the pty as stdin, stdout and stderr. Kills it after `timeout`.
pub fn run(mut cmd: Command, rows: u16, cols: u16, timeout: Duration) -> Result<PtyOutput> {
    let what = process::describe(&cmd);
    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).context("openpty")?;
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().context("dup pty slave")?))
        .stdout(Stdio::from(slave.try_clone().context("dup pty slave")?))
        .stderr(Stdio::from(slave));
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe syscalls (setsid, ioctl) on fd 0, which is the pty slave by then.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {what} on a pty"))?;
    // `cmd` holds the parent's copies of the slave: without them the master reads EIO once
    // every process holding the terminal has exited.
    drop(cmd);
    let mut master = File::from(pty.master);
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match master.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut b) = sink.lock() {
                        b.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
        let _ = done_tx.send(());
    });
    let status = wait_with_deadline(&mut child, timeout).with_context(|| what.clone())?;
    // Drain what is still buffered; a leftover process holding the terminal must not hang us
    // (the reader thread then ends with the test process).
    let _ = done_rx.recv_timeout(DRAIN_TIMEOUT);
    let output = buf
        .lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(PtyOutput {
        code: exit_code(status),
        output,
    })
}
