//! Output written right before exit, by several containers at once: every byte of stdout and
//! stderr reaches containerd's fifos, and the fifos end only after the last byte.
//!
//! The fifos are read by the test itself, not by `ctr run`: under load `ctr` 1.6 itself now
//! and then drops output that the shim did deliver (all of it, or everything past the first
//! 64 KiB or so, with `io.containerd.runc.v2` as often as with tether), so a check through
//! `ctr run` would test `ctr`. Here `ctr run --detach --fifo-dir DIR` only creates the fifos
//! and starts the task, which waits for a marker file before writing anything; once `ctr` has
//! exited (and its readers of the fifos with it) the test opens the fifos, creates every
//! container's marker at once and reads each fifo to its end, more slowly than the shim
//! copies. Each container writes far more than a pipe and a fifo hold, so its exit comes while
//! the shim still holds output to deliver, in every container of a round at the same time.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tether_integration::TestEnv;

use crate::common::*;

/// Containers run at once in each round.
const CONTAINERS: usize = 6;
/// Rounds of [`CONTAINERS`] containers.
const ROUNDS: usize = 3;
/// Lines of stdout (`seq 1 N`: 588,895 bytes) and of stderr (`seq N+1 2N`) per container.
const LINES: u32 = 100_000;
/// The test reads each fifo [`READ_CHUNK`] bytes at a time with a [`READ_PAUSE`] after each
/// read (about 16 MB/s), slower than the shim can copy: the fifo is full, and the shim holds
/// output it has not yet delivered, when the container exits.
const READ_CHUNK: usize = 16 << 10;
const READ_PAUSE: Duration = Duration::from_millis(1);
/// How long one container's fifos may take to deliver everything and end (2 cores shared by
/// every container of a round).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

scenario!(stdio_race);
/// [`CONTAINERS`] concurrent containers, each writing [`LINES`] lines to stdout and as many
/// to stderr at the same time and exiting the moment both are written: each of its fifos
/// delivers its stream completely and then ends (the shim closes it), round after round.
fn stdio_race(env: &mut TestEnv) -> Result<()> {
    let fifo_dir = tempfile::Builder::new()
        .prefix("tether-stdio-race")
        .tempdir()
        .context("creating the fifo directory")?;
    let want_out = seq(1, LINES);
    let want_err = seq(LINES + 1, 2 * LINES);
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let ids: Vec<String> = (0..CONTAINERS).map(|_| env.id("race")).collect();
        // Started one after another; each waits for its marker before writing anything.
        for id in &ids {
            let script = format!(
                "while [ ! -e /tmp/{id}.go ]; do sleep 0.01; done; \
                 seq 1 {LINES} & seq {} {} >&2; wait",
                LINES + 1,
                2 * LINES
            );
            let run = env
                .run(id)
                .detach()
                .flag(format!("--fifo-dir={}", fifo_dir.path().display()))
                .sh(&script);
            env.ctr.run_container(&run)?.ok()?;
        }
        // `ctr run --detach` has exited, and with it its readers of the fifos: the test's
        // own are the only ones.
        let mut readers = Vec::new();
        for id in &ids {
            let stdout = open_fifo(&fifo_path(fifo_dir.path(), &format!("{id}-stdout"))?)?;
            let stderr = open_fifo(&fifo_path(fifo_dir.path(), &format!("{id}-stderr"))?)?;
            readers.push(read_outputs(stdout, stderr));
        }
        // Go: every container of the round writes, and exits, at once.
        for id in &ids {
            let marker = host_tmp_path(env, &format!("{id}.go"));
            File::create(&marker).with_context(|| format!("creating {}", marker.display()))?;
        }
        for (h, id) in readers.into_iter().zip(&ids) {
            let outputs = h.join().map_err(|_| anyhow!("reader of {id} panicked"))?;
            match outputs {
                Ok((out, err)) => {
                    if out != want_out {
                        failures.push(format!(
                            "round {round} {id}: stdout {}",
                            compare(&out, &want_out)
                        ));
                    }
                    if err != want_err {
                        failures.push(format!(
                            "round {round} {id}: stderr {}",
                            compare(&err, &want_err)
                        ));
                    }
                }
                Err(e) => failures.push(format!("round {round} {id}: {e:#}")),
            }
        }
        for id in &ids {
            let _ = std::fs::remove_file(host_tmp_path(env, &format!("{id}.go")));
            let status = wait_status(env, id, "STOPPED");
            env.ctr.ok(["task", "delete", id])?;
            env.ctr.ok(["container", "delete", id])?;
            status?;
            env.assert_no_leaks(id)?;
        }
    }
    ensure!(failures.is_empty(), "output lost:\n{}", failures.join("\n"));
    Ok(())
}

/// Reads a container's stdout and stderr fifos on threads of their own, each until the shim
/// closes it.
fn read_outputs(stdout: File, stderr: File) -> JoinHandle<Result<(String, String)>> {
    thread::spawn(move || {
        let deadline = Instant::now() + READ_TIMEOUT;
        let err_reader = thread::spawn(move || read_to_end(stderr, deadline));
        let out = read_to_end(stdout, deadline).context("stdout")?;
        let err = err_reader
            .join()
            .map_err(|_| anyhow!("stderr reader panicked"))?
            .context("stderr")?;
        Ok((out, err))
    })
}

/// The fifo `name` in one of `dir`'s subdirectories.
fn fifo_path(dir: &Path, name: &str) -> Result<PathBuf> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path().join(name);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("no fifo {name} under {}", dir.display())
}

/// Opens a fifo for reading without waiting for a writer (the shim holds one from create
/// until its copy ends).
fn open_fifo(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Everything until the fifo's end (no writer left), read slowly (see [`READ_CHUNK`]),
/// failing at `deadline`.
fn read_to_end(mut fifo: File, deadline: Instant) -> Result<String> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match fifo.read(&mut buf) {
            Ok(0) => return String::from_utf8(data).context("output is not UTF-8"),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                thread::sleep(READ_PAUSE);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                ensure!(
                    Instant::now() < deadline,
                    "the fifo did not end within {READ_TIMEOUT:?} ({} bytes read)",
                    data.len()
                );
                let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(1000u16)).context("poll")?;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("read"),
        }
    }
}

/// What `seq FIRST LAST` prints.
fn seq(first: u32, last: u32) -> String {
    (first..=last).map(|i| format!("{i}\n")).collect()
}

/// A short account of how `got` differs from `want` (both far too long to print).
fn compare(got: &str, want: &str) -> String {
    let tail = &got[got.len().saturating_sub(24)..];
    let first_difference = got
        .bytes()
        .zip(want.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "has {} bytes of {}, the first {first_difference} right (ends {tail:?})",
        got.len(),
        want.len(),
    )
}

#[test]
fn compare_reports_lengths_and_where_they_part() {
    let want = seq(1, 20);
    assert_eq!(
        compare(&want[..10], &want),
        format!(
            "has 10 bytes of {}, the first 10 right (ends \"1\\n2\\n3\\n4\\n5\\n\")",
            want.len()
        )
    );
    assert!(compare("1\n3\n", "1\n2\n").contains("the first 2 right"));
}
