#!/usr/bin/env bash
# Runs the Docker suite (tests/docker of tether-integration) once per Docker release: the
# system's (Debian 12: dockerd 20.10 over its managed containerd 1.6, tether through
# tether-runc) and Debian sid's (docker.io + docker-cli 28.x over a private containerd 2.1.x
# from sid: tether-runc, and the shim by name and through daemon.json). The sid packages are
# fetched with scripts/debs.sh (cached under $TETHER_CACHE) and picked through
# TETHER_DOCKER_DIR and TETHER_CONTAINERD_DIR. The shim scenarios, which Docker 20.10 cannot
# run, are run (--include-ignored) only against the newer Docker. Prints a table release x
# result at the end; exits non-zero if any release failed.
#
#   docker-matrix.sh [RELEASE...]   RELEASE: system, sid (default: both)
#
# Extra arguments for the test binary go in $TETHER_MATRIX_TEST_ARGS (e.g. a name filter);
# each run's full output is kept in $TETHER_MATRIX_LOGS (default: a temporary directory).
# Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "docker-matrix.sh: the tests drive dockerd, containerd, runc and cgroups: run as root" >&2
  exit 1
fi

CACHE=${TETHER_CACHE:-/var/cache/tether}
releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(system sid)
logs=${TETHER_MATRIX_LOGS:-$(mktemp -d /tmp/tether-docker-matrix.XXXXXX)}
mkdir -p "$logs"
# shellcheck disable=SC2206
test_args=(${TETHER_MATRIX_TEST_ARGS:-})

# One tree with dockerd (docker.io) and its client (docker-cli, a package of its own from
# Docker 23 on), hard-linked from the unpacked packages; prints its directory.
docker_tree() {
  local suite=$1 dirs d out
  dirs=$(bash scripts/debs.sh fetch "$suite" docker.io docker-cli) || return 1
  out="$CACHE/docker/$suite/$(basename "$(echo "$dirs" | head -n1)")"
  if [ ! -e "$out/.done" ]; then
    rm -rf "$out"
    mkdir -p "$out"
    for d in $dirs; do cp -al "$d/." "$out/"; done
    rm -f "$out/.done"
    touch "$out/.done"
  fi
  echo "$out"
}

# The shim, tether-runc, tetherd, tetherctl and the test binary, built once for all releases.
cargo build --workspace --bins || exit 1
cargo test --workspace --test docker --no-run || exit 1

rows=()
failed=0
for rel in "${releases[@]}"; do
  extra=()
  case "$rel" in
    system) docker_dir="" ; ctrd_dir="" ;;
    sid)
      if ! docker_dir=$(docker_tree sid | tail -n1) ||
         ! ctrd_dir=$(bash scripts/debs.sh fetch sid containerd | tail -n1); then
        rows+=("$rel|-|-|fetch failed|-")
        failed=1
        continue
      fi
      extra=(--include-ignored) ;;
    *) echo "docker-matrix.sh: unknown release $rel (system, sid)" >&2; exit 2 ;;
  esac
  dockerd=${docker_dir:+$docker_dir/usr/sbin/}dockerd
  containerd=${ctrd_dir:+$ctrd_dir/usr/bin/}containerd
  version=$("$dockerd" --version 2>/dev/null | awk '{ print $3 }' | tr -d ,)
  # Docker 20.10 runs the containerd on PATH (the system's) as its managed daemon.
  ctrd_version=$("$containerd" --version 2>/dev/null | awk '{ print $3 }')
  log="$logs/docker-$rel.log"
  echo "=== docker ${version:-?} / containerd ${ctrd_version:-?} ($rel): cargo test -p tether-integration --test docker" >&2
  start=$(date +%s)
  TETHER_DOCKER_DIR=$docker_dir TETHER_CONTAINERD_DIR=$ctrd_dir \
    cargo test --workspace --test docker -- \
    --test-threads="${TETHER_TEST_THREADS:-2}" "${extra[@]}" "${test_args[@]}" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E '^test result:' "$log" | tail -n1 |
            sed -E 's/^test result: ([A-Za-z]+)\. ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 passed, \3 failed, \4 ignored/')
  [ -n "$summary" ] || summary="no result (exit $rc)"
  if [ $rc -ne 0 ]; then
    failed=1
    grep -E '^test .* FAILED$' "$log" | sed 's/^/    /' >&2
  fi
  rows+=("$rel|${version:-?}|${ctrd_version:-?}|$summary|${secs}s")
done

echo
printf '%-8s %-16s %-20s %-38s %s\n' release docker containerd result time
for r in "${rows[@]}"; do
  IFS='|' read -r rel ver cver res t <<<"$r"
  printf '%-8s %-16s %-20s %-38s %s\n' "$rel" "$ver" "$cver" "$res" "$t"
done
echo "logs: $logs"
exit $failed
