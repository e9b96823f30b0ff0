//! A process's stdio: pipes between runc and containerd's fifos, or the terminal runc
//! hands over its console socket. Copying is done by the framework's `IoTasks`.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use containerd_shim::asynchronous::io::{IoTasks, Pty, Stdio};
use nix::{
    fcntl::OFlag,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::{fchown, pipe2, Gid, Uid},
};
use tokio::net::{unix::pipe, UnixListener};

use crate::{
    error::{Error, Result},
    runc::ProcessIo,
};

/// How long runc may take to hand over a terminal it already created.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Stdio set up before runc runs; [`Prepared::connect`] finishes it after runc succeeded.
pub enum Prepared {
    Pipes {
        runc: ProcessIo,
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    Console(ConsoleSocket),
}

impl Prepared {
    pub fn new(stdio: &Stdio, io_uid: u32, io_gid: u32) -> Result<Self> {
        for p in [&stdio.stdin, &stdio.stdout, &stdio.stderr] {
            if p.contains("://") {
                return Err(Error::Unimplemented("stdio URIs (binary://, file://)"));
            }
        }
        if stdio.terminal {
            return Ok(Prepared::Console(ConsoleSocket::new()?));
        }
        let owner = |fd: &OwnedFd| {
            if io_uid != 0 || io_gid != 0 {
                fchown(fd, Some(Uid::from_raw(io_uid)), Some(Gid::from_raw(io_gid)))
                    .map_err(|e| Error::sys("fchown stdio pipe", e))
            } else {
                Ok(())
            }
        };
        let mut runc = ProcessIo::default();
        let (mut stdin, mut stdout, mut stderr) = (None, None, None);
        if !stdio.stdin.is_empty() {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
            owner(&r)?;
            runc.stdin = Some(r);
            stdin = Some(w);
        }
        if !stdio.stdout.is_empty() {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
            owner(&w)?;
            runc.stdout = Some(w);
            stdout = Some(r);
        }
        if !stdio.stderr.is_empty() {
            let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe2", e))?;
            owner(&w)?;
            runc.stderr = Some(w);
            stderr = Some(r);
        }
        Ok(Prepared::Pipes {
            runc,
            stdin,
            stdout,
            stderr,
        })
    }

    /// The fds runc (and the process) get, and the console socket path if any.
    pub fn runc_side(&mut self) -> (ProcessIo, Option<PathBuf>) {
        match self {
            Prepared::Pipes { runc, .. } => (std::mem::take(runc), None),
            Prepared::Console(s) => (ProcessIo::default(), Some(s.path.clone())),
        }
    }

    /// Starts copying between the process and containerd's fifos. Returns the
    /// terminal, if the process has one.
    pub async fn connect(self, stdio: &Stdio, io: &IoTasks) -> Result<Option<Pty>> {
        let fw = |e| Error::framework("connect stdio", e);
        match self {
            Prepared::Pipes {
                stdin,
                stdout,
                stderr,
                ..
            } => {
                if let Some(w) = stdin {
                    io.copy_from_fifo(&stdio.stdin, sender(w)?).map_err(fw)?;
                }
                if let Some(r) = stdout {
                    io.copy_to_fifo(receiver(r)?, &stdio.stdout).map_err(fw)?;
                }
                if let Some(r) = stderr {
                    io.copy_to_fifo(receiver(r)?, &stdio.stderr).map_err(fw)?;
                }
                Ok(None)
            }
            Prepared::Console(socket) => {
                let master = socket.receive().await?;
                let pty = Pty::new(File::from(master)).map_err(fw)?;
                if !stdio.stdin.is_empty() {
                    io.copy_from_fifo(&stdio.stdin, pty.clone()).map_err(fw)?;
                }
                if !stdio.stdout.is_empty() {
                    io.copy_to_fifo(pty.clone(), &stdio.stdout).map_err(fw)?;
                }
                Ok(Some(pty))
            }
        }
    }
}

fn sender(fd: OwnedFd) -> Result<pipe::Sender> {
    pipe::Sender::from_owned_fd(fd).map_err(|e| Error::io("register stdin pipe", e))
}

fn receiver(fd: OwnedFd) -> Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(fd).map_err(|e| Error::io("register output pipe", e))
}

/// The unix socket runc sends a new terminal's master fd over (`--console-socket`).
/// Removed with its directory when dropped.
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("tether-pty")
            .tempdir()
            .map_err(|e| Error::io("create console socket directory", e))?;
        let path = dir.path().join("pty.sock");
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("bind console socket {}", path.display()), e))?;
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn receive(self) -> Result<OwnedFd> {
        let (stream, _) = tokio::time::timeout(CONSOLE_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| {
                Error::FailedPrecondition(format!(
                    "runc sent no terminal on {} within {:?}",
                    self.dir().display(),
                    CONSOLE_TIMEOUT
                ))
            })?
            .map_err(|e| Error::io("accept on console socket", e))?;
        let stream = stream
            .into_std()
            .map_err(|e| Error::io("console socket", e))?;
        stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("console socket", e))?;
        stream
            .set_read_timeout(Some(CONSOLE_TIMEOUT))
            .map_err(|e| Error::io("console socket", e))?;
        tokio::task::spawn_blocking(move || receive_fd(stream.as_fd()))
            .await
            .map_err(|e| Error::io("console socket", std::io::Error::other(e)))?
    }
}

fn receive_fd(sock: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Error::sys("recvmsg on console socket", e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| Error::sys("recvmsg on console socket", e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut fds = fds.into_iter();
            if let Some(fd) = fds.next() {
                // SAFETY: the kernel just installed this descriptor in our table for us
                // (SCM_RIGHTS); nothing else owns it.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                for extra in fds {
                    // SAFETY: as above; extra descriptors are closed, not leaked.
                    drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(extra) });
                }
                return Ok(owned);
            }
        }
    }
    Err(Error::FailedPrecondition(
        "console socket message carried no terminal".into(),
    ))
}

/// Sets a terminal's window size.
pub fn resize(pty: &Pty, width: u32, height: u32) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer, which is valid for the
    // call; the fd is the open pty master owned by `pty`.
    let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(Error::io(
            "resize terminal",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
