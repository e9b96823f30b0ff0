//! The parts of an OCI runtime spec that the shim acts on.
//!
//! runc reads and checks the whole of a bundle's `config.json` (and of an exec's process
//! spec). The shim needs only the annotations and the namespaces, so it reads only those:
//! it cannot refuse a spec that runc accepts because a field is newer than the shim's types,
//! and it does not carry the code that checks every field of a full typed spec (with its
//! regular-expression engine) in a process that runs once per container.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// `linux.namespaces[].type` of the PID namespace.
pub const PID_NAMESPACE: &str = "pid";
/// `linux.namespaces[].type` of the network namespace.
pub const NETWORK_NAMESPACE: &str = "network";

/// A runtime spec, as far as the shim reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default)]
    pub linux: Option<Linux>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Option<Vec<Namespace>>,
    #[serde(default, rename = "cgroupsPath")]
    pub cgroups_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub typ: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// An exec's process spec, as far as the shim checks it before runc reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Process {
    /// Required by the runtime spec.
    pub cwd: String,
    #[serde(default)]
    pub args: Option<Vec<String>>,
}

impl Spec {
    /// Reads `path` (a bundle's `config.json`).
    pub fn load(path: &Path) -> Result<Spec> {
        let bytes = std::fs::read(path).map_err(|e| Error::Spec {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Spec {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// The annotations (none: empty).
    pub fn annotations(&self) -> &HashMap<String, String> {
        static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        self.annotations
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
    }

    /// The namespace of type `typ` the spec asks for, if any.
    pub fn namespace(&self, typ: &str) -> Option<&Namespace> {
        self.linux
            .as_ref()?
            .namespaces
            .as_ref()?
            .iter()
            .find(|n| n.typ == typ)
    }

    /// Whether `linux.cgroupsPath` has the form only runc's systemd cgroup driver takes,
    /// `slice:prefix:name` (`kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`).
    /// containerd's CRI writes that form exactly when the pod's parent is a systemd slice
    /// (kubelet's systemd cgroup driver), whatever the runtime's options say.
    pub fn systemd_cgroups_path(&self) -> bool {
        let Some(path) = self.linux.as_ref().and_then(|l| l.cgroups_path.as_deref()) else {
            return false;
        };
        let parts: Vec<&str> = path.split(':').collect();
        !path.contains('/')
            && parts.len() == 3
            && (parts[0].is_empty() || parts[0].ends_with(".slice"))
            && !parts[2].is_empty()
    }
}

/// The capability that opens packet sockets (and raw IP sockets).
pub const CAP_NET_RAW: &str = "CAP_NET_RAW";

/// The capability sets of a process spec.
const CAPABILITY_SETS: [&str; 5] = [
    "bounding",
    "effective",
    "inheritable",
    "permitted",
    "ambient",
];

/// Removes `cap` from every capability set of `process` (a runtime spec's `process`, or an
/// exec's process spec). Returns whether any set held it.
pub fn drop_capability(process: &mut serde_json::Value, cap: &str) -> bool {
    let mut held = false;
    let Some(sets) = process
        .get_mut("capabilities")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return false;
    };
    for set in CAPABILITY_SETS {
        if let Some(list) = sets.get_mut(set).and_then(serde_json::Value::as_array_mut) {
            let before = list.len();
            list.retain(|c| c.as_str() != Some(cap));
            held |= list.len() != before;
        }
    }
    held
}

/// The seccomp name of the native system call ABI, on architectures whose kernel also
/// runs a 32-bit (compat) one.
pub fn native_seccomp_arch() -> Option<&'static str> {
    if cfg!(target_arch = "x86_64") {
        Some("SCMP_ARCH_X86_64")
    } else if cfg!(target_arch = "aarch64") {
        Some("SCMP_ARCH_AARCH64")
    } else {
        None
    }
}

/// Leaves the container only the native system call ABI (`arch`, a seccomp arch name): the
/// spec's seccomp profile keeps its rules but lists no other architecture, and a spec with
/// no profile gets one that allows every call of that ABI. A call of another ABI (a 32-bit
/// process, or `int 0x80` from a 64-bit one) then meets the profile's bad-architecture
/// action and never runs. Returns whether the spec changed.
pub fn native_abi_only(config: &mut serde_json::Value, arch: &str) -> bool {
    let Some(root) = config.as_object_mut() else {
        return false;
    };
    let linux = root.entry("linux").or_insert_with(|| serde_json::json!({}));
    let Some(linux) = linux.as_object_mut() else {
        return false;
    };
    match linux
        .get_mut("seccomp")
        .and_then(serde_json::Value::as_object_mut)
    {
        Some(profile) => match profile
            .get_mut("architectures")
            .and_then(serde_json::Value::as_array_mut)
        {
            // No list: libseccomp (and runc) filter the native ABI only already.
            None => false,
            Some(list) if list.iter().all(|a| a.as_str() == Some(arch)) => false,
            Some(list) => {
                *list = vec![serde_json::Value::from(arch)];
                true
            }
        },
        None => {
            linux.insert(
                "seccomp".into(),
                serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]}),
            );
            true
        }
    }
}

