#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: installs what is missing, builds
# tether, starts a private containerd (own root, state and socket; the system's is left
# alone) with containerd-shim-tether-v1 on its PATH, runs a container under
# io.containerd.tether.v1 and shows what it did and its cgroup metrics.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "tether demo: run as root" >&2; exit 1; }
bash scripts/deps.sh
cargo build --release -p tether-shim

work=$(mktemp -d /tmp/tether-demo.XXXXXX)
cd_pid=""
cleanup() {
  set +e
  if [ -n "$cd_pid" ]; then
    ctr --address "$work/c.sock" -n demo task kill -s KILL demo-sleeper >/dev/null 2>&1
    ctr --address "$work/c.sock" -n demo task rm -f demo-sleeper >/dev/null 2>&1
    ctr --address "$work/c.sock" -n demo c rm demo-sleeper >/dev/null 2>&1
    kill "$cd_pid"; wait "$cd_pid" 2>/dev/null
  fi
  umount -R "$work/root" "$work/state" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/bin" "$work/rootfs/bin" "$work/rootfs"/{proc,sys,dev,etc,tmp}
ln -s "$PWD/target/release/containerd-shim-tether-v1" "$work/bin/"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$work/rootfs/bin/$a"; done
cat > "$work/config.toml" <<CFG
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/c.sock"
[ttrpc]
  address = "$work/c.sock.ttrpc"
CFG
PATH="$work/bin:$PATH" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
cd_pid=$!
ctr_() { ctr --address "$work/c.sock" -n demo "$@"; }
for _ in $(seq 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done

echo "== a container under io.containerd.tether.v1"
set +e
ctr_ run --rm --runtime io.containerd.tether.v1 --rootfs "$work/rootfs" demo-once \
  /bin/sh -c 'echo "hello from $(hostname), pid $$ in its own namespace"; exit 3'
echo "exit code: $? (the container's own)"
set -e

echo "== a long-running one: tasks, processes, exec and metrics"
ctr_ run -d --runtime io.containerd.tether.v1 --rootfs "$work/rootfs" demo-sleeper /bin/sleep 600
ctr_ task ls
ctr_ task exec --exec-id peek demo-sleeper /bin/sh -c 'echo "exec sees: $(ps | wc -l) lines of ps"'
ctr_ task metrics demo-sleeper
shim=$(pgrep -f "containerd-shim-tether-v1 .*-id demo-sleeper" | head -1)
echo "shim pid $shim, resident set: $(awk '/VmRSS/ {print $2, $3}' /proc/"$shim"/status)"
