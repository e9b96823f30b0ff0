#!/usr/bin/env bash
# The kernel matrix: boots each kernel in a qemu VM over this machine's root file system
# (integration/vm/run.sh), with each cgroup layout, runs tether's kernel and end-to-end
# attach scenarios in it, and prints a table kernel x scenario -> pass / FAIL, with the
# mechanisms tether picked on that kernel (TC attach mode, interface keys).
#
#   kernel-matrix.sh [--kernels "bullseye bookworm trixie sid host"] [--cgroups "v2 hybrid v1"]
#                    [--init systemd] [--scenarios "bpf broker deny ..."] [--out DIR]
#
# Kernels are Debian suites (their default kernel, fetched by scripts/debs.sh) or `host`
# (this machine's own kernel and cgroup layout, no VM). Layouts: pure cgroup v2, the v1/v2
# hybrid, and pure v1 (no cgroup2 at all: only the `stats` and `v1` scenarios apply there).
# With --init systemd, systemd is the VMs' PID 1, as on a node (its cgroup layout and D-Bus;
# pods' cgroups are slices and scopes): the `cgroup-driver` and `cri` scenarios compare
# tether with runc there.
# Exit status 0 when every cell passes.
# Results: DIR/matrix.md (the table), DIR/<kernel>-<layout>/{results,features,logs/}.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

kernels="bullseye bookworm trixie sid host"
cgroups="v2 hybrid v1"
init=script
scenarios=""
out=${TETHER_MATRIX_OUT:-$root/target/kernel-matrix}
while [ $# -gt 0 ]; do
  case "$1" in
    --kernels) kernels=$2; shift 2 ;;
    --cgroups) cgroups=$2; shift 2 ;;
    --init) init=$2; shift 2 ;;
    --scenarios) scenarios=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"

# The binaries: built once here (as the workspace test run builds them, so CI builds them
# once), run from the shared file system in every VM.
cargo build --workspace --bins --quiet
declare -A exe
while IFS= read -r line; do
  case "$line" in *'"executable":"/'*) ;; *) continue ;; esac
  grep -q '"profile":{[^}]*"test":true}' <<<"$line" || continue
  path=$(sed 's/.*"executable":"\([^"]*\)".*/\1/' <<<"$line")
  pkg=$(sed 's/.*"package_id":"[^"]*#\([a-z-]*\)@.*/\1/; s/.*"package_id":"[^"]*\/\([a-z-]*\)#.*/\1/' <<<"$line")
  name=$(sed 's/.*"target":{[^}]*"name":"\([^"]*\)".*/\1/' <<<"$line")
  kind=$(sed 's/.*"target":{"kind":\["\([a-z-]*\)".*/\1/' <<<"$line")
  exe["$pkg/$kind/$name"]=$path
done < <(cargo test --workspace --no-run \
           --message-format=json 2>/dev/null)
# A snapshot of the build, hard-linked (no copy): the runs take these binaries even if the
# tree is rebuilt meanwhile (the linker replaces a binary, it does not rewrite it). Test
# binaries find the shim and tether-runc next to their own directory.
target=$(cargo metadata --format-version 1 --no-deps | sed 's/.*"target_directory":"\([^"]*\)".*/\1/')
rm -rf "$out/bin"
cp -al "$target/debug" "$out/bin"
need() {
  local key=$1
  [ -n "${exe[$key]:-}" ] || { echo "kernel-matrix: no test binary $key" >&2; exit 1; }
  echo "$out/bin/${exe[$key]#"$target/debug/"}"
}

