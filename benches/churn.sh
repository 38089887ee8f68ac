#!/usr/bin/env bash
# benches/churn.sh — the gateway's latency while its route table changes: a ZooKeeper-fed
# gateway (examples/gateway --zk, one worker) with CHURN_APPS apps registered, loaded by wrk
# on one of them (`hello`, the nginx backend's "ok\n"), with and without a writer changing
# routes CHURN_RATE times a second (examples/route_churn):
#
#   none           no writes: the baseline
#   specs          app specs rewritten (`/apps/app{k}`): each write is one app's route change
#   registrations  instances of `app{k}` registered and deregistered, one per write
#
# The three run in rotating order each round, and the script prints the medians over rounds
# (requests/s, p50, p99) with each p99 as a ratio to the baseline's p99 of the same run, and
# the write rate the writer kept. Target: the p99 with churn within 5 % of the p99 without.
# Compare ratios in one run only: on a small machine wrk, the gateway, the backend, ZooKeeper
# and the writer share the CPUs. benches/compare.sh runs this at its end (CHURN_APPS=0 there
# skips it).
#
# Usage: benches/churn.sh [--quick] [-h|--help]
# Environment:
#   ROUNDS=3 DURATION=5   rounds, seconds per wrk run (--quick: 1 round of 3 s)
#   CHURN_APPS=10000      apps in the route table
#   CHURN_RATE=100        route changes per second
#   CHURN_CONNS=32        wrk connections
#   GATEWAY_BIN=path      the gateway binary (skips cargo build); ROUTE_CHURN_BIN likewise
#   KEEP=1                keep the temp dir (logs, raw wrk output)
# Needs nginx, wrk, curl, and ZooKeeper (scripts/install-deps.sh installs them).
set -euo pipefail

BENCH_NAME=churn
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

if $QUICK; then
  ROUNDS=${ROUNDS:-1}
  DURATION=${DURATION:-3}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-5}
fi
CHURN_APPS=${CHURN_APPS:-10000}
CHURN_RATE=${CHURN_RATE:-100}
CHURN_CONNS=${CHURN_CONNS:-32}
KEEP=${KEEP:-0}
NGINX_WORKER_CONNS=4096
for v in ROUNDS DURATION CHURN_APPS CHURN_RATE CHURN_CONNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v takes a positive integer, got '${!v}'"
done

require_tools nginx wrk curl
"$ROOT/scripts/zk.sh" classpath >/dev/null 2>&1 || require_tools java

build_gateway
if [[ -z ${ROUTE_CHURN_BIN:-} ]]; then
  log "building the writer: cargo build --release --example route_churn"
  (cd "$ROOT" && cargo build --release --example route_churn) ||
    die "cargo build --release --example route_churn failed"
  ROUTE_CHURN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/route_churn"
fi
[[ -x $ROUTE_CHURN_BIN ]] || die "ROUTE_CHURN_BIN=$ROUTE_CHURN_BIN is not an executable file"

make_workdir caas-churn
cleanup() {
  kill_and_reap 10 "${PIDS[@]}"
  "$ROOT/scripts/zk.sh" stop "$WORK/zk" >/dev/null 2>&1 || true
  finish_workdir "logs and raw wrk output"
}
on_exit cleanup

free_port BACKEND_PORT
free_port ZK_PORT
free_port GW_PORT
write_backend_conf "" "" ""
start_backend
"$ROOT/scripts/zk.sh" start "$WORK/zk" "$ZK_PORT" >"$WORK/zk-start.log" 2>&1 ||
  die "ZooKeeper did not start: $(tail -n 5 "$WORK/zk-start.log")"
ZK="127.0.0.1:$ZK_PORT"
churn_args=(--zk "$ZK" --apps "$CHURN_APPS" --backend "127.0.0.1:$BACKEND_PORT")
log "registering $CHURN_APPS apps in ZooKeeper"
"$ROUTE_CHURN_BIN" seed "${churn_args[@]}" 2>>"$WORK/route_churn.log" ||
  die "seeding failed: $(tail -n 3 "$WORK/route_churn.log")"

