#!/bin/bash
# PID 1 of a tether test VM, in the host's root (read-only, under a tmpfs overlay): sets up
# what a Debian host has (proc, sys, the cgroup layout asked for, bpffs, /dev/fd, loopback),
# runs the command of the run, and powers off. Under `run.sh --init systemd` it is a unit
# of systemd's instead, which set most of that up. The command's output goes to the console;
# its exit code to $VM_OUT/rc.
set -u
. "$VM_OUT/vm.env"
export VM_OUT

if [ "${VM_INIT:-script}" = systemd ]; then
  # systemd (PID 1) mounted the API file systems, bpffs and the cgroup layout.
  mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
else
  mount -t proc proc /proc
  mount -t sysfs sys /sys
  mkdir -p /dev/pts /dev/shm /dev/mqueue
  mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
  ln -sf pts/ptmx /dev/ptmx 2>/dev/null || true
  mount -t tmpfs tmpfs /dev/shm
  ln -sfn /proc/self/fd /dev/fd
  ln -sfn /proc/self/fd/0 /dev/stdin
  ln -sfn /proc/self/fd/1 /dev/stdout
  ln -sfn /proc/self/fd/2 /dev/stderr
  mount -t tmpfs tmpfs /run
  # /tmp stays the host's (under the overlay, so writes stay in the VM): a run may pass
  # files there.
  mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
  mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
  mount -t bpf bpf /sys/fs/bpf

  case "$VM_CGROUP" in
    v2)
      mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
      ;;
    hybrid|v1)
      # systemd's hybrid layout: the v1 controllers, the v2 hierarchy at unified/; its
      # legacy layout (v1): the controllers and its named hierarchy, no cgroup2 at all.
      mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
      while read -r name _ _ enabled; do
        [ "$name" = "#subsys_name" ] && continue
        [ "$enabled" = 1 ] || continue
        case "$name" in cpu|cpuacct) dir=cpu,cpuacct; opts=cpu,cpuacct ;;
          net_cls|net_prio) dir=net_cls,net_prio; opts=net_cls,net_prio ;;
          *) dir=$name; opts=$name ;; esac
        [ -d "/sys/fs/cgroup/$dir" ] && continue
        mkdir -p "/sys/fs/cgroup/$dir"
        mount -t cgroup -o "$opts" cgroup "/sys/fs/cgroup/$dir"
      done </proc/cgroups
      ln -sfn cpu,cpuacct /sys/fs/cgroup/cpu
      ln -sfn cpu,cpuacct /sys/fs/cgroup/cpuacct
      mkdir -p /sys/fs/cgroup/systemd
      mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
      if [ "$VM_CGROUP" = hybrid ]; then
        mkdir -p /sys/fs/cgroup/unified
        mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified
      fi
      ;;
  esac
  # One memory cgroup made and removed while the VM is quiet: the kernel switches its kernel
  # memory accounting on (a static key, patched into the code of every slab allocation) with
  # the first, which emulated SMP now and then survives only with both CPUs stuck on the
  # patched instruction (a soft lockup in kmem_cache_alloc) when the first container's runc
  # and another allocator race it. systemd (--init systemd) makes its memory cgroups at boot.
  if [ -d /sys/fs/cgroup/memory ]; then
    warm=/sys/fs/cgroup/memory/tether-vm-warm
  elif [ "$VM_CGROUP" = v2 ] && echo +memory >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
    warm=/sys/fs/cgroup/tether-vm-warm
  fi
  [ -n "${warm:-}" ] && mkdir "$warm" && rmdir "$warm"
fi

# The kernel's own modules (veth, bridge, sch_ingress, ...) in place of the host's.
if [ -d "$VM_MODULES" ]; then
  mkdir -p "/lib/modules/$VM_KVER"
  mount --bind "$VM_MODULES" "/lib/modules/$VM_KVER"
fi
hostname tether-vm
ip link set lo up
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
[ -n "${VM_PATH_PREFIX:-}" ] && export PATH="$VM_PATH_PREFIX:$PATH"
# Temporary directories on a tmpfs, as on a node: the root is an overlay, and overlayfs
# (containerd's snapshotter) cannot have its upper directory on one.
mkdir -p /tmp/tether-vm
mount -t tmpfs -o mode=1777 tmpfs /tmp/tether-vm
export TMPDIR=/tmp/tether-vm
cd "$VM_CWD"
echo "tether-vm: kernel $(uname -r), cgroup $VM_CGROUP, running: $VM_CMD"
touch "$VM_OUT/started"
bash -c "$VM_CMD" </dev/null
echo $? >"$VM_OUT/rc"
sync
echo o >/proc/sysrq-trigger
sleep 10