# The scenarios: a name, then a test binary with its filter (one line per part).
manifest=$out/manifest
{
  for t in test_run cgroup interfaces pins; do
    printf 'bpf\t%s\n' "$(need tether-bpf/test/$t)"
  done
  printf 'bpf\t%s\n' "$(need tether-bpf/lib/tether_bpf)"
  # The broker's kernel tests before the first container: on 5.10 with the hybrid layout,
  # the first container runc starts joins the net_prio hierarchy, and the kernel then turns
  # cgroup socket matching off for good (cgroup_sk_alloc_disable, until 5.14): the node is
  # blind from then on, and these tests judge sockets in cgroups of their own.
  for t in tetherd_kernel burst_kernel; do
    printf 'broker\t%s\n' "$(need tether-broker/test/$t)"
  done
  for t in judge packet_sockets; do
    printf 'enforce\t%s\n' "$(need tether-bpf/test/$t)"
  done
  e2e=$(need tether-integration/test/e2e)
  printf 'enforce\t%s attach::escape::\n' "$e2e"
  printf 'deny\t%s attach::one_container::first_instruction_is_denied\n' "$e2e"
  printf 'accounting\t%s attach::one_container::short_lived_containers\n' "$e2e"
  printf 'late-iface\t%s attach::one_container::interface_added\n' "$e2e"
  printf 'cni\t%s attach::named_netns::\n' "$e2e"
  printf 'cni\t%s attach::cni::\n' "$e2e"
  printf 'burst\t%s attach::many_containers::burst\n' "$e2e"
  printf 'cleanup\t%s attach::many_containers::leftovers\n' "$e2e"
  printf 'cleanup\t%s fixture::\n' "$e2e"
  printf 'cleanup\t%s attach::create_failures::\n' "$e2e"
  printf 'stats\t%s control::stats_match_the_cgroup::\n' "$e2e"
  printf 'cgroup-driver\t%s cgroup_driver::\n' "$e2e"
  printf 'cri\t%s cri::\n' "$e2e"
  # Pure cgroup v1 only (--cgroups v1): no container can be attached there.
  printf 'v1\t%s --ignored attach::cgroup_v1::\n' "$e2e"
} >"$manifest.all"
# Each layout's manifest: the scenarios asked for (all by default), of those that apply to
# it. A pure cgroup v1 node can attach no container, so it runs `stats` and `v1` alone, and
# only it runs `v1`.
applies() {
  case "$1:$2" in
    v1:stats|v1:v1) return 0 ;;
    v1:*|*:v1) return 1 ;;
  esac
}
manifest_for() {
  local cg=$1 s
  for s in ${scenarios:-$(cut -f1 "$manifest.all" | awk '!seen[$0]++')}; do
    applies "$cg" "$s" && awk -F'\t' -v s="$s" '$1 == s' "$manifest.all"
  done
  return 0
}
host_layout() {
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo v2; else echo hybrid; fi
}
# The columns: every scenario that some row runs.
layouts=$cgroups
case " $kernels " in *" host "*) layouts="$layouts $(host_layout)" ;; esac
for cg in $layouts; do manifest_for "$cg"; done >"$manifest"
columns=$(cut -f1 "$manifest.all" | awk '!seen[$0]++' | while read -r c; do
            if grep -q "^$c"$'\t' "$manifest"; then echo "$c"; fi; done | tr '\n' ' ')

