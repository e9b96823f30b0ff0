//! The containerd runtimes the scenarios compare.

use std::fmt;

/// A containerd runtime (shim) under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// containerd's Go runc shim, `containerd-shim-runc-v2` from Debian: the reference.
    RuncV2,
    /// Our shim, `containerd-shim-tether-v1`.
    Tether,
    /// The Rust runc shim from containerd/rust-extensions (`cargo install containerd-runc-shim`).
    /// Only the benchmark uses it, and only when it is on PATH.
    RuncV2Rs,
}

impl Runtime {
    /// The two runtimes every scenario runs against.
    pub const COMPARED: [Runtime; 2] = [Runtime::RuncV2, Runtime::Tether];

    /// The runtime name given to `ctr run --runtime`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "io.containerd.runc.v2",
            Runtime::Tether => "io.containerd.tether.v1",
            Runtime::RuncV2Rs => "io.containerd.runc.v2-rs",
        }
    }

    /// The shim binary containerd derives from [`Runtime::name`] and looks up on its PATH.
    pub fn shim_binary(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "containerd-shim-runc-v2",
            Runtime::Tether => "containerd-shim-tether-v1",
            Runtime::RuncV2Rs => "containerd-shim-runc-v2-rs",
        }
    }

    /// A short tag usable in namespaces and container ids (`[a-z0-9-]`).
    pub fn tag(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "runcv2",
            Runtime::Tether => "tether",
            Runtime::RuncV2Rs => "runcv2rs",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shim_binary_follows_containerd_naming() {
        // containerd 1.6 (runtime/v2/shim/util.go BinaryName): the last two dot-separated
        // parts of the runtime name, joined with '-', prefixed with "containerd-shim-".
        for rt in [Runtime::RuncV2, Runtime::Tether, Runtime::RuncV2Rs] {
            let parts: Vec<&str> = rt.name().split('.').collect();
            let expected = format!(
                "containerd-shim-{}-{}",
                parts[parts.len() - 2],
                parts[parts.len() - 1]
            );
            assert_eq!(rt.shim_binary(), expected);
        }
    }
}
