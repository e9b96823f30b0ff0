//! What the running kernel gives tether, and so which mechanism each step uses on it: TCX
//! links or clsact filters for the TC programs, netns cookies or filter classids in the keys of
//! interfaces, and whether the cgroup programs see the container's sockets at all.
//! `tetherd --features` prints it and tetherd logs it at start, so a step-down on an older
//! kernel is visible, not silent.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use crate::lsm::BpfLsm;
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
    /// Whether the cgroup programs see the sockets of the container's cgroup.
    pub cgroup_sockets: CgroupSockets,
    /// Whether the kernel runs BPF LSM programs (`bpf` among the active LSMs).
    pub bpf_lsm: BpfLsm,
    /// Where the cgroup2 file system is mounted; None on a pure cgroup v1 node, where no
    /// container can be attached (its programs attach to the container's cgroup v2).
    pub cgroup2: Option<PathBuf>,
}

/// What a node with no cgroup2 mount is told: the programs attach to a container's cgroup v2.
pub const NO_CGROUP2: &str = "no cgroup2 file system is mounted (a pure cgroup v1 node): \
     tether's programs attach to the container's cgroup v2; boot with the pure v2 layout \
     (systemd.unified_cgroup_hierarchy=1) or the hybrid one (cgroup2 at /sys/fs/cgroup/unified)";

/// Where the cgroup2 file system is mounted, found once per process. The two usual places
/// (pure v2 at /sys/fs/cgroup, the hybrid layout's unified/) are checked with statfs(2); only
/// elsewhere is /proc/self/mountinfo read (it grows with every container's rootfs mount, and
/// reading it takes the mount table's lock). A node without one gets [`NO_CGROUP2`].
pub fn cgroup2_mount() -> Result<PathBuf, String> {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(m) = MOUNT.get() {
        return Ok(m.clone());
    }
    let usual = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|p| {
            nix::sys::statfs::statfs(*p)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        })
        .map(PathBuf::from);
    let mount = match usual {
        Some(m) => m,
        None => {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
            cgroup2_mount_of(&mounts).ok_or_else(|| NO_CGROUP2.to_string())?
        }
    };
    Ok(MOUNT.get_or_init(|| mount).clone())
}

/// The cgroup2 mount point in the text of /proc/self/mountinfo.
fn cgroup2_mount_of(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split(' ').nth(4).map(PathBuf::from))?
    })
}

/// Whether a socket is charged to its creator's cgroup v2, which every cgroup program
/// (connect, sendmsg, cgroup_skb) is run by.
///
/// Before 5.15 a socket's `sock_cgroup_data` holds either its cgroup v2 or the net_cls
/// classid and net_prio index of cgroup v1, not both. Once any task joins a cgroup of a
/// mounted v1 net_prio hierarchy (or a net_cls classid is set), the kernel logs "disabling
/// cgroup2 socket matching" and charges every later socket to the root cgroup v2, for good:
/// programs attached to a container's cgroup never run for its sockets. runc joins every
/// mounted v1 hierarchy for every container, so on such a node (the cgroup v1/v2 hybrid
/// layout, on 5.10) this is the state as soon as one container has started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupSockets {
    /// Sockets are charged to their cgroup v2: the cgroup programs see them.
    Matched,
    /// The kernel stops charging sockets to their cgroup v2 (net_prio or net_cls of cgroup v1
    /// is mounted, on a kernel whose `sock_cgroup_data` is one or the other): tether enforces
    /// and counts at the interfaces of the container's network namespace, loopback included.
    Blind,
}

impl CgroupSockets {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupSockets::Matched => "matched",
            CgroupSockets::Blind => "blind (net_prio/net_cls of cgroup v1 on a kernel before 5.15)",
        }
    }

    /// The answer for this kernel and node, probed once per process: the v1 hierarchies come
    /// and go only with a reboot in practice, and the kernel's layout never changes.
    pub fn probe() -> Self {
        static PROBED: OnceLock<CgroupSockets> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let cgroups = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
            Self::decide(
                &cgroups,
                crate::sys::kernel_at_least(5, 15),
                shared_sock_cgroup_data,
            )
        })
    }

    /// `proc_cgroups`: /proc/cgroups; `new_kernel`: 5.15 or later, where the kernel keeps the
    /// cgroup v2 beside the v1 ids; `shared_layout`: whether this kernel's `sock_cgroup_data`
    /// is the shared one (asked only when it matters: it reads the kernel's BTF).
    fn decide(proc_cgroups: &str, new_kernel: bool, shared_layout: impl FnOnce() -> bool) -> Self {
        if new_kernel || !v1_net_hierarchy(proc_cgroups) || !shared_layout() {
            CgroupSockets::Matched
        } else {
            CgroupSockets::Blind
        }
    }
}

/// Whether net_cls or net_prio is mounted as a cgroup v1 hierarchy (a non-zero hierarchy id
/// in /proc/cgroups: `subsys_name hierarchy num_cgroups enabled`).
fn v1_net_hierarchy(proc_cgroups: &str) -> bool {
    proc_cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        matches!(f.as_slice(), [name, hierarchy, _, enabled]
            if (*name == "net_cls" || *name == "net_prio") && *hierarchy != "0" && *enabled == "1")
    })
}

