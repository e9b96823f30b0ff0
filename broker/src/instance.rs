//! tetherd's files next to its socket: the socket directory (created 0700), the
//! single-instance lock (`tetherd.lock`, an exclusive `flock` held for the process
//! lifetime, holding the owner's pid) and the socket itself (0600; a stale one is removed
//! only while holding the lock). With `[broker] allowed_uids`, other users must reach the
//! socket for the peer-credential check (`peer.rs`) to admit them: the directory is then
//! 0711 (entered, not listed) and the socket 0666, and the check is what decides.

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

/// Who may connect to the socket at the file-system level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Root alone: directory 0700, socket 0600.
    Root,
    /// Every user, so that the uids `allowed_uids` lists can connect and be checked:
    /// directory 0711, socket 0666.
    Checked,
}

impl Reach {
    /// [`Reach::Checked`] when `allowed_uids` lists anyone.
    pub fn for_allowed(allowed_uids: &[u32]) -> Self {
        if allowed_uids.is_empty() {
            Reach::Root
        } else {
            Reach::Checked
        }
    }
}

/// Binds the ttrpc socket at `socket` (mode 0600, or 0666 for [`Reach::Checked`]),
/// replacing a stale one. The lock proves no other tetherd is serving on it.
pub fn bind_socket(
    socket: &Path,
    _lock: &InstanceLock,
    reach: Reach,
) -> Result<UnixListener, Error> {
    match std::fs::remove_file(socket) {
        Ok(()) => log::info!("removed stale socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove stale socket", socket)(e)),
    }
    let listener = UnixListener::bind(socket).map_err(Error::io("bind socket", socket))?;
    let mode = match reach {
        Reach::Root => 0o600,
        Reach::Checked => 0o666,
    };
    std::fs::set_permissions(socket, Permissions::from_mode(mode))
        .map_err(Error::io("chmod socket", socket))?;
    listener
        .set_nonblocking(true)
        .map_err(Error::io("set socket non-blocking", socket))?;
    Ok(listener)
}

/// Prepares the socket directory and takes the instance lock for `socket`. The directory
/// is made 0700 if missing; for [`Reach::Checked`] a 0700 one (tetherd's own) becomes 0711.
/// No other directory's mode is touched (the socket may sit in a shared one, as `/run`).
pub fn lock_for(socket: &Path, reach: Reach) -> Result<InstanceLock, Error> {
    use std::os::unix::fs::MetadataExt;
    let dir = socket_dir(socket);
    create_socket_dir(&dir).map_err(Error::io("create socket directory", &dir))?;
    if reach == Reach::Checked {
        let mode = std::fs::metadata(&dir)
            .map_err(Error::io("stat socket directory", &dir))?
            .mode();
        if mode & 0o777 == 0o700 {
            std::fs::set_permissions(&dir, Permissions::from_mode(0o711))
                .map_err(Error::io("chmod socket directory", &dir))?;
        }
    }
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
        let lock = lock_for(&sock, Reach::Root).unwrap();
        assert_eq!(std::fs::metadata(&sock_dir).unwrap().mode() & 0o777, 0o700);
        match lock_for(&sock, Reach::Root) {
            Err(Error::AlreadyRunning { pid }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected AlreadyRunning, got {:?}", other.map(|_| ())),
        }
        std::fs::write(&sock, b"stale").unwrap();
        let _l = bind_socket(&sock, &lock, Reach::Root).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        drop(lock);
        assert!(lock_for(&sock, Reach::Root).is_ok());
    }

    #[test]
    fn allowed_uids_open_the_socket_to_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/tether/tetherd.sock");
        let lock = lock_for(&sock, Reach::Checked).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("run/tether")), 0o711);
        let _l = bind_socket(&sock, &lock, Reach::Checked).unwrap();
        assert_eq!(mode(&sock), 0o666);
        // A directory tetherd did not make 0700 keeps its mode.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, Permissions::from_mode(0o750)).unwrap();
        let _other = lock_for(&shared.join("t.sock"), Reach::Checked).unwrap();
        assert_eq!(mode(&shared), 0o750);
    }
}