# One boot of a row: its manifest narrowed on the node, then its scenarios; the run's files
# (features, manifest.run, results, logs/) are kept in KEEP, its console in KEEP/console.log.
boot_row() {
  local kdir=$1 cg=$2 manifest=$3 keep=$4
  bash integration/vm/run.sh --cgroup "$cg" --init "$init" --keep "$keep" "$kdir" -- \
    "'$out/bin/tetherd' --features >\"\$VM_OUT/features\";
     bash integration/vm/applicable.sh '$manifest' \"\$VM_OUT\";
     TETHER_TEST_ATTACH_DEADLINE_MS=${TETHER_TEST_ATTACH_DEADLINE_MS:-60000} \\
     TETHER_SCENARIO_TIMEOUT=${TETHER_SCENARIO_TIMEOUT:-900} \\
     bash integration/vm/scenarios.sh \"\$VM_OUT/manifest.run\" \"\$VM_OUT/results\" \"\$VM_OUT/logs\"" \
    >"$keep/console.log" 2>&1 || true
}
# The first scenario of a row's run with a command that did not finish ("" if all did): a
# finished command leaves its "--- NAME: exit" line in logs/NAME.log.
unfinished() {
  local run=$1 name cmd
  declare -A want=()
  while IFS=$'\t' read -r name cmd; do
    [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
    want[$name]=$(( ${want[$name]:-0} + 1 ))
  done <"$run/manifest.run"
  for name in $(cut -f1 "$run/manifest.run" | awk '$0 != "" && !seen[$0]++'); do
    [ "$(grep -c "^--- $name: exit" "$run/logs/$name.log" 2>/dev/null)" = "${want[$name]}" ] ||
      { echo "$name"; return; }
  done
}
# A VM whose kernel stopped under a scenario (a CPU stuck in the emulated kernel: the
# console's soft lockup, panic or oops) is booted again, twice at most, for that scenario and
# the rest; $dir/resumed names each such boot's scenario and the console's words, and the
# table's note says so. A scenario that stops its VM twice is left without a result (the row
# fails). $dir/last is the row's last boot (its logs and console).
resume() {
  local kdir=$1 cg=$2 dir=$3 n cur=$3 stuck why rest
  echo "$dir" >"$dir/last"
  for n in 1 2; do
    [ -f "$cur/manifest.run" ] || return 0
    stuck=$(unfinished "$cur")
    [ -n "$stuck" ] || return 0
    why=$(grep -aho 'BUG: soft lockup[^!]*!\|Kernel panic[^[:cntrl:]]*\|Oops[^[:cntrl:]]*' "$cur/console.log" 2>/dev/null |
            head -n1)
    [ -n "$why" ] || return 0
    if grep -q "^$stuck"$'\t' "$dir/resumed" 2>/dev/null; then return 0; fi
    printf '%s\t%s\n' "$stuck" "$why" >>"$dir/resumed"
    echo "   the VM stopped in \`$stuck\` ($why): booting again for it and the rest" >&2
    rest=$dir/boot$n
    mkdir -p "$rest"
    awk -F'\t' -v s="$stuck" '$1 == s { on = 1 } on' "$cur/manifest.run" >"$rest/manifest"
    boot_row "$kdir" "$cg" "$rest/manifest" "$rest"
    # The scenarios finished before, then the new boot's.
    { awk -F'\t' 'NR == FNR { again[$1] = 1; next } !($1 in again)' "$rest/manifest" "$dir/results"
      cat "$rest/results"; } >"$dir/results.new" 2>/dev/null
    mv "$dir/results.new" "$dir/results"
    cur=$rest
    echo "$cur" >"$dir/last"
  done
}

rows=()
for k in $kernels; do
  if [ "$k" = host ]; then
    dir="$out/host-$(host_layout)"
    rm -rf "$dir"; mkdir -p "$dir"
    echo "== host ($(uname -r), cgroup $(host_layout))" >&2
    "$out/bin/tetherd" --features >"$dir/features"
    manifest_for "$(host_layout)" >"$dir/manifest"
    bash integration/vm/applicable.sh "$dir/manifest" "$dir"
    bash integration/vm/scenarios.sh "$dir/manifest.run" "$dir/results" "$dir/logs" || true
    rows+=("host:$(host_layout):$dir")
    continue
  fi
  kdir=$(bash scripts/debs.sh kernel "$k")
  for cg in $cgroups; do
    dir="$out/$k-$cg"
    [ "$init" = systemd ] && dir="$dir-systemd"
    rm -rf "$dir"; mkdir -p "$dir"
    manifest_for "$cg" >"$dir/manifest"
    echo "== $k ($(basename "$kdir"), cgroup $cg, init $init)" >&2
    start=$(date +%s)
    boot_row "$kdir" "$cg" "$dir/manifest" "$dir"
    resume "$kdir" "$cg" "$dir"
    echo "   $(( $(date +%s) - start )) s" >&2
    label=$cg; [ "$init" = systemd ] && label="$cg, systemd PID 1"
    rows+=("$k:$label:$dir")
  done
done

# The table.
table=$out/matrix.md
{
  printf '| kernel | cgroup | mechanisms |'
  for c in $columns; do printf ' %s |' "$c"; done
  printf '\n|---|---|---|'
  for c in $columns; do printf -- '---|'; done
  printf '\n'
  for r in "${rows[@]}"; do
    IFS=: read -r k cg dir <<<"$r"
    kv=$(awk -F': ' '$1 == "kernel" { print $2 }' "$dir/features" 2>/dev/null)
    mech=$(awk -F': ' '$1 == "tc-attach" { tc = $2 } $1 == "netns-key" { nk = $2 }
                       $1 == "cgroup-sockets" && $2 ~ /^blind/ { cs = "; cgroup sockets blind: deny and counts at TC, lo included" }
                       $1 == "cgroup2" && $2 ~ /^none/ { cs = "; no cgroup2: no container can be attached" }
                       $1 == "cgroup-v1-memory" && $2 ~ /^none/ { mem = "; no v1 memory controller: no memory limits, with runc as with tether" }
                       END { if (tc != "") print "TC " tc ", keys " nk cs mem }' "$dir/features" 2>/dev/null)
    printf '| %s | %s | %s |' "${kv:-$k (did not boot)}" "$cg" "${mech:--}"
    # What the node ran: its own narrowing of the manifest (applicable.sh), if it got as far.
    ran=$dir/manifest.run; [ -f "$ran" ] || ran=$dir/manifest
    for c in $columns; do
      if ! grep -q "^$c"$'\t' "$ran" 2>/dev/null; then printf ' n/a |'; continue; fi
      cell=$(awk -F'\t' -v c="$c" '$1 == c {
               if ($2 == "pass") print "pass (" $3 ")"; else print "**FAIL** (" $4 " of " $3 + $4 ")" }' \
             "$dir/results" 2>/dev/null)
      printf ' %s |' "${cell:-**no result**}"
    done
    printf '\n'
  done
  # The rows whose VM stopped under a scenario and booted again for the rest (resume above).
  for r in "${rows[@]}"; do
    IFS=: read -r k cg dir <<<"$r"
    [ -s "$dir/resumed" ] || continue
    while IFS=$'\t' read -r s why; do
      printf '\n%s, %s: the VM stopped in `%s` (console: "%s") and booted again for it and the rest.\n' \
        "$k" "$cg" "$s" "$why"
    done <"$dir/resumed"
  done
} >"$table"
cat "$table"
# A row that stopped short (the VM hung or died): what its console and its unfinished
# scenario last printed, so that the run's own output says why.
for r in "${rows[@]}"; do
  IFS=: read -r k cg dir <<<"$r"
  last=$(cat "$dir/last" 2>/dev/null || echo "$dir")
  if [ -f "$last/manifest.run" ]; then short=$(unfinished "$last")
  else short=$(head -n1 "$dir/manifest" | cut -f1); fi
  [ -n "$short" ] || continue
  echo "--- $k $cg: no result from \`$short\` on; the console's last lines:"
  tail -n 40 "$last/console.log" 2>/dev/null | sed 's/^/    /'
  for f in "$last/logs/$short.cur" "$last/logs/$short.stuck"; do
    [ -s "$f" ] || continue
    echo "--- $k $cg: ${f##*/}, last lines:"
    tail -n 60 "$f" | sed 's/^/    /'
  done
done
! grep -q 'FAIL\|no result' "$table"
