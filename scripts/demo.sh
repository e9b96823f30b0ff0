#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: installs what the demo needs and is
# missing (`scripts/deps.sh demo`: nothing only the tests use), builds tether
# (`scripts/build-release.sh`), starts a private containerd (own root, state and socket;
# the system's is left alone) with containerd-shim-tether-v1 on its PATH, runs a container
# under io.containerd.tether.v1 whose traffic is counted and whose denied connection
# fails, and shows its per-container statistics (tetherctl) and cgroup metrics. Pins go to
# a private bpffs and tetherd listens on a private socket: nothing of the system's is
# touched.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "tether demo: run as root" >&2; exit 1; }
bash scripts/deps.sh demo
bash scripts/build-release.sh

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
  tpid=$(cat "$work/tetherd/tetherd.lock" 2>/dev/null)
  [ -n "$tpid" ] && kill "$tpid" 2>/dev/null
  umount "$work/bpffs" 2>/dev/null
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
mkdir -p "$work/bpffs" && mount -t bpf bpf "$work/bpffs"
cat > "$work/tether.toml" <<CFG
[broker]
socket = "$work/tetherd/tetherd.sock"
pin_root = "$work/bpffs/tether"
audit_log = "$work/tetherd/audit.jsonl"
CFG
TETHER_CONFIG="$work/tether.toml" PATH="$work/bin:$PATH" \
  containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
cd_pid=$!
ctr_() { ctr --address "$work/c.sock" -n demo "$@"; }
tetherctl_() { ./target/release/tetherctl --socket "$work/tetherd/tetherd.sock" "$@"; }
for _ in $(seq 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done

echo "== a container under io.containerd.tether.v1"
set +e
ctr_ run --rm --runtime io.containerd.tether.v1 --rootfs "$work/rootfs" demo-once \
  /bin/sh -c 'echo "hello from $(hostname), pid $$ in its own namespace"; exit 3'
echo "exit code: $? (the container's own)"
set -e

echo "== its first instruction connects to a denied address (tether.io/egress-deny=127.0.0.2)"
set +e
ctr_ run --rm --runtime io.containerd.tether.v1 --annotation tether.io/egress-deny=127.0.0.2 \
  --rootfs "$work/rootfs" demo-denied /bin/nc 127.0.0.2 80
echo "exit code: $? (the programs were in place before the first instruction)"
set -e

echo "== a long-running one sends traffic (20 connection attempts), then hits the deny rule"
ctr_ run -d --runtime io.containerd.tether.v1 --annotation tether.io/egress-deny=127.0.0.2 \
  --rootfs "$work/rootfs" demo-sleeper \
  /bin/sh -c 'for i in $(seq 20); do nc 127.0.0.3 80 2>/dev/null; done; nc 127.0.0.2 80; exec sleep 600'
for _ in $(seq 50); do
  tetherctl_ --json stats demo-sleeper 2>/dev/null | grep -q '"denials":1' && break
  sleep 0.1
done
echo "-- tetherctl status"; tetherctl_ status
echo "-- tetherctl ps -v"; tetherctl_ ps -v
echo "-- tetherctl stats"; tetherctl_ stats
echo "-- tetherctl events --no-follow"; tetherctl_ events --no-follow
echo "== tasks, processes, exec and metrics"
ctr_ task ls
ctr_ task exec --exec-id peek demo-sleeper /bin/sh -c 'echo "exec sees: $(ps | wc -l) lines of ps"'
ctr_ task metrics demo-sleeper
shim=$(pgrep -f "containerd-shim-tether-v1 .*-id demo-sleeper" | head -1)
echo "shim pid $shim, resident set: $(awk '/VmRSS/ {print $2, $3}' /proc/"$shim"/status)"
