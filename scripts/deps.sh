#!/usr/bin/env bash
# Installs what tether's build, tests and demo need on Debian 12 (idempotent).
set -euo pipefail

PKGS=(containerd runc busybox-static criu iproute2 containernetworking-plugins
      pkg-config ca-certificates procps util-linux
      clang llvm libelf-dev zlib1g-dev linux-libc-dev libc6-dev bpftool iperf3 make
      docker.io tar tmux)

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

# tetherd mounts bpffs itself; the tests also expect it at the usual place.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi

# The Debian package of tether is built with cargo-deb (its test builds one).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "tether: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
