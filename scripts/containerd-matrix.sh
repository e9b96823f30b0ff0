#!/usr/bin/env bash
# Runs the end-to-end suite (tests/e2e of tether-integration: every scenario under
# io.containerd.runc.v2 and io.containerd.tether.v1 side by side) once per containerd release:
# the system's (Debian 12: 1.6), Debian trixie's (1.7.x) and Debian sid's (2.1.x), the latter
# two fetched with scripts/debs.sh (cached under $TETHER_CACHE) and picked through
# TETHER_CONTAINERD_DIR, then the churn with faults (`attach::churn`, ignored in the suite's
# own run) alone against the same release. Prints a table release x result at the end;
# exits non-zero if any release failed.
#
#   containerd-matrix.sh [RELEASE...]   RELEASE: system, trixie, sid (default: all three)
#
# Extra arguments for the test binary go in $TETHER_MATRIX_TEST_ARGS (e.g. a name filter);
# each run's full output is kept in $TETHER_MATRIX_LOGS (default: a temporary directory).
# Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "containerd-matrix.sh: the tests drive containerd, runc and cgroups: run as root" >&2
  exit 1
fi

releases=("$@")
[ ${#releases[@]} -gt 0 ] || releases=(system trixie sid)
logs=${TETHER_MATRIX_LOGS:-$(mktemp -d /tmp/tether-matrix.XXXXXX)}
mkdir -p "$logs"
# shellcheck disable=SC2206
test_args=(${TETHER_MATRIX_TEST_ARGS:-})

# The shim, tetherd and the test binary, built once for all releases.
cargo build --workspace --bins || exit 1
cargo test --workspace --test e2e --no-run || exit 1

rows=()
failed=0
for rel in "${releases[@]}"; do
  case "$rel" in
    system) dir="" ;;
    trixie|sid)
      if ! dir=$(bash scripts/debs.sh fetch "$rel" containerd | tail -n1); then
        rows+=("$rel|-|fetch failed|-")
        failed=1
        continue
      fi ;;
    *) echo "containerd-matrix.sh: unknown release $rel (system, trixie, sid)" >&2; exit 2 ;;
  esac
  bin=${dir:+$dir/usr/bin/}containerd
  version=$("$bin" --version 2>/dev/null | awk '{ print $3 }')
  log="$logs/e2e-$rel.log"
  echo "=== containerd ${version:-?} ($rel): cargo test -p tether-integration --test e2e" >&2
  start=$(date +%s)
  TETHER_CONTAINERD_DIR=$dir cargo test --workspace --test e2e -- \
    --test-threads="${TETHER_TEST_THREADS:-2}" "${test_args[@]}" >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  summary=$(grep -E '^test result:' "$log" | tail -n1 |
            sed -E 's/^test result: ([A-Za-z]+)\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2 passed, \3 failed/')
  [ -n "$summary" ] || summary="no result (exit $rc)"
  if [ $rc -ne 0 ]; then
    failed=1
    grep -E '^test .* FAILED$' "$log" | sed 's/^/    /' >&2
  fi
  # The churn with faults, alone (it kills its daemons), unless a filter narrows the run.
  churn=-
  if [ ${#test_args[@]} -eq 0 ]; then
    if TETHER_CONTAINERD_DIR=$dir cargo test --workspace --test e2e -- --ignored \
         attach::churn --nocapture >"$logs/churn-$rel.log" 2>&1; then
      churn=pass
    else
      churn=FAIL
      failed=1
      grep -E '^(churn|Error|---)' "$logs/churn-$rel.log" | sed 's/^/    /' >&2
    fi
  fi
  rows+=("$rel|${version:-?}|$summary|${secs}s|$churn")
done

echo
printf '%-8s %-24s %-28s %-7s %s\n' release containerd result time churn
for r in "${rows[@]}"; do
  IFS='|' read -r rel ver res t churn <<<"$r"
  printf '%-8s %-24s %-28s %-7s %s\n' "$rel" "$ver" "$res" "$t" "${churn:--}"
done
echo "logs: $logs"
exit $failed
