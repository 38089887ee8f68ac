#!/usr/bin/env bash
# benches/cpu_per_request.sh — CPU cost per proxied request as user-space instructions, counted
# by valgrind's callgrind: for machines without perf's hardware counters (most VMs), and a
# number that does not move with other load on the machine.
#
# Each proxy (the caas gateway, nginx as a reverse proxy, HAProxy; one worker / thread each,
# the configs of compare.sh, from benches/lib.sh) runs under `valgrind --tool=callgrind`
# twice: once serving BASE_REQUESTS and once REQUESTS requests (`GET /`, or `GET /SIZE`, with
# `Host: hello.caas.local` over CONNS keep-alive connections, sent by benches/fixed_load.py),
# then stops cleanly (gateway SIGTERM, nginx SIGQUIT, HAProxy SIGUSR1) so callgrind writes its
# totals. The backend (nginx, one worker, `return 200 "ok\n"` at /, a file of SIZE bytes by
# sendfile at /SIZE, as in compare.sh) runs natively. The script
# prints a markdown table of
#   instructions per request = (Ir(REQUESTS) − Ir(BASE_REQUESTS)) / (REQUESTS − BASE_REQUESTS)
# so startup, shutdown and opening the connections cancel out. User space only: callgrind does
# not see the kernel, so the syscalls and TCP work behind each request are not in the count
# (a proxy that makes fewer syscalls per request gets no credit for it here).
#
# Usage: benches/cpu_per_request.sh [--quick] [-h|--help]
#   --quick              REQUESTS=2000 BASE_REQUESTS=200 (a smoke test)
# Environment:
#   REQUESTS=20000       requests in the measured run
#   BASE_REQUESTS=2000   requests in the baseline run (0: startup + shutdown only)
#   CONNS=32             keep-alive client connections
#   SIZE=0               response body: 0 is "ok\n" at /; N, Nk or Nm bytes a file at /SIZE
#   TARGETS="gateway nginx-proxy haproxy"
#   GATEWAY_BIN=path     gateway binary to run as `$GATEWAY_BIN --config FILE` (skips cargo build)
#   KEEP=1               keep the temp dir (configs, logs, callgrind.out files) even on success
# Needs nginx, haproxy, curl, valgrind and python3. Under callgrind a proxy runs some 50×
# slower, on one CPU: --quick takes about 10 s, the default counts a minute or two.
set -euo pipefail

BENCH_NAME=cpu_per_request
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

if $QUICK; then
  REQUESTS=${REQUESTS:-2000}
  BASE_REQUESTS=${BASE_REQUESTS:-200}
else
  REQUESTS=${REQUESTS:-20000}
  BASE_REQUESTS=${BASE_REQUESTS:-2000}
fi
CONNS=${CONNS:-32}
SIZE=${SIZE:-0}
TARGETS=${TARGETS:-"gateway nginx-proxy haproxy"}
KEEP=${KEEP:-0}

[[ $REQUESTS =~ ^[0-9]+$ && $BASE_REQUESTS =~ ^[0-9]+$ ]] ||
  die "REQUESTS and BASE_REQUESTS take numbers, got '$REQUESTS' and '$BASE_REQUESTS'"
((REQUESTS > BASE_REQUESTS)) ||
  die "REQUESTS ($REQUESTS) must be larger than BASE_REQUESTS ($BASE_REQUESTS)"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS takes a positive integer, got '$CONNS'"
check_size SIZE "$SIZE"
if [[ $SIZE == 0 ]]; then URL_PATH=/; else URL_PATH=/$SIZE; fi
for target in $TARGETS; do
  case "$target" in
    gateway | nginx-proxy | haproxy) ;;
    *) die "unknown target '$target' in TARGETS (gateway, nginx-proxy, haproxy)" ;;
  esac
done

# --- tools ------------------------------------------------------------------------------

require_tools nginx haproxy curl
command -v valgrind >/dev/null 2>&1 || die "valgrind not found (Debian: apt-get install valgrind)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# --- gateway binary (before any process starts: a failed build leaves nothing behind) ----

if [[ " $TARGETS " != *" gateway "* ]]; then
  GATEWAY_LABEL="not measured"
else
  build_gateway
fi

# --- temp dir, processes, cleanup -----------------------------------------------------------

make_workdir caas-cpu
PROXY_PID="" # the proxy under valgrind, while it runs

# On exit: every process, 5 s each to exit cleanly (valgrind writes its output).
cleanup() {
  kill_and_reap 50 ${PROXY_PID:+"$PROXY_PID"} "${PIDS[@]}"
  finish_workdir "configs, logs and callgrind output"
}
on_exit cleanup

free_port BACKEND_PORT
free_port PROXY_PORT