write_gateway_toml gateway "$GW_PORT" "" ""
start gateway "$GATEWAY_BIN" --config "$WORK/gateway.toml" --zk "$ZK"
wait_http gateway "$GW_PORT"
# Routable once the whole tree is read: the last app and hello both answer.
for _ in $(seq 1 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: app$((CHURN_APPS - 1)).caas.local" \
    "http://127.0.0.1:$GW_PORT/" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done
[[ $code == 200 ]] || die "the gateway did not route app$((CHURN_APPS - 1)) (logs in $WORK)"
check_ok gateway "http://127.0.0.1:$GW_PORT/"

MODES=(none specs registrations)
RESULTS="$WORK/results.txt" # round mode rps p50 p99 status sock writes_per_s
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((i = 0; i < ${#MODES[@]}; i++)); do
    mode=${MODES[$(((i + round - 1) % ${#MODES[@]}))]}
    out="$WORK/wrk.r$round.$mode.txt"
    log "round $round, $mode"
    writer=""
    if [[ $mode != none ]]; then
      "$ROUTE_CHURN_BIN" churn "${churn_args[@]}" --mode "$mode" --rate "$CHURN_RATE" \
        --seconds "$((DURATION + 1))" >"$WORK/churn.r$round.$mode.txt" 2>>"$WORK/route_churn.log" &
      writer=$!
      sleep 0.5 # the writer connected and writing before the load starts
    fi
    wrk -t1 -c"$CHURN_CONNS" -d"${DURATION}s" --latency -H "Host: $HOST_HEADER" \
      "http://127.0.0.1:$GW_PORT/" >"$out" 2>&1 || die "wrk failed: $(tail -n 5 "$out")"
    rate=0
    if [[ -n $writer ]]; then
      wait "$writer" || die "the writer failed ($mode): $(tail -n 3 "$WORK/route_churn.log")"
      rate=$(awk '{for (i = 1; i <= NF; i++) if ($i == "=") {sub(/\/s,?/, "", $(i + 1)); print $(i + 1)}}' \
        "$WORK/churn.r$round.$mode.txt")
    fi
    echo "$round $mode $(parse_wrk "$out") ${rate:-0}" >>"$RESULTS"
  done
done

median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
col() { awk -v m="$1" -v c="$2" '$2 == m {print $c}' "$RESULTS"; }

echo "# Route churn: a ZooKeeper-fed gateway under load while its routes change"
echo
report_machine
echo "- gateway: $GATEWAY_LABEL, one worker, fed by ZooKeeper 3.8 (standalone, loopback)"
echo "- $CHURN_APPS apps registered (app0..app$((CHURN_APPS - 1)) and hello); wrk -t1 -c$CHURN_CONNS on hello.caas.local"
echo "- churn: $CHURN_RATE writes/s by examples/route_churn while wrk runs; $ROUNDS rounds × $DURATION s, modes in rotating order"
echo
echo "| churn | writes/s kept | req/s | p50 ms | p99 ms | p99 × none | non-2xx/3xx | socket errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
base_p99=$(col none 5 | median)
for mode in "${MODES[@]}"; do
  awk -v m="$mode" -v w="$(col "$mode" 8 | median)" -v r="$(col "$mode" 3 | median)" \
    -v p50="$(col "$mode" 4 | median)" -v p99="$(col "$mode" 5 | median)" -v b="$base_p99" \
    -v st="$(col "$mode" 6 | awk '{s += $1} END {print s + 0}')" \
    -v so="$(col "$mode" 7 | awk '{s += $1} END {print s + 0}')" 'BEGIN {
      printf "| %s | %s | %.0f | %.3f | %.3f | %.2f× | %d | %d |\n",
        m, (m == "none" ? "—" : sprintf("%.0f", w)), r, p50, p99, (b > 0 ? p99 / b : 0), st, so
    }'
done
echo
echo "Medians over rounds. Per round (p99 ms): $(awk '{printf "%s%s r%s %.3f", (NR > 1 ? ", " : ""), $2, $1, $5}' "$RESULTS")"
STATUS=0
