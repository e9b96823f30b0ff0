//! Where tether's objects live in bpffs. Every pin path is made here and nowhere else.
//!
//! ```text
//! <root>/                                 default /sys/fs/bpf/tether (mode 0700)
//!   <version>/progs/<program>             one directory per object version, published by
//!   <version>/maps/<map>                  rename(2) so it appears complete or not at all
//!   staging-<version>-<pid>/              a load in progress (removed by the next tetherd)
//!   containers/<namespace>/<id>/<link>    the links of one container, pinned by the shim
//! ```
//!
//! bpffs refuses names with a dot (reserved by the kernel for future use), so a dot in a
//! container id or namespace is written as `%2E` in its directory name.
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The default pin root.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/tether";
/// bpffs's statfs magic.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin layout under one root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl Default for PinLayout {
    fn default() -> Self {
        PinLayout::new(DEFAULT_ROOT)
    }
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join(version)
    }

    pub fn prog(&self, version: &str, name: &str) -> PathBuf {
        self.version_dir(version).join("progs").join(name)
    }

    pub fn map(&self, version: &str, name: &str) -> PathBuf {
        self.version_dir(version).join("maps").join(name)
    }

    pub(crate) fn staging_dir(&self, version: &str) -> PathBuf {
        self.root
            .join(format!("staging-{version}-{}", std::process::id()))
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// The directory of one container's links. `namespace` and `id` must be valid names.
    pub fn container_dir(&self, namespace: &str, id: &str) -> Result<PathBuf> {
        check_name("namespace", namespace)?;
        check_name("id", id)?;
        Ok(self
            .containers_dir()
            .join(encode_name(namespace))
            .join(encode_name(id)))
    }

    /// Object versions pinned under the root (complete ones only: staging dirs are skipped).
    pub fn versions(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::path("read_dir", &self.root, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::path("read_dir", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_version_name(&name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Staging directories left by loads that did not finish.
    pub fn staging_dirs(&self) -> Result<Vec<PathBuf>> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::path("read_dir", &self.root, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("staging-") {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    /// Makes sure the root exists on bpffs, mounting bpffs on its parent mount point
    /// (`/sys/fs/bpf`) when nothing is mounted there.
    pub fn ensure_root(&self) -> Result<()> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent)? {
            if parent == Path::new("/sys/fs/bpf") {
                nix::mount::mount(
                    Some("bpf"),
                    parent,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|e| Error::NoBpffs {
                    path: parent.to_path_buf(),
                    reason: format!("mount -t bpf failed: {e}"),
                })?;
                log::info!("mounted bpffs at {}", parent.display());
            } else {
                return Err(Error::NoBpffs {
                    path: parent.to_path_buf(),
                    reason: "not a bpffs mount (mount -t bpf bpf <dir>)".into(),
                });
            }
        }
        make_dir(&self.root)
    }
}

/// Creates `dir` (mode 0700) and its parents; an existing directory is fine.
pub(crate) fn make_dir(dir: &Path) -> Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(Error::path("mkdir", dir, e)),
    }
}

/// Whether `path` is on a bpf file system.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    match nix::sys::statfs::statfs(path) {
        Ok(st) => Ok(st.filesystem_type().0 == BPF_FS_MAGIC),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(Error::path("statfs", path, e.into())),
    }
}

/// A container id or namespace as a bpffs file name (dots are not allowed there).
pub fn encode_name(name: &str) -> String {
    name.replace('.', "%2E")
}

/// The inverse of [`encode_name`].
pub fn decode_name(file_name: &str) -> String {
    file_name.replace("%2E", ".")
}

/// A version is 16 lowercase hex digits (the build's object hash).
fn is_version_name(name: &str) -> bool {
    name.len() == 16
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Container ids and namespaces become directory names and map entries: containerd's own
/// identifier rules (letters, digits, `.`, `_`, `-`, starting with a letter or digit).
pub fn check_name(what: &'static str, value: &str) -> Result<()> {
    let bad = |reason| Error::Name {
        what,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("is empty"));
    }
    if value.len() > 76 {
        return Err(bad("is longer than 76 characters"));
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("must start with a letter or digit"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(bad("may only hold letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Removes a pin directory tree (files in bpffs are unlinked like any other file).
pub(crate) fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::path("remove", dir, e)),
    }
}

/// Whether a pin directory's mode and owner are what tetherd made (root, no group/other access).
pub(crate) fn check_private(dir: &Path) -> Result<()> {
    let meta = fs::metadata(dir).map_err(|e| Error::path("stat", dir, e))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Err(Error::Tampered {
            path: dir.to_path_buf(),
            reason: format!("owned by uid {}, not root", meta.uid()),
        });
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(Error::Tampered {
            path: dir.to_path_buf(),
            reason: format!(
                "writable by others (mode {:o})",
                meta.permissions().mode() & 0o7777
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let l = PinLayout::new("/sys/fs/bpf/tether");
        assert_eq!(
            l.prog("0123456789abcdef", "tether_connect4"),
            Path::new("/sys/fs/bpf/tether/0123456789abcdef/progs/tether_connect4")
        );
        assert_eq!(
            l.container_dir("default", "web-1").unwrap(),
            Path::new("/sys/fs/bpf/tether/containers/default/web-1")
        );
    }

    #[test]
    fn names() {
        assert!(check_name("id", "abc_1.2-3").is_ok());
        for bad in ["", "../x", "a/b", "-a", &"x".repeat(77), "a b"] {
            let err = check_name("id", bad).unwrap_err().to_string();
            assert!(err.contains("invalid container id"), "{err}");
        }
        assert!(is_version_name("0123456789abcdef"));
        assert!(!is_version_name("containers"));
        assert!(!is_version_name("staging-0123456789abcdef-1"));
        assert_eq!(encode_name("web.1"), "web%2E1");
        assert_eq!(decode_name(&encode_name("a.b.c")), "a.b.c");
    }
}
