//! Whether the kernel runs BPF LSM programs, which decides whether tetherd attaches its
//! node-wide LSM program (`tetherd --features`: `bpf-lsm`).
use std::sync::OnceLock;

/// Whether BPF LSM programs run on this kernel: built in (CONFIG_BPF_LSM) is not enough, `bpf`
/// must be among the active LSMs (Debian's default list from 6.1; `lsm=` on the command
/// line elsewhere). With it, tetherd attaches the LSM program that refuses
/// PACKET_QDISC_BYPASS to every caller under a policy, 32-bit ones included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfLsm {
    Active,
    Inactive,
}

impl BpfLsm {
    pub fn as_str(self) -> &'static str {
        match self {
            BpfLsm::Active => "active",
            BpfLsm::Inactive => {
                "inactive (add bpf to lsm= to refuse PACKET_QDISC_BYPASS to 32-bit callers)"
            }
        }
    }

    /// `TETHER_BPF_LSM=off` leaves it out (tests of the step-down on a kernel that has it).
    pub fn probe() -> Self {
        static PROBED: OnceLock<BpfLsm> = OnceLock::new();
        *PROBED.get_or_init(|| {
            if std::env::var("TETHER_BPF_LSM").as_deref() == Ok("off") {
                return BpfLsm::Inactive;
            }
            match active_lsms() {
                Some(list) if list.trim().split(',').any(|l| l == "bpf") => BpfLsm::Active,
                _ => BpfLsm::Inactive,
            }
        })
    }
}

/// The kernel's list of active LSMs, from securityfs: its usual mount, or (where nothing
/// mounted it) a private mount made for the read and removed after it.
fn active_lsms() -> Option<String> {
    const LSM: &str = "/sys/kernel/security/lsm";
    if let Ok(list) = std::fs::read_to_string(LSM) {
        return Some(list);
    }
    let dir = private_dir()?;
    let mounted = nix::mount::mount(
        Some("securityfs"),
        dir.as_path(),
        Some("securityfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    let list = match mounted {
        Ok(()) => {
            let list = std::fs::read_to_string(dir.join("lsm")).ok();
            let _ = nix::mount::umount2(dir.as_path(), nix::mount::MntFlags::MNT_DETACH);
            list
        }
        Err(_) => None,
    };
    let _ = std::fs::remove_dir(&dir);
    list
}

/// A fresh private directory under the system's temporary directory.
fn private_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tether-securityfs-{}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    Some(dir)
}
