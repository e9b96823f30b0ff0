#!/usr/bin/env bash
# Runs the scenarios of a kernel-matrix manifest (inside a VM, or on the host) and writes one
# result line per scenario:  SCENARIO  pass|fail  PASSED  FAILED  SECONDS
#
#   scenarios.sh MANIFEST RESULTS LOGDIR
#
# A manifest line is  SCENARIO  TEST_BINARY  [ARGS...]  (tab-separated name, then the
# command); a scenario with several lines passes when every one of them does. A test binary
# that runs no test at all fails the scenario (a filter that matches nothing proves nothing).
set -uo pipefail
manifest=$1 results=$2 logs=$3
mkdir -p "$logs"
: >"$results"
threads=${TETHER_TEST_THREADS:-2}

# Every process of the container stack, what it waits on, and the kernel stacks of its
# threads.
dump_stuck() {
  echo "=== $(date -u +%FT%TZ): still running"
  ps -eo pid,ppid,stat,etimes,wchan:32,args --sort=pid | grep -E 'containerd|ctr|runc|tether|PID'
  for p in $(pgrep -f 'containerd|ctr |runc|tether'); do
    for t in /proc/"$p"/task/*; do
      echo "--- $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120) task ${t##*/}"
      cat "$t/stack" 2>/dev/null
    done
  done
}

declare -A passed failed status secs
order=()
while IFS=$'\t' read -r name cmd; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  [ -n "${status[$name]:-}" ] || { order+=("$name"); status[$name]=pass; passed[$name]=0; failed[$name]=0; secs[$name]=0; }
  start=$(date +%s)
  limit=${TETHER_SCENARIO_TIMEOUT:-900}
  # A scenario near its limit is stuck: what every process of the stack waits on is kept.
  ( sleep $(( limit > 120 ? limit - 90 : limit / 2 )) && dump_stuck >>"$logs/$name.stuck" 2>&1 ) &
  watchdog=$!
  # Output not captured: a test that hangs in its cleanup still shows why it failed.
  # shellcheck disable=SC2086
  timeout --kill-after=30 "$limit" \
    $cmd --test-threads="$threads" --nocapture >"$logs/$name.cur" 2>&1
  rc=$?
  kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
  cat "$logs/$name.cur" >>"$logs/$name.log"
  secs[$name]=$(( ${secs[$name]} + $(date +%s) - start ))
  p=$(grep -ho '^test result: [A-Za-z]*\. [0-9]* passed; [0-9]* failed' "$logs/$name.cur" | tail -n1 |
      awk '{ print $4 " " $6 }')
  np=${p%% *} nf=${p##* }
  : "${np:=0}" "${nf:=0}"
  passed[$name]=$(( ${passed[$name]} + np ))
  failed[$name]=$(( ${failed[$name]} + nf ))
  if [ "$rc" -ne 0 ] || [ "$np" -eq 0 ]; then status[$name]=fail; fi
  rm -f "$logs/$name.cur"
  echo "--- $name: exit $rc, $np passed, $nf failed ($cmd)" >>"$logs/$name.log"
  # Written after every command, so a VM that hangs later still reports what ran.
  for n in "${order[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "${status[$n]}" "${passed[$n]}" "${failed[$n]}" "${secs[$n]}"
  done >"$results.new" && mv "$results.new" "$results"
done <"$manifest"
