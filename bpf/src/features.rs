//! What the running kernel gives tether, and so which mechanism each step uses on it: TCX
//! links or clsact filters for the TC programs, netns cookies or filter classids in the keys of
//! interfaces. `tetherd --features` prints it and tetherd logs it at start, so a step-down on
//! an older kernel is visible, not silent.

use std::fmt;
use std::path::Path;

use crate::programs::NetnsKey;
use crate::tc::TcAttach;

/// The kernel's release and the mechanisms tether picks on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// `uname -r`.
    pub kernel: String,
    /// How TC programs attach (TCX from 6.6, clsact before).
    pub tc_attach: TcAttach,
    /// How the TC programs tell network namespaces apart.
    pub netns_key: NetnsKey,
    /// Whether the kernel describes itself in BTF (/sys/kernel/btf/vmlinux), which CO-RE needs.
    pub btf: bool,
}

impl Features {
    pub fn probe() -> Self {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Features {
            kernel,
            tc_attach: TcAttach::probe(),
            netns_key: NetnsKey::probe(),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        }
    }
}

impl fmt::Display for Features {
    /// One `key: value` per line, stable for scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: {}", self.kernel)?;
        writeln!(f, "btf: {}", if self.btf { "yes" } else { "no" })?;
        writeln!(f, "tc-attach: {}", self.tc_attach.as_str())?;
        write!(f, "netns-key: {}", self.netns_key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_key_per_line() {
        let f = Features {
            kernel: "6.1.0-50-amd64".into(),
            tc_attach: TcAttach::Clsact,
            netns_key: NetnsKey::Classid,
            btf: true,
        };
        assert_eq!(
            f.to_string(),
            "kernel: 6.1.0-50-amd64\nbtf: yes\ntc-attach: clsact\nnetns-key: filter-classid"
        );
    }
}
