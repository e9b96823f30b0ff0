//! tetherd's files next to its socket: the socket directory (created 0700), the
//! single-instance lock (`tetherd.lock`, an exclusive `flock` held for the process
//! lifetime, holding the owner's pid) and the socket itself (0600; a stale one is removed
//! only while holding the lock).

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use tether_api::paths::{create_socket_dir, socket_dir, LOCK_FILE};

use crate::error::Error;

/// The held single-instance lock; released when dropped (or when the process dies).
#[must_use = "dropping the lock lets another tetherd start"]
pub struct InstanceLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the lock in `dir` and writes this process's pid into it. If another process
    /// holds it: `Error::AlreadyRunning` with the pid found in the file.
    pub fn acquire(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io("open lock file", &path))?;
        let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::AlreadyRunning {
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
                });
            }
            Err((_, errno)) => {
                return Err(Error::Io {
                    what: "flock",
                    path,
                    source: errno.into(),
                })
            }
        };
        locked
            .set_len(0)
            .and_then(|()| locked.rewind())
            .and_then(|()| writeln!(locked, "{}", std::process::id()))
            .map_err(Error::io("write pid to lock file", &path))?;
        Ok(InstanceLock {
            _file: locked,
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the ttrpc socket at `socket` (mode 0600), replacing a stale one. The lock
/// proves no other tetherd is serving on it.
pub fn bind_socket(socket: &Path, _lock: &InstanceLock) -> Result<UnixListener, Error> {
    match std::fs::remove_file(socket) {
        Ok(()) => log::info!("removed stale socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale socket", socket)(e)),
    }
    let listener = UnixListener::bind(socket).map_err(Error::io("bind socket", socket))?;
    std::fs::set_permissions(socket, Permissions::from_mode(0o600))
        .map_err(Error::io("chmod socket", socket))?;
    listener
        .set_nonblocking(true)
        .map_err(Error::io("set socket non-blocking", socket))?;
    Ok(listener)
}

/// Prepares the socket directory and takes the instance lock for `socket`.
pub fn lock_for(socket: &Path) -> Result<InstanceLock, Error> {
    let dir = socket_dir(socket);
    create_socket_dir(&dir).map_err(Error::io("create socket directory", &dir))?;
    InstanceLock::acquire(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn second_lock_reports_owner_pid() {
        let dir = tempfile::tempdir().unwrap();
        let sock_dir = dir.path().join("run/tether");
        let sock = sock_dir.join("tetherd.sock");
        let lock = lock_for(&sock).unwrap();
        assert_eq!(std::fs::metadata(&sock_dir).unwrap().mode() & 0o777, 0o700);
        match lock_for(&sock) {
            Err(Error::AlreadyRunning { pid }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected AlreadyRunning, got {:?}", other.map(|_| ())),
        }
        std::fs::write(&sock, b"stale").unwrap();
        let _l = bind_socket(&sock, &lock).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        drop(lock);
        assert!(lock_for(&sock).is_ok());
    }
}