/// Whether the kernel's `struct sock_cgroup_data` is the pre-5.15 one that holds the cgroup
/// v2 or the v1 ids (a single union member), rather than a `cgroup` member of its own (5.15,
/// and kernels with that change backported). Without BTF to tell, the kernel's age decides:
/// it is the shared one.
fn shared_sock_cgroup_data() -> bool {
    use libbpf_rs::btf::{types::Struct, Btf};
    let Ok(btf) = Btf::from_vmlinux() else {
        return true;
    };
    let Some(s) = btf.type_by_name::<Struct<'_>>("sock_cgroup_data") else {
        return true;
    };
    let has_cgroup = s.iter().any(|m| m.name.is_some_and(|n| n == "cgroup"));
    !has_cgroup
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
            cgroup_sockets: CgroupSockets::probe(),
            bpf_lsm: BpfLsm::probe(),
            cgroup2: cgroup2_mount().ok(),
        }
    }
}

impl fmt::Display for Features {
    /// One `key: value` per line, stable for scripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel: {}", self.kernel)?;
        writeln!(f, "btf: {}", if self.btf { "yes" } else { "no" })?;
        writeln!(f, "tc-attach: {}", self.tc_attach.as_str())?;
        writeln!(f, "netns-key: {}", self.netns_key.as_str())?;
        writeln!(f, "cgroup-sockets: {}", self.cgroup_sockets.as_str())?;
        writeln!(f, "bpf-lsm: {}", self.bpf_lsm.as_str())?;
        match &self.cgroup2 {
            Some(m) => write!(f, "cgroup2: {}", m.display()),
            None => write!(
                f,
                "cgroup2: none (pure cgroup v1: containers cannot be attached)"
            ),
        }
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
            cgroup_sockets: CgroupSockets::Matched,
            bpf_lsm: BpfLsm::Inactive,
            cgroup2: Some(PathBuf::from("/sys/fs/cgroup/unified")),
        };
        assert_eq!(
            f.to_string(),
            "kernel: 6.1.0-50-amd64\nbtf: yes\ntc-attach: clsact\nnetns-key: filter-classid\n\
             cgroup-sockets: matched\nbpf-lsm: inactive (add bpf to lsm= to refuse \
             PACKET_QDISC_BYPASS to 32-bit callers)\ncgroup2: /sys/fs/cgroup/unified"
        );
        let v1 = Features { cgroup2: None, ..f };
        assert!(v1
            .to_string()
            .ends_with("\ncgroup2: none (pure cgroup v1: containers cannot be attached)"));
    }

    // /proc/cgroups of Debian 11's 5.10 booted with the hybrid layout, and with pure v2.
    const HYBRID: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
        cpuset\t1\t1\t1\nmemory\t4\t1\t1\nnet_cls\t7\t1\t1\nnet_prio\t7\t1\t1\npids\t10\t1\t1\n";
    const UNIFIED: &str = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
        cpuset\t0\t40\t1\nmemory\t0\t40\t1\nnet_cls\t0\t40\t1\nnet_prio\t0\t40\t1\n";

    #[test]
    fn blind_only_with_a_v1_net_hierarchy_on_the_shared_layout() {
        let never = || -> bool { panic!("the layout is read only when it decides") };
        assert_eq!(
            CgroupSockets::decide(HYBRID, false, || true),
            CgroupSockets::Blind
        );
        // A 5.10 with the change backported, or 5.15 on: matched.
        assert_eq!(
            CgroupSockets::decide(HYBRID, false, || false),
            CgroupSockets::Matched
        );
        assert_eq!(
            CgroupSockets::decide(HYBRID, true, never),
            CgroupSockets::Matched
        );
        // Pure cgroup v2: nothing can switch the matching off.
        assert_eq!(
            CgroupSockets::decide(UNIFIED, false, never),
            CgroupSockets::Matched
        );
        // net_prio mounted but disabled on the command line (cgroup_disable=net_prio).
        let disabled = "net_cls\t0\t1\t1\nnet_prio\t7\t1\t0\n";
        assert_eq!(
            CgroupSockets::decide(disabled, false, never),
            CgroupSockets::Matched
        );
    }

    #[test]
    fn this_kernels_layout_is_read_from_btf() {
        // Every kernel tether runs on from 5.15 has the cgroup member; before, the probe
        // reads what the kernel says.
        if crate::sys::kernel_at_least(5, 15) {
            assert!(!shared_sock_cgroup_data());
        }
    }

    #[test]
    fn the_cgroup2_mount_on_pure_v2_hybrid_and_v1() {
        let pure = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_of(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let hybrid = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      31 25 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_of(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1 = "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  32 25 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(cgroup2_mount_of(v1), None);
    }

    #[test]
    fn this_machine_has_a_cgroup2_mount() {
        let m = cgroup2_mount().unwrap();
        assert!(m.join("cgroup.procs").exists(), "{}", m.display());
    }
}