write_body_files "$SIZE"
write_backend_conf "" "$BODY_HTTP" "$BODY_LOCATIONS"
# One process under valgrind: no master, the worker's loop in the process itself.
write_nginx_proxy_conf "$PROXY_PORT" "master_process off;"
write_haproxy_cfg "$PROXY_PORT"
write_gateway_toml gateway "$PROXY_PORT"
check_configs

log "temp dir $WORK"
start_backend

# --- measure -------------------------------------------------------------------------------

# The proxy's command line and the signal that stops it gracefully.
proxy_cmd() {
  case "$1" in
    # The file is polled for route changes every second; once an hour keeps that out.
    gateway) echo "$GATEWAY_BIN --config $WORK/gateway.toml --reload-interval-ms 3600000" ;;
    nginx-proxy) nginx_cmd nginx-proxy && echo "${NGINX_CMD[*]}" ;;
    haproxy) echo "haproxy -db -f $WORK/haproxy.cfg" ;;
  esac
}
stop_signal() {
  case "$1" in
    gateway) echo TERM ;;
    nginx-proxy) echo QUIT ;;
    haproxy) echo USR1 ;;
  esac
}

# Runs proxy $1 under callgrind, sends it $2 requests, stops it; sets the variable named $3 to
# its total Ir (not a $(subshell): PROXY_PID must reach cleanup).
count_ir() {
  local target=$1 n=$2 out log ir cmd
  out="$WORK/callgrind.$target.$n.out"
  log="$WORK/$target.log"
  read -r -a cmd <<<"$(proxy_cmd "$target")"
  # Per-request logging would count the logger; warnings still reach the log.
  RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --callgrind-out-file="$out" \
    "${cmd[@]}" >"$log" 2>&1 &
  PROXY_PID=$!
  wait_listen "$target" "$PROXY_PORT" "$PROXY_PID"
  python3 "$ROOT/benches/fixed_load.py" --port "$PROXY_PORT" --requests "$n" --conns "$CONNS" \
    --host-header "$HOST_HEADER" --path "$URL_PATH" >"$WORK/load.$target.$n.txt" 2>&1 ||
    die "$target: $(tail -n 3 "$WORK/load.$target.$n.txt") (logs in $WORK)"
  kill -"$(stop_signal "$target")" "$PROXY_PID"
  wait_exit "$PROXY_PID" 600 ||
    die "$target did not exit within 60 s of SIG$(stop_signal "$target") (logs in $WORK)"
  wait "$PROXY_PID" || log "$target exited with status $? (log: $log)"
  PROXY_PID=""
  ir=$(awk '$1 == "summary:" || $1 == "totals:" {v = $2} END {print v}' "$out" 2>/dev/null || true)
  [[ $ir =~ ^[0-9]+$ ]] || die "$target: no Ir total in $out: $(tail -n 5 "$log")"
  printf -v "$3" '%s' "$ir"
}

RESULTS="$WORK/results.txt" # target base_ir ir
: >"$RESULTS"
base="" full=""
for target in $TARGETS; do
  log "$target: $BASE_REQUESTS requests under callgrind"
  count_ir "$target" "$BASE_REQUESTS" base
  log "$target: $REQUESTS requests under callgrind"
  count_ir "$target" "$REQUESTS" full
  echo "$target $base $full" >>"$RESULTS"
done

# --- report --------------------------------------------------------------------------------

echo
echo "## Instructions per proxied request (callgrind, user space only)"
echo
report_machine
echo "- $(proxy_versions), $(valgrind --version)"
echo "- gateway: $GATEWAY_LABEL"
if [[ $SIZE == 0 ]]; then served='return 200 "ok\n"'; else served="a $SIZE file by sendfile"; fi
echo "- 'GET $URL_PATH' with 'Host: $HOST_HEADER' over $CONNS keep-alive connections; backend: nginx, $served (not counted)"
echo "- per request = (Ir at $REQUESTS requests − Ir at $BASE_REQUESTS) / $((REQUESTS - BASE_REQUESTS)): startup, shutdown and connects cancel out"
echo "- user space only: callgrind does not see the kernel (syscalls, TCP) behind each request"
echo
echo "| target | Ir, $BASE_REQUESTS requests | Ir, $REQUESTS requests | instructions per request | × nginx-proxy |"
echo "|---|---:|---:|---:|---:|"
nginx_per=$(awk -v d=$((REQUESTS - BASE_REQUESTS)) '$1 == "nginx-proxy" {print ($3 - $2) / d}' "$RESULTS")
awk -v d=$((REQUESTS - BASE_REQUESTS)) -v n="${nginx_per:-0}" '{
  per = ($3 - $2) / d
  printf "| %s | %d | %d | %.0f | %s |\n", $1, $2, $3, per, (n > 0 ? sprintf("%.2f×", per / n) : "–")
}' "$RESULTS"
STATUS=0
