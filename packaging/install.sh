#!/usr/bin/env bash
# Installs tether on a Debian/Ubuntu host (or, with --host-root, into a host mounted
# elsewhere, as the Kubernetes installer does):
#   binaries   containerd-shim-tether-v1, tether-runc, tetherd, tetherctl -> /usr/local/bin
#   config     /etc/tether/config.toml (kept if present)
#   systemd    /etc/systemd/system/tetherd.service (enabled when systemd runs)
#   containerd the "tether" runtime handler, if /etc/containerd/config.toml lacks one
#   Podman     /etc/containers/containers.conf.d/tether.conf (`podman run --runtime tether`),
#              if /etc/containers exists (kept if present)
# Usage: install.sh [--bin-dir DIR] [--host-root DIR] [--no-systemd] [--restart-containerd]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_dir="$here/../target/release"
root=""
systemd=1
restart_containerd=0
while (($#)); do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --host-root) root=${2%/}; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    --restart-containerd) restart_containerd=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bins=(containerd-shim-tether-v1 tether-runc tetherd tetherctl)
for b in "${bins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b missing (bash scripts/build-release.sh)" >&2; exit 1; }
done

install -d -m 0755 "$root/usr/local/bin" "$root/etc/tether"
for b in "${bins[@]}"; do
  install -m 0755 "$bin_dir/$b" "$root/usr/local/bin/$b"
done
if [ ! -e "$root/etc/tether/config.toml" ]; then
  install -m 0644 "$here/config.toml" "$root/etc/tether/config.toml"
fi
echo "installed ${bins[*]} to $root/usr/local/bin, config in $root/etc/tether/config.toml"

if ((systemd)); then
  install -d -m 0755 "$root/etc/systemd/system"
  # The packaged unit names /usr/bin (the Debian package); this installer uses /usr/local/bin.
  sed 's|/usr/bin/tetherd|/usr/local/bin/tetherd|' "$here/systemd/tetherd.service" \
    > "$root/etc/systemd/system/tetherd.service"
  chmod 0644 "$root/etc/systemd/system/tetherd.service"
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now tetherd.service
  fi
  echo "systemd unit: $root/etc/systemd/system/tetherd.service"
fi

ctd="$root/etc/containerd/config.toml"
if [ -f "$ctd" ] && ! grep -q 'io.containerd.tether.v1' "$ctd"; then
  if grep -q '^version = 3' "$ctd"; then
    snippet="$here/containerd/config-2.x.toml"
  else
    snippet="$here/containerd/config-1.x.toml"
  fi
  { echo; grep -v '^version' "$snippet"; } >> "$ctd"
  echo "added the tether runtime handler to $ctd"
  if ((restart_containerd)); then
    if [ -n "$root" ]; then
      nsenter -t 1 -m -- systemctl restart containerd
    else
      systemctl restart containerd
    fi
  fi
fi

podman_conf="$root/etc/containers/containers.conf.d/tether.conf"
if [ -d "$root/etc/containers" ] && [ ! -e "$podman_conf" ]; then
  install -d -m 0755 "$(dirname "$podman_conf")"
  install -m 0644 "$here/podman/tether.conf" "$podman_conf"
  echo "Podman runtime \"tether\": $podman_conf"
fi

if [ -n "${NODE_NAME:-}" ] && command -v kubectl >/dev/null; then
  kubectl label node "$NODE_NAME" tether.io/installed=true --overwrite
fi
