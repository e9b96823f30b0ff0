#!/usr/bin/env bash
# Builds tether's binaries for use into target/release: tetherd and tetherctl, and the
# shim and tether-runc as static executables (static-pie: ASLR kept).
#
# One shim process runs per container (or pod), so its resident memory counts on every
# node. Linked against the shared glibc, an idle shim maps about 1.1 MiB of libc, ld.so and
# libgcc_s pages (the pages the kernel maps around each one it touches); linked statically,
# it carries only the libc code it calls. The flag is given to the final link of each
# binary alone (`cargo rustc`), so nothing else is rebuilt for it.
#
# Extra arguments go to the shim's cargo invocations (e.g. `--features bench`).
#
# A plain `cargo build --release` (or `cargo install`) cannot do this (see shim/build.rs):
# it links the shim dynamically, about 1 MiB more per shim, and warns. A later plain
# `cargo build --release -p tether-shim` relinks the shim here dynamically.
# `containerd-shim-tether-v1 --version` names the linkage of the binary at hand.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p tether-broker --bins
# Tells shim/build.rs that the final link gets crt-static (it cannot see `cargo rustc --`).
export TETHER_SHIM_CRT_STATIC=1
for bin in containerd-shim-tether-v1 tether-runc; do
  cargo rustc --release -p tether-shim --bin "$bin" "$@" -- -C target-feature=+crt-static
done
