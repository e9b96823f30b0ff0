//! Every default path of tether, in one place (as bpfman's `directories`): the node config
//! file and the environment variable that names another, tetherd's socket and the files
//! beside it, the bpffs pin root, the audit log, and where the `tetherd` binary is found.
//! The config file's `[broker]` keys and tetherd's flags override these; nothing else in
//! tether spells one of these paths.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// tether's node config file, read when neither the runtime options nor
/// [`CONFIG_ENV`] name another. Its absence means defaults.
pub const CONFIG_FILE: &str = "/etc/tether/config.toml";
/// An environment variable naming the config file (e.g. set for a private containerd,
/// whose shims inherit it).
pub const CONFIG_ENV: &str = "TETHER_CONFIG";
/// tetherd's ttrpc socket.
pub const SOCKET: &str = "/run/tether/tetherd.sock";
/// The bpffs directory holding one directory of pins per object version.
pub const PIN_ROOT: &str = "/sys/fs/bpf/tether";
/// tetherd's audit JSON-lines file.
pub const AUDIT_LOG: &str = "/var/log/tether/audit.jsonl";
/// The name of the broker binary: looked up beside the caller, then on PATH.
pub const TETHERD: &str = "tetherd";
/// The single-instance lock's file name, in the socket's directory.
pub const LOCK_FILE: &str = "tetherd.lock";
/// The log of a tetherd started on demand, in the socket's directory.
pub const LOG_FILE: &str = "tetherd.log";

/// The config file named by the runtime options, else by `$TETHER_CONFIG`; `None`: the
/// default [`CONFIG_FILE`], which may be absent.
pub fn config_file(from_options: Option<&Path>) -> Option<PathBuf> {
    from_options
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
}

/// The directory of `socket` (`.` for a bare file name): it holds the socket, the
/// instance lock and the log of a tetherd started on demand.
pub fn socket_dir(socket: &Path) -> PathBuf {
    match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The log file of a tetherd serving `socket` that was started on demand.
pub fn tetherd_log(socket: &Path) -> PathBuf {
    socket_dir(socket).join(LOG_FILE)
}

/// Creates `dir` (and parents) with mode 0700 if missing; an existing directory is left
/// as it is.
pub fn create_socket_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// `tetherd` in the running executable's directory, whether or not it exists (how
/// tetherctl, installed beside it, finds it).
pub fn tetherd_beside_exe() -> io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name(TETHERD))
}

/// `tetherd` in the running executable's directory if it is there, else the bare name,
/// looked up on PATH when spawned (how the shim finds it).
pub fn tetherd() -> PathBuf {
    match tetherd_beside_exe() {
        Ok(p) if p.exists() => p,
        _ => PathBuf::from(TETHERD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_of_bare_and_nested_names() {
        assert_eq!(socket_dir(Path::new(SOCKET)), PathBuf::from("/run/tether"));
        assert_eq!(socket_dir(Path::new("t.sock")), PathBuf::from("."));
        assert_eq!(
            tetherd_log(Path::new(SOCKET)),
            PathBuf::from("/run/tether/tetherd.log")
        );
    }

    #[test]
    fn options_name_the_config_before_the_environment() {
        let named = Path::new("/etc/tether/other.toml");
        assert_eq!(config_file(Some(named)).as_deref(), Some(named));
    }

    #[test]
    fn tetherd_is_beside_the_executable_or_on_path() {
        let beside = tetherd_beside_exe().unwrap();
        assert_eq!(beside.file_name().unwrap(), TETHERD);
        // The test binary has no tetherd beside it in target/debug/deps.
        assert_eq!(tetherd(), PathBuf::from(TETHERD));
    }
}
