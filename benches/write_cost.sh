#!/usr/bin/env bash
# benches/write_cost.sh — what one registry write costs a ZooKeeper-fed gateway with no load:
# the CPU (user + system) the gateway and ZooKeeper spend per write while
# examples/route_churn changes routes at CHURN_RATE writes a second among WRITE_APPS apps
# (spec changes, then registrations and deregistrations), against the same writes with no
# gateway watching (ZooKeeper's own cost of a write).
#
# With BASELINE_BIN set, the two builds take turns (baseline, gateway, gateway, baseline, ...),
# each started afresh for its turn and watching alone, so that both see the same machine.
# Clock ticks are 10 ms: at 100 writes a second for 15 s, one tick is 6.7 µs a write.
#
# Usage: benches/write_cost.sh [--quick] [-h|--help]
# Environment:
#   TURNS=4                turns per build (--quick: 1)
#   WRITE_APPS=10000       apps registered
#   CHURN_RATE=100 WRITE_SECONDS=15   writes per second, seconds per measurement (--quick: 5)
#   WRITE_MODES="specs registrations"   what the writes change
#   GATEWAY_BIN=path       the gateway (skips cargo build); BASELINE_BIN=path another build
#   ROUTE_CHURN_BIN, OPEN_LOOP_BIN   the writer (skip cargo build)
#   KEEP=1                 keep the temp dir (logs)
# Needs nginx, curl and ZooKeeper (scripts/install-deps.sh installs them).
set -euo pipefail

BENCH_NAME=write_cost
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

if $QUICK; then
  TURNS=${TURNS:-1} WRITE_SECONDS=${WRITE_SECONDS:-5}
else
  TURNS=${TURNS:-4} WRITE_SECONDS=${WRITE_SECONDS:-15}
fi
WRITE_APPS=${WRITE_APPS:-10000}
CHURN_RATE=${CHURN_RATE:-100}
read -r -a WRITE_MODES <<<"${WRITE_MODES:-specs registrations}"
for v in TURNS WRITE_SECONDS WRITE_APPS CHURN_RATE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v takes a positive integer, got '${!v}'"
done
((${#WRITE_MODES[@]} > 0)) || die "WRITE_MODES is empty"
for mode in "${WRITE_MODES[@]}"; do
  [[ $mode == specs || $mode == registrations ]] ||
    die "WRITE_MODES: unknown mode '$mode' (specs, registrations)"
done

require_tools nginx curl
"$ROOT/scripts/zk.sh" classpath >/dev/null 2>&1 || require_tools java
build_gateway
turn_order "$TURNS" none
build_churn_tools

make_workdir caas-write-cost
cleanup() {
  kill_and_reap 10 "${PIDS[@]}"
  "$ROOT/scripts/zk.sh" stop "$WORK/zk" >/dev/null 2>&1 || true
  finish_workdir "logs"
}
on_exit cleanup

free_port BACKEND_PORT
write_backend_conf "" "" ""
start_backend
start_zk
ZK_PID=$(cat "$WORK/zk/zk.pid")
churn_args=(--zk "$ZK" --apps "$WRITE_APPS" --backend "127.0.0.1:$BACKEND_PORT")
log "registering $WRITE_APPS apps in ZooKeeper"
"$ROUTE_CHURN_BIN" seed "${churn_args[@]}" --chroot /caas 2>>"$WORK/route_churn.log" ||
  die "seeding failed: $(tail -n 3 "$WORK/route_churn.log")"
# Warm-up, not measured: ZooKeeper has just taken the seed writes (its JIT is still busy).
for mode in "${WRITE_MODES[@]}"; do
  "$ROUTE_CHURN_BIN" churn "${churn_args[@]}" --rate "$CHURN_RATE" --mode "$mode" --seconds 5 \
    >/dev/null 2>>"$WORK/route_churn.log" || die "the writer failed: $(tail -n 3 "$WORK/route_churn.log")"
done

RESULTS="$WORK/results.txt" # build mode writes gw_us_per_write zk_us_per_write steal_pct
: >"$RESULTS"
n=0
for build in "${ORDER[@]}"; do
  n=$((n + 1))
  gw_pid=""
  if [[ $build != none ]]; then
    bin=$GATEWAY_BIN
    [[ $build == baseline ]] && bin=$BASELINE_BIN
    start_zk_gateway "gw$n" "$bin" "$WRITE_APPS"
    gw_pid=$(pid_of "gw$n")
    sleep 2 # the full read's garbage freed, its threads settled
  fi
  for mode in "${WRITE_MODES[@]}"; do
    out="$WORK/churn$n.$mode.txt"
    gw0=$([[ -n $gw_pid ]] && cpu_ticks "$gw_pid" || echo 0)
    zk0=$(cpu_ticks "$ZK_PID")
    machine0=$(machine_ticks)
    "$ROUTE_CHURN_BIN" churn "${churn_args[@]}" --rate "$CHURN_RATE" --mode "$mode" --seconds "$WRITE_SECONDS" \
      >"$out" 2>>"$WORK/route_churn.log" || die "the writer failed: $(tail -n 3 "$WORK/route_churn.log")"
    machine1=$(machine_ticks)
    gw1=$([[ -n $gw_pid ]] && cpu_ticks "$gw_pid" || echo 0)
    zk1=$(cpu_ticks "$ZK_PID")
    # "route_churn: N writes in S s = R/s, slowest M ms"
    writes=$(awk '{print $2}' "$out")
    [[ $writes =~ ^[1-9][0-9]*$ ]] || die "the writer reported no writes: $(cat "$out")"
    line=$(awk -v b="$build" -v m="$mode" -v w="$writes" -v g=$((gw1 - gw0)) -v z=$((zk1 - zk0)) \
      -v hz="$CLK_TCK" -v steal="$(steal_percent "$machine0" "$machine1")" \
      'BEGIN {printf "%s %s %d %.0f %.0f %s\n", b, m, w, g / hz / w * 1e6, z / hz / w * 1e6, steal}')
    echo "$line" >>"$RESULTS"
    read -r _ _ _ gw_us zk_us steal <<<"$line"
    log "$build, $mode: $writes writes, gateway $gw_us µs a write, ZooKeeper $zk_us µs a write, steal $steal %"
  done
  [[ -n $gw_pid ]] && kill_and_reap 10 "$gw_pid"
done

echo "# CPU per registry write, no load"
echo
report_machine
echo "- gateway: $GATEWAY_LABEL${BASELINE_BIN:+; baseline: $BASELINE_BIN}; one worker, fed by ZooKeeper (standalone, loopback), watching alone; none: no gateway"
echo "- $WRITE_APPS apps registered; route_churn at $CHURN_RATE writes/s for $WRITE_SECONDS s per measurement; CPU = user + system, $CLK_TCK ticks a second"
echo
echo "| build | writes | count | gateway µs/write | ZooKeeper µs/write | steal % |"
echo "|---|---|---:|---:|---:|---:|"
markdown_rows "$RESULTS"
echo
for mode in "${WRITE_MODES[@]}"; do
  for build in none "${BUILDS[@]}"; do
    echo "- $mode, $build: median gateway $(field_where "$RESULTS" "$build" "$mode" 4 | median) µs a write, median ZooKeeper $(field_where "$RESULTS" "$build" "$mode" 5 | median) µs a write ($TURNS turns)"
  done
done
STATUS=0
