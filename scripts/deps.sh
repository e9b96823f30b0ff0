#!/usr/bin/env bash
# Installs what tether needs on Debian 12 (idempotent), for one of two uses:
#   deps.sh demo   what scripts/demo.sh needs: the build and a private containerd
#   deps.sh test   (the default, scripts/test.sh) everything the tests and benchmarks use
set -euo pipefail

PKGS=(containerd runc busybox-static criu iproute2 containernetworking-plugins
      pkg-config ca-certificates procps util-linux
      clang llvm libelf-dev zlib1g-dev linux-libc-dev libc6-dev bpftool iperf3 make
      docker.io tar tmux
      podman qemu-system-x86 kmod cpio xz-utils zstd protobuf-compiler)

# protoc: the CRI tests' client is generated from the Kubernetes protos at build time.
# The kernel matrix (scripts/kernel-matrix.sh): qemu boots other suites' kernels, kmod
# (depmod, modprobe) finds their modules, cpio, xz and zstd build the VM's initramfs.
# The demo's part of it. The build: clang (the eBPF object), make, pkg-config, the libelf
# and zlib headers (libbpf), the kernel's and libc's headers; ca-certificates for cargo's
# downloads. The demo itself: containerd and ctr, runc, a static busybox (the container's
# root filesystem), pgrep (procps), mount and umount (mount).
DEMO_PKGS=(containerd runc busybox-static procps mount ca-certificates
           clang make pkg-config libelf-dev zlib1g-dev linux-libc-dev libc6-dev)

profile=${1:-test}
case "$profile" in
  demo) PKGS=("${DEMO_PKGS[@]}") ;;
  test) ;;
  *) echo "usage: deps.sh [demo|test]" >&2; exit 2 ;;
esac

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "tether: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "tether: cargo (Rust toolchain) is required; install it with rustup" >&2
  exit 1
fi

# The demo mounts a private bpffs; the rest is for the tests.
[ "$profile" = test ] || exit 0

# tetherd mounts bpffs itself; the tests also expect it at the usual place.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# The Debian package of tether is built with cargo-deb (its test builds one).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "tether: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
