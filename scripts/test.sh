#!/usr/bin/env bash
# The test command: installs dependencies, builds, checks formatting and lints, runs the
# unit tests and the end-to-end tests against a private containerd. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tether: the tests drive containerd, runc and cgroups: run as root" >&2
  exit 1
fi
bash scripts/deps.sh

# The builds (debug and release), the daemons' state and the other suites' packages take
# about 10 GiB; a full disk shows up as a compiler or daemon error, so say it first.
avail=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$avail" -lt 10 ]; then
  echo "tether: warning: ${avail} GiB free in $PWD; the build and tests need about 10 GiB" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The benchmark-only instrumentation (naive loader, attach times) is left out of default
# builds: lint it too.
cargo clippy -p tether-shim --all-targets --features bench -- -D warnings
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${TETHER_TEST_THREADS:-2}"
# The churn with faults, alone (it kills its containerd, tetherd and shims, unmounts its
# bpffs, and loads the machine): 100 containers; TETHER_CHURN_CONTAINERS=1000 for the full run.
cargo test -p tether-integration --test e2e -- --ignored attach::churn --nocapture

# The platforms: the end-to-end suite against containerd 1.7 and 2.x (1.6, the system's, ran
# above), the Docker suite against Docker 28 over containerd 2.1 (20.10 ran above), and the
# kernel matrix on Debian 12's own kernel (6.1) with each cgroup layout (pure v1 runs the
# stats and v1 scenarios alone), in qemu VMs (the host's kernel ran above). The whole kernel
# matrix (5.10, 6.1, 6.12, sid's, every layout) takes about 2 hours here:
# `bash scripts/kernel-matrix.sh`.
bash scripts/containerd-matrix.sh trixie sid
bash scripts/docker-matrix.sh sid
bash scripts/kernel-matrix.sh --kernels "${TETHER_CI_KERNELS:-bookworm}" --cgroups "v2 hybrid v1"
# A node whose PID 1 is systemd (pods in slices and scopes, runc's systemd cgroup driver):
# the same kernel, both layouts, the cgroup driver and CRI scenarios beside runc.
bash scripts/kernel-matrix.sh --kernels "${TETHER_CI_KERNELS:-bookworm}" --cgroups "v2 hybrid" \
  --init systemd --scenarios "cgroup-driver cri" --out target/kernel-matrix-systemd
# ... and with containerd 1.7 and 2.x as the node's CRI runtime.
for rel in trixie sid; do
  TETHER_CONTAINERD_DIR=$(bash scripts/debs.sh fetch "$rel" containerd | tail -n1) \
    bash scripts/kernel-matrix.sh --kernels "${TETHER_CI_KERNELS:-bookworm}" --cgroups v2 \
    --init systemd --scenarios cri --out "target/kernel-matrix-systemd-$rel"
done
