#!/usr/bin/env bash
# Narrows a kernel-matrix manifest to what this node can run, on the node itself (in the VM,
# or on the host) before scenarios.sh, and says why in its features file:
#
#   applicable.sh MANIFEST OUTDIR     (writes OUTDIR/manifest.run, appends to OUTDIR/features)
#
# A node on the hybrid or the v1 layout whose kernel has no cgroup v1 memory controller
# (CONFIG_MEMCG_V1 off: Debian's kernels from 6.12 on) cannot set a memory limit on a
# container: runc fails the create ("cannot set memory limit"), under runc.v2 as under
# tether. The scenarios that need one (`stats`, and CRI's stats and pod cgroups, whose pods
# have limits) are left out there; the table shows them as n/a, not as passed.
set -euo pipefail
manifest=$1 out=$2
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] &&
   ! grep -q ' /sys/fs/cgroup/memory cgroup ' /proc/self/mounts; then
  echo "cgroup-v1-memory: none (CONFIG_MEMCG_V1 off: runc sets no memory limit on cgroup v1)" \
    >>"$out/features"
  awk -F'\t' -v OFS='\t' '
    $1 == "stats" { next }
    $1 == "cri" { $2 = $2 " --skip cri::stats:: --skip cri::cgroups::" }
    { print }' "$manifest" >"$out/manifest.run"
else
  cp "$manifest" "$out/manifest.run"
fi
