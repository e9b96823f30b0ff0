#!/usr/bin/env bash
# Boots a Debian kernel in a qemu VM over the host's own root file system (read-only, with a
# tmpfs overlay) and runs one command in it, as root, with the cgroup layout asked for.
#
#   run.sh [--cgroup v2|hybrid|v1] [--init systemd] [--mem MiB] [--cpus N]
#          [--timeout SECONDS] [--keep DIR] KERNEL_DIR -- CMD
#
# KERNEL_DIR is what `scripts/debs.sh kernel SUITE` prints. The command runs in the current
# directory (the same path inside the VM); its output is printed here and its exit code is
# this script's. The command may leave files in $VM_OUT; --keep copies them to DIR. The VM
# has no network card: tests use loopback and the namespaces they make. With --init systemd
# the host's systemd is PID 1 (as on a node: its cgroup layout, D-Bus) and runs the command
# as a unit; otherwise guest.sh is PID 1 and sets the layout up itself.
# TCG is the accelerator by default (TETHER_VM_ACCEL=kvm to use /dev/kvm where it can boot
# stock kernels). TETHER_VM_LOGLEVEL=7 shows the kernel's messages on the console (3: errors).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PATH="$PATH:/usr/sbin:/sbin"
CACHE=${TETHER_CACHE:-/var/cache/tether}

cgroup=v2 init=script mem=4096 cpus=$(nproc) timeout=1800
while [ $# -gt 0 ]; do
  case "$1" in
    --cgroup) cgroup=$2; shift 2 ;;
    --init) init=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep) keep=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) kdir=$1; shift ;;
  esac
done
[ -n "${kdir:-}" ] && [ $# -gt 0 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
case "$cgroup" in v2|hybrid|v1) ;; *) echo "run.sh: --cgroup is v2, hybrid or v1, not $cgroup" >&2; exit 2 ;; esac
case "$init" in
  script) init_args="" ;;
  systemd)
    [ -x /lib/systemd/systemd ] || { echo "run.sh: --init systemd: no /lib/systemd/systemd" >&2; exit 2; }
    # v2: everything on cgroup2; hybrid: the controllers on v1, systemd's own tracking on
    # cgroup2 (at unified/); v1: no cgroup2 at all (systemd's legacy layout).
    unified=1 legacy=0
    case "$cgroup" in hybrid) unified=0 ;; v1) unified=0 legacy=1 ;; esac
    init_args="tether.init=systemd systemd.unit=tether-guest.service systemd.show_status=false"
    init_args+=" systemd.log_level=warning systemd.unified_cgroup_hierarchy=$unified"
    init_args+=" systemd.legacy_systemd_cgroup_controller=$legacy" ;;
  *) echo "run.sh: --init is systemd (or left out), not $init" >&2; exit 2 ;;
esac
kdir=$(cd "$kdir" && pwd)

vmlinuz=$(find "$kdir" -name 'vmlinuz*' -type f | head -n1)
[ -n "$vmlinuz" ] || { echo "run.sh: no vmlinuz under $kdir" >&2; exit 1; }
moddir=$(find "$kdir" -maxdepth 4 -path '*/lib/modules/*' -type d -prune | head -n1)
kver=$(basename "$moddir")
work="$CACHE/vm/$kver"
mkdir -p "$work"

# The uncompressed vmlinux (qemu boots it through its PVH note).
extract() {
  local magic=$1 tr_to=$2 cmd=$3 pos
  for pos in $(tr "$magic\n$tr_to" "\n$tr_to=" <"$vmlinuz" | grep -abo "^$tr_to"); do
    pos=${pos%%:*}
    tail -c+"$pos" "$vmlinuz" | $cmd >"$work/vmlinux.tmp" 2>/dev/null || true
    if [ "$(head -c4 "$work/vmlinux.tmp" | tr -d '\0' | tail -c3)" = ELF ]; then
      mv "$work/vmlinux.tmp" "$work/vmlinux"
      return 0
    fi
  done
  return 1
}
if [ ! -s "$work/vmlinux" ]; then
  extract '\3757zXZ\000' abcde 'xz -dcq' || extract '(\265/\375' xxx 'zstd -dcq' ||
    extract '\037\213\010' xy 'gzip -dcq' ||
    { echo "run.sh: cannot unpack $vmlinuz" >&2; rm -f "$work/vmlinux.tmp"; exit 1; }
fi

