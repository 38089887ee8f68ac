#!/usr/bin/env bash
# benches/reconnect.sh — what a ZooKeeper reconnect costs the requests a gateway is serving:
# a ZooKeeper-fed gateway (examples/gateway --zk, one worker) with RECONNECT_APPS apps
# registered, at a fixed RATE over 32 connections (examples/open_loop, latency from when each
# request was released), its ZooKeeper connection cut (`ss -K`) halfway through a run of
# RUN_SECONDS. The client reconnects at once and the discovery reads the whole tree again (every
# app's spec and instances), then resets the route table. Each cut run follows an uncut run of
# the same gateway as its control.
#
# With BASELINE_BIN set, the two builds take turns (baseline, gateway, gateway, baseline, ...),
# each started afresh for its turn, so that both see the same machine.
#
# Prints one line per run (build, cut or not, open_loop's percentiles and max in ms) and the
# medians of each build's cut runs.
#
# Usage: benches/reconnect.sh [--quick] [-h|--help]
# Environment:
#   CUTS=4                 turns per build (--quick: 1)
#   RECONNECT_APPS=10000   apps registered (and read again at each reconnect)
#   RATE=10000 RUN_SECONDS=6   requests per second, seconds per run
#   GATEWAY_BIN=path       the gateway (skips cargo build); BASELINE_BIN=path another build
#   ROUTE_CHURN_BIN, OPEN_LOOP_BIN   the seeding tool and the load (skip cargo build)
#   KEEP=1                 keep the temp dir (logs, raw open_loop output)
# Needs nginx, curl, ss (iproute2), and ZooKeeper (scripts/install-deps.sh installs them);
# cutting a connection with `ss -K` needs root and a kernel with socket destroy.
set -euo pipefail

BENCH_NAME=reconnect
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

if $QUICK; then CUTS=${CUTS:-1}; else CUTS=${CUTS:-4}; fi
RECONNECT_APPS=${RECONNECT_APPS:-10000}
RATE=${RATE:-10000}
SECONDS_PER_RUN=${RUN_SECONDS:-6}
for v in CUTS RECONNECT_APPS RATE SECONDS_PER_RUN; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v takes a positive integer, got '${!v}'"
done
((SECONDS_PER_RUN >= 2)) || die "RUN_SECONDS takes at least 2 (the cut comes halfway)"

require_tools nginx curl ss
"$ROOT/scripts/zk.sh" classpath >/dev/null 2>&1 || require_tools java
build_gateway
turn_order "$CUTS"
build_churn_tools

make_workdir caas-reconnect
cleanup() {
  kill_and_reap 10 "${PIDS[@]}"
  "$ROOT/scripts/zk.sh" stop "$WORK/zk" >/dev/null 2>&1 || true
  finish_workdir "logs and raw open_loop output"
}
on_exit cleanup

free_port BACKEND_PORT
write_backend_conf "" "" ""
start_backend
start_zk
log "registering $RECONNECT_APPS apps in ZooKeeper"
"$ROUTE_CHURN_BIN" seed --zk "$ZK" --apps "$RECONNECT_APPS" --backend "127.0.0.1:$BACKEND_PORT" \
  --chroot /caas 2>>"$WORK/seed.log" || die "seeding failed: $(tail -n 3 "$WORK/seed.log")"

RESULTS="$WORK/results.txt" # build cut p50 p99 p999 max
: >"$RESULTS"
n=0
for build in "${ORDER[@]}"; do
  n=$((n + 1))
  bin=$GATEWAY_BIN
  [[ $build == baseline ]] && bin=$BASELINE_BIN
  start_zk_gateway "gw$n" "$bin" "$RECONNECT_APPS"
  for cut in no yes; do
    out="$WORK/run$n.$cut.txt"
    "$OPEN_LOOP_BIN" --addr "127.0.0.1:$GW_PORT" --host "$HOST_HEADER" --rate "$RATE" \
      --conns 32 --seconds "$SECONDS_PER_RUN" >"$out" 2>&1 &
    load=$!
    sleep "$((SECONDS_PER_RUN / 2))"
    if [[ $cut == yes ]]; then
      # Every connection to ZooKeeper's port is the gateway's: the seeding tool has exited.
      ss -K dst 127.0.0.1 dport = ":$ZK_PORT" >"$WORK/ss.$n.txt" 2>&1 || true
      grep -q ":$ZK_PORT" "$WORK/ss.$n.txt" || die "ss -K cut no connection to ZooKeeper (needs root and socket destroy): $(cat "$WORK/ss.$n.txt")"
    fi
    wait "$load" || die "open_loop failed: $(tail -n 5 "$out")"
    # "requests N rate R p50 P p90 P p99 P p999 P max P ..."
    line=$(awk -v b="$build" -v c="$cut" '$1 == "requests" {print b, c, $6, $10, $12, $14}' "$out")
    [[ -n $line ]] || die "open_loop printed no result: $(tail -n 3 "$out")"
    echo "$line" >>"$RESULTS"
    read -r _ _ p50 p99 p999 max <<<"$line"
    log "$build, cut $cut: p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms, max $max ms"
  done
  kill_and_reap 10 "$(pid_of "gw$n")"
done

echo "# ZooKeeper reconnect under load"
echo
report_machine
echo "- gateway: $GATEWAY_LABEL${BASELINE_BIN:+; baseline: $BASELINE_BIN}; one worker, fed by ZooKeeper (standalone, loopback)"
echo "- $RECONNECT_APPS apps registered; open_loop at $RATE req/s over 32 connections on $HOST_HEADER, $SECONDS_PER_RUN s per run; the gateway's ZooKeeper connection cut halfway (ss -K)"
echo
echo "| build | cut | p50 ms | p99 ms | p99.9 ms | max ms |"
echo "|---|---|---:|---:|---:|---:|"
markdown_rows "$RESULTS"
echo
for build in "${BUILDS[@]}"; do
  for cut in no yes; do
    echo "- $build, cut $cut: median p99 $(field_where "$RESULTS" "$build" "$cut" 4 | median) ms, median max $(field_where "$RESULTS" "$build" "$cut" 6 | median) ms ($CUTS cut turns)"
  done
done
STATUS=0