/// What a container under a policy runs without where the kernel runs no tether LSM
/// program (see `Attacher::hardening`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hardening {
    /// Capabilities taken from its processes, exec'd ones included.
    pub withheld: &'static [&'static str],
    /// Only the native system call ABI (this seccomp arch).
    pub native_abi: Option<&'static str>,
}

/// What the container runs without, as the shim's log says it: "CAP_NET_RAW", "every system
/// call ABI but SCMP_ARCH_X86_64", or both.
impl std::fmt::Display for Hardening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self.withheld.iter().map(|c| (*c).to_owned()).collect();
        if let Some(abi) = self.native_abi {
            parts.push(format!("every system call ABI but {abi}"));
        }
        f.write_str(&parts.join(" and "))
    }
}

impl Hardening {
    pub fn is_empty(&self) -> bool {
        self.withheld.is_empty() && self.native_abi.is_none()
    }

    /// Rewrites the bundle's `config.json` hardened (written whole to a new file, then
    /// renamed over the old). Returns whether it changed.
    pub fn apply(&self, bundle: &Path) -> Result<bool> {
        if self.is_empty() {
            return Ok(false);
        }
        let path = bundle.join("config.json");
        let bad = |reason: String| Error::Spec {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let mut config: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut changed = false;
        if let Some(process) = config.get_mut("process") {
            for cap in self.withheld {
                changed |= drop_capability(process, cap);
            }
        }
        if let Some(arch) = self.native_abi {
            changed |= native_abi_only(&mut config, arch);
        }
        if !changed {
            return Ok(false);
        }
        let text = serde_json::to_vec(&config).map_err(|e| bad(e.to_string()))?;
        let tmp = bundle.join(".config.json.tether");
        std::fs::write(&tmp, text).map_err(|e| bad(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            bad(format!("replacing it: {e}"))
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardening_says_what_is_withheld() {
        let both = Hardening {
            withheld: &["CAP_NET_RAW"],
            native_abi: Some("SCMP_ARCH_X86_64"),
        };
        assert_eq!(
            both.to_string(),
            "CAP_NET_RAW and every system call ABI but SCMP_ARCH_X86_64"
        );
        let abi = Hardening {
            withheld: &[],
            native_abi: Some("SCMP_ARCH_AARCH64"),
        };
        assert_eq!(
            abi.to_string(),
            "every system call ABI but SCMP_ARCH_AARCH64"
        );
    }

    #[test]
    fn reads_what_the_shim_uses_and_nothing_else() {
        // What `runc spec` writes, trimmed, plus fields and a namespace type the shim does
        // not know: they are left to runc.
        let json = r#"{
            "ociVersion": "1.2.0",
            "process": {"terminal": true, "cwd": "/", "args": ["sh"],
                        "execCPUAffinity": {"initial": "0-1"}, "somethingNew": 1},
            "root": {"path": "rootfs"},
            "annotations": {"tether.io/egress-deny": "127.0.0.2"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "time"},
                      {"type": "network", "path": "/var/run/netns/x"}]}
        }"#;
        let s: Spec = serde_json::from_str(json).unwrap();
        assert_eq!(s.annotations()["tether.io/egress-deny"], "127.0.0.2");
        assert_eq!(s.namespace(PID_NAMESPACE).unwrap().path, None);
        assert_eq!(
            s.namespace(NETWORK_NAMESPACE).unwrap().path.as_deref(),
            Some(Path::new("/var/run/netns/x"))
        );
        assert!(s.namespace("user").is_none());

        let bare: Spec = serde_json::from_str(r#"{"ociVersion": "1.0.0"}"#).unwrap();
        assert!(bare.annotations().is_empty() && bare.namespace(PID_NAMESPACE).is_none());
    }

    #[test]
    fn the_systemd_form_of_cgroups_path_is_told_apart() {
        let spec = |path: &str| -> Spec {
            serde_json::from_value(serde_json::json!({"linux": {"cgroupsPath": path}})).unwrap()
        };
        for path in [
            "kubepods-besteffort-pod1234.slice:cri-containerd:abc",
            "system.slice:docker:abc",
            ":tether:abc",
        ] {
            assert!(spec(path).systemd_cgroups_path(), "{path}");
        }
        for path in [
            "/kubepods/besteffort/pod1234/abc",
            "/ns/abc",
            "abc",
            "kubepods.slice:cri-containerd",
            "a/b.slice:x:y",
            "kubepods.slice:cri-containerd:",
        ] {
            assert!(!spec(path).systemd_cgroups_path(), "{path}");
        }
        assert!(!Spec::default().systemd_cgroups_path());
    }

    #[test]
    fn a_broken_spec_names_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for (text, why) in [
            ("{not json", "key must be a string"),
            ("42", "expected struct Spec"),
            (
                r#"{"ociVersion": "1", "linux": {"namespaces": [{}]}}"#,
                "missing field `type`",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Spec::load(&path).unwrap_err().to_string();
            assert!(e.contains("config.json") && e.contains(why), "{text}: {e}");
        }
        let e = Spec::load(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.json") && e.contains("No such file"),
            "{e}"
        );
    }

    #[test]
    fn a_capability_is_dropped_from_every_set_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"cwd": "/", "args": ["sh"], "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_NET_RAW"],
                "effective": ["CAP_NET_RAW", "CAP_KILL"],
                "permitted": ["CAP_NET_RAW"],
                "inheritable": [],
            }},
            "future": {"x": 1},
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        let h = Hardening {
            withheld: &[CAP_NET_RAW],
            native_abi: None,
        };
        assert!(h.apply(dir.path()).unwrap());
        let after: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        let mut want = config.clone();
        want["process"]["capabilities"] = serde_json::json!({
            "bounding": ["CAP_CHOWN"], "effective": ["CAP_KILL"], "permitted": [],
            "inheritable": [],
        });
        assert_eq!(after, want);
        // Nothing to drop: the file is left alone.
        assert!(!h.apply(dir.path()).unwrap());
        let mut exec = serde_json::json!({"cwd": "/"});
        assert!(!drop_capability(&mut exec, CAP_NET_RAW));
        let e = h.apply(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope/config.json"), "{e}");
        // Nothing to do: not even a read.
        assert!(!Hardening::default()
            .apply(&dir.path().join("nope"))
            .unwrap());
    }

    #[test]
    fn only_the_native_abi_is_left() {
        let arch = "SCMP_ARCH_X86_64";
        // No profile: one that allows every native call.
        let mut c = serde_json::json!({"linux": {"namespaces": []}});
        assert!(native_abi_only(&mut c, arch));
        assert_eq!(
            c["linux"]["seccomp"],
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]})
        );
        // No linux section at all.
        let mut c = serde_json::json!({"ociVersion": "1.1.0"});
        assert!(native_abi_only(&mut c, arch));
        assert_eq!(
            c["linux"]["seccomp"]["architectures"],
            serde_json::json!([arch])
        );
        // Docker's default profile: the rules stay, the 32-bit ABIs go.
        let rules = serde_json::json!([{"names": ["accept"], "action": "SCMP_ACT_ALLOW"}]);
        let mut c = serde_json::json!({"linux": {"seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": rules,
        }}});
        assert!(native_abi_only(&mut c, arch));
        assert_eq!(
            c["linux"]["seccomp"]["architectures"],
            serde_json::json!([arch])
        );
        assert_eq!(c["linux"]["seccomp"]["syscalls"], rules);
        assert!(!native_abi_only(&mut c, arch));
        // A profile without a list filters the native ABI only already.
        let mut c = serde_json::json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}});
        assert!(!native_abi_only(&mut c, arch));
    }

    #[test]
    fn an_exec_process_needs_its_cwd() {
        assert!(serde_json::from_str::<Process>(r#"{"cwd": "/", "args": ["ls"]}"#).is_ok());
        let e = serde_json::from_str::<Process>(r#"{"args": ["ls"]}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `cwd`"), "{e}");
    }
}