# The initramfs: static busybox, the init script and the modules it needs, uncompressed.
if [ ! -s "$work/initrd.cpio" ] || [ "$here/init" -nt "$work/initrd.cpio" ]; then
  base=$(dirname "$(dirname "$(dirname "$moddir")")")   # the dir holding lib/modules
  [ -e "$base/lib/modules" ] || base=$(dirname "$base")
  depmod -b "$base" "$kver" 2>/dev/null
  root="$work/initrd"
  rm -rf "$root"
  mkdir -p "$root"/{bin,proc,sys,dev,modules}
  cp /bin/busybox "$root/bin/busybox"
  file "$root/bin/busybox" 2>/dev/null | grep -q static ||
    ldd "$root/bin/busybox" 2>&1 | grep -q 'not a dynamic' ||
    { echo "run.sh: /bin/busybox is not static (install busybox-static)" >&2; exit 1; }
  cp "$here/init" "$root/init"
  : >"$root/modules.order"
  for mod in virtio_pci 9pnet_virtio 9p overlay; do
    # A module built in has nothing to load (an unknown one: the boot says so).
    { modprobe -d "$base" -S "$kver" --show-depends "$mod" 2>/dev/null || true; } |
      awk '$1 == "insmod" { print $2 }'
  done | awk '!seen[$0]++' | while read -r ko; do
    name=$(basename "$ko")
    case "$name" in
      *.xz) xz -dc "$ko" >"$root/modules/${name%.xz}"; name=${name%.xz} ;;
      *.zst) zstd -dcq "$ko" >"$root/modules/${name%.zst}"; name=${name%.zst} ;;
      *) cp "$ko" "$root/modules/$name" ;;
    esac
    echo "$name" >>"$root/modules.order"
  done
  (cd "$root" && find . | cpio -o -H newc --quiet) >"$work/initrd.cpio"
fi

mkdir -p "$CACHE/vm/runs"
out=$(mktemp -d "$CACHE/vm/runs/run.XXXXXX")
trap 'rm -rf "$out"' EXIT
{
  printf 'VM_CGROUP=%q\nVM_INIT=%q\nVM_KVER=%q\nVM_MODULES=%q\nVM_CWD=%q\nVM_OUT=%q\nVM_CMD=%q\nVM_PATH_PREFIX=%q\n' \
    "$cgroup" "$init" "$kver" "$moddir" "$PWD" "$out" "$*" "${TETHER_VM_PATH_PREFIX:-}"
  # Variables the tests read pass through.
  env | grep -E '^(TETHER_|RUST_|CARGO_)' | sed 's/^\([^=]*\)=\(.*\)$/export \1=\x27\2\x27/' || true
} >"$out/vm.env"

# A CPU stuck in the kernel (emulated SMP now and then loses its way while the kernel patches
# its own text, also after boot) panics the VM within seconds (softlockup_panic), which then
# stops (panic=-1, -no-reboot), rather than hanging until the timeout: the console says so.
accel=(-accel tcg,thread=multi -cpu max)
[ "${TETHER_VM_ACCEL:-tcg}" = kvm ] && accel=(-accel kvm -cpu host)
# A boot that dies before the command starts (emulated SMP now and then faults while the
# kernel patches its own text early in boot) is retried, twice at most, and said so.
for attempt in 1 2 3; do
  set +e
  timeout --foreground "$timeout" qemu-system-x86_64 "${accel[@]}" -M pc -m "$mem" -smp "$cpus" \
    -nographic -no-reboot -monitor none -serial stdio -nic none \
    -kernel "$work/vmlinux" -initrd "$work/initrd.cpio" \
    -append "console=ttyS0 panic=-1 softlockup_panic=1 quiet loglevel=${TETHER_VM_LOGLEVEL:-3} rdinit=/init tether.out=$out tether.guest=$here/guest.sh $init_args" \
    -fsdev local,id=root,path=/,security_model=passthrough,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=root,mount_tag=root \
    -fsdev local,id=out,path="$out",security_model=passthrough \
    -device virtio-9p-pci,fsdev=out,mount_tag=out
  qrc=$?
  set -e
  [ -e "$out/started" ] && break
  echo "run.sh: the VM ($kver) stopped before the command started (attempt $attempt of 3)" >&2
done
if [ -n "${keep:-}" ]; then
  mkdir -p "$keep"
  cp -a "$out/." "$keep/"
fi
if [ ! -s "$out/rc" ]; then
  echo "run.sh: the VM ($kver) ended without the command's exit code (qemu: $qrc)" >&2
  exit 125
fi
exit "$(cat "$out/rc")"
