#!/usr/bin/env bash
# benches/compare.sh — side-by-side HTTP/1.1 load comparison on loopback: the caas gateway
# (examples/gateway, one worker) against nginx as a reverse proxy and HAProxy (one worker /
# thread each), and against the backend hit directly (the ceiling: a proxy that cost nothing).
# All four serve the same nginx backend (one worker): `return 200 "ok\n"` at /, and static
# files of exactly 8 KiB at /8k and 256 KiB at /256k.
#
# wrk (-t1) runs -c1, -c32 and -c256 on / and -c32 on /8k and /256k against each target in turn,
# recording the CPU time (user + system, from /proc) the serving process spent per request,
# for several rounds (targets rotate their order each round), and the script prints a markdown
# table of the medians over rounds: requests/s, p50, p99, errors, wrk's own CPU (near 100 %
# the client, not the proxy, bounds the row), and the ratio to nginx-proxy and to direct. A
# second table gives, for the same runs, the CPU time the proxy, the backend and wrk each spent
# per request and the machine's idle share: the three share the CPUs, and a proxy's timing can
# cost its peers CPU that its own figure does not show.
# Then, for each proxy, it opens 10,000 keep-alive connections that each made one request,
# holds them idle (benches/idle_conns.py) and prints a table of memory: the proxy's
# RSS after the wrk runs, and on a fresh process its RSS at start and with the connections
# held, and KiB per connection ((with − at start) / connections). Compare ratios
# measured in one run, never absolute numbers across runs or machines: on a small machine
# wrk, the proxy and the backend share the CPUs. Targets for the gateway: ≥ 1.25× nginx at
# c32, ≥ 1.6× at c256, ahead of HAProxy at both, p99 no worse than HAProxy's; 10,000 idle
# connections under 200 MiB. The setup it shares with cpu_per_request.sh is in benches/lib.sh.
#
# HTTPS rows: the three proxies also terminate TLS (one ECDSA P-256 certificate made at start,
# TLS 1.3 negotiated by all three) in front of the same plain backend; wrk runs -cTLS_CONNS on
# "ok\n" over keep-alive connections (requests/s) and with `Connection: close`, every request
# on a new connection, so requests/s is handshakes/s: once where the proxies resume sessions
# (tickets on; wrk keeps each connection's session and offers it on the next), once on a
# second TLS port of each where resumption is off (full handshakes: the certificate and a
# signature every time; for the gateway a second process, `gateway-full`, with
# `session_resumption = false`). The script checks both kinds with a Python client first.
# wrk runs those two rows with TLS_NEW_THREADS (2) threads: one wrk thread spends about a
# millisecond of CPU on each new TLS connection, so with -t1 it is wrk that bounds them (at
# 100 % of its CPU, the same handshakes/s behind any proxy); with a thread per CPU the client
# takes whatever CPU the proxy leaves, and handshakes/s follows what each costs the proxy.
#
# Usage: benches/compare.sh [--quick] [-h|--help]
#   --quick           1 round of 2 s (a smoke test, not a measurement)
# Environment:
#   ROUNDS=3          rounds (each round runs every target at every connection count)
#   DURATION=5        seconds per wrk run
#   CONNS="1 32 256"  connection counts for / ("ok\n")
#   SIZES="0 8k 256k" response bodies: 0 is "ok\n" at /; N, Nk or Nm bytes is a file at /N, /Nk..
#   SIZE_CONNS=32     connection count for the sizes other than 0
#   TLS_CONNS=32      connection count of the HTTPS rows (0: no HTTPS rows)
#   TLS_NEW_THREADS=2 wrk threads for the rows with a new TLS connection per request (all
#                     others run wrk -t1)
#   IDLE_CONNS=10000  idle keep-alive connections held per proxy for the memory table (0: skip)
#   GATEWAY_BIN=path  gateway binary to run as `$GATEWAY_BIN --config FILE` (skips cargo build)
#   GATEWAY_BIN_B=path a second gateway build, measured as target `gateway-b` in the same
#                     rounds (before/after a change: ratios between the two in one run)
#   ACCESS_LOG=1      also measure `gateway-log`: the same gateway binary and config with
#                     access_log on, writing to a file on tmpfs (/dev/shm, else TMPDIR),
#                     emptied before each of its runs (0 skips it)
#   CHURN_APPS=10000  then run benches/churn.sh (a ZooKeeper-fed gateway's latency while its
#                     routes change, at this many apps; 0 skips it)
#   PAIRS=16          then, for every row, this many pairs of short runs back to back: the
#   PAIR_SECS=1       gateway and each of PAIR_WITH, alternating which goes first; the report
#   PAIR_WITH=haproxy gives the median of the pairs' ratios (req/s, p99) with a 95 % confidence
#                     interval, which the shared machine's drift cannot tip (0 skips them);
#                     haproxy, nginx-proxy and (with GATEWAY_BIN_B) gateway-b
#   STEAL_MAX=10      a wrk run during which the hypervisor took more than this % of the
#                     machine's CPU time (steal, /proc/stat) is run again, up to
#   STEAL_RETRIES=2   more times, and the attempt with the least steal kept; the table
#                     shows each row's steal and the report lists the runs done again
#   TASKSET=1         pin backend, proxies and wrk to separate CPUs (see "CPU pinning" below)
#   PERF_STAT=1       also count, with perf stat on the serving process during each wrk run,
#                     its CPU time, context switches, CPU migrations and every system call by
#                     name (syscalls:sys_enter_* tracepoints), and print them per request: the
#                     side-by-side strace -c without ptrace's slowdown. Counting costs each
#                     system call a little: compare req/s from runs without it
#   GATEWAY_TOML=     top-level lines added to the gateway's config (and its -log and
#   GATEWAY_B_TOML=   -full variants'), and to gateway-b's: e.g. 'busy_poll_us = 50'
#   HAPROXY_GLOBAL=   lines added to HAProxy's global section (its 'busy-polling' spins
#                     with no traffic too: it takes a CPU from every other target's rows)
#   KEEP=1            keep the temp dir (configs, logs, raw wrk output) even on success
# Needs nginx, haproxy, wrk, curl and python3; runs scripts/install-deps.sh when one of the
# first four is missing. IDLE_CONNS needs at least IDLE_CONNS+1024 open files: the script
# raises ulimit -n up to the hard limit (see benches/README.md).
set -euo pipefail

BENCH_NAME=compare
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

if $QUICK; then
  ROUNDS=${ROUNDS:-1}
  DURATION=${DURATION:-2}
  PAIRS=${PAIRS:-2}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-5}
  PAIRS=${PAIRS:-16}
fi
PAIR_SECS=${PAIR_SECS:-1}
PAIR_WITH=${PAIR_WITH:-haproxy}
CONNS=${CONNS:-"1 32 256"}
SIZES=${SIZES:-"0 8k 256k"}
SIZE_CONNS=${SIZE_CONNS:-32}
TLS_CONNS=${TLS_CONNS:-32}
TLS_NEW_THREADS=${TLS_NEW_THREADS:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
TASKSET=${TASKSET:-0}
steal_settings
PERF_STAT=${PERF_STAT:-0}
GATEWAY_TOML=${GATEWAY_TOML:-}
GATEWAY_B_TOML=${GATEWAY_B_TOML:-}
KEEP=${KEEP:-0}
ACCESS_LOG=${ACCESS_LOG:-1}
CHURN_APPS=${CHURN_APPS:-10000}
[[ $CHURN_APPS =~ ^[0-9]+$ ]] || die "CHURN_APPS takes a number (0 skips), got '$CHURN_APPS'"
[[ $PAIRS =~ ^[0-9]+$ ]] || die "PAIRS takes a number (0 skips the paired runs), got '$PAIRS'"
[[ $PAIR_SECS =~ ^[1-9][0-9]*$ ]] || die "PAIR_SECS takes whole seconds (1 or more), got '$PAIR_SECS'"
for other in $PAIR_WITH; do
  [[ $other == haproxy || $other == nginx-proxy || ($other == gateway-b && -n ${GATEWAY_BIN_B:-}) ]] ||
    die "PAIR_WITH takes haproxy, nginx-proxy and (with GATEWAY_BIN_B) gateway-b, got '$other'"
done

[[ $TLS_CONNS =~ ^[0-9]+$ ]] || die "TLS_CONNS takes a number (0: no HTTPS rows), got '$TLS_CONNS'"
[[ $TLS_NEW_THREADS =~ ^[1-9][0-9]*$ ]] ||
  die "TLS_NEW_THREADS takes a number of wrk threads (1 or more), got '$TLS_NEW_THREADS'"
for c in $CONNS $SIZE_CONNS; do
  [[ $c =~ ^[1-9][0-9]*$ ]] || die "CONNS and SIZE_CONNS take positive integers, got '$c'"
done
[[ $IDLE_CONNS =~ ^[0-9]+$ ]] || die "IDLE_CONNS takes a number (0 skips), got '$IDLE_CONNS'"
if [[ $PERF_STAT == 1 ]]; then
  require_tools perf
  perf stat -e 'syscalls:sys_enter_read' -- true >/dev/null 2>&1 ||
    die "PERF_STAT=1: perf cannot count the syscalls:sys_enter_* tracepoints here (perf_event_paranoid, tracefs)"
fi
for size in $SIZES; do check_size SIZES "$size"; done
# The path of a body size on every target (the "https*" rows are "ok\n" at / over TLS).
size_path() { if [[ $1 == 0 || $1 == https* ]]; then echo /; else echo "/$1"; fi; }

# --- tools ------------------------------------------------------------------------------

require_tools nginx haproxy wrk curl
((TLS_CONNS == 0)) || require_tools openssl
if ((IDLE_CONNS > 0)); then
  command -v python3 >/dev/null 2>&1 || die "IDLE_CONNS=$IDLE_CONNS needs python3 (IDLE_CONNS=0 skips)"
fi

# Open files: every proxy holds IDLE_CONNS client connections plus its upstream ones, and so
# does the holder. Raised before anything starts so that every process inherits it; nginx
# also gets worker_rlimit_nofile. 2×IDLE_CONNS+4096 where the hard limit allows, at least
# IDLE_CONNS+1024.
if ((IDLE_CONNS > 0)); then
  want=$((2 * IDLE_CONNS + 4096))
  have=$(ulimit -Sn)
  if [[ $have != unlimited ]] && ((have < want)); then
    ulimit -n "$want" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
    have=$(ulimit -Sn)
    [[ $have == unlimited ]] || ((have >= IDLE_CONNS + 1024)) ||
      die "IDLE_CONNS=$IDLE_CONNS needs ulimit -n ≥ $((IDLE_CONNS + 1024)), have $have (hard limit $(ulimit -Hn), raising it needs root with CAP_SYS_RESOURCE): raise the hard limit or lower IDLE_CONNS (0 skips)"
  fi
fi
NOFILE=$(ulimit -Sn)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
# Client connections each proxy accepts: 4096, or IDLE_CONNS and a fifteenth more (so they
# fill at most 15/16 of the slots), plus 1024: nginx starts closing idle keep-alive
# connections when fewer than a sixteenth of its worker_connections are free (seen at 18,900 idle connections with 1024 spare: it closed
# some at 18,668). nginx preallocates its worker_connections slots, so its RSS at start grows
# with them. HAProxy runs on what ulimit -n allows (`no strict-limits`: see write_haproxy_cfg
# in lib.sh).
NGINX_WORKER_CONNS=$((IDLE_CONNS + IDLE_CONNS / 15 + 1024))
((NGINX_WORKER_CONNS > 4096)) || NGINX_WORKER_CONNS=4096
HAPROXY_MAXCONN=$NGINX_WORKER_CONNS

# --- gateway binary (before any process starts: a failed build leaves nothing behind) ----

build_gateway
if [[ -n ${GATEWAY_BIN_B:-} ]]; then
  [[ -x $GATEWAY_BIN_B ]] || die "GATEWAY_BIN_B=$GATEWAY_BIN_B is not an executable file"
fi

# --- temp dir, processes, cleanup -----------------------------------------------------------

make_workdir caas-compare
HOLDER_PID="" # benches/idle_conns.py while it holds connections

# On exit: the idle-connection holder first, then every process (1 s each to exit cleanly).
cleanup() {
  if [[ -n $HOLDER_PID ]]; then
    kill -TERM "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" 2>/dev/null || true
  fi
  kill_and_reap 10 "${PIDS[@]}"
  [[ ${ACCESS_LOG_FILE:-} == /dev/shm/* ]] && rm -f "$ACCESS_LOG_FILE"
  finish_workdir "configs, logs and raw wrk output"
}
on_exit cleanup

# CPU pinning (TASKSET=1). With 3+ CPUs: backend on CPU 0, the proxy under test on CPU 1, wrk
# on CPU 2. With 2 CPUs there is no third core: wrk shares CPU 0 with the backend, so the
# "direct" row then has wrk and the backend on one core and is not comparable to the others.
# On a shared 2-CPU machine pinning made the spread between rounds wider, not narrower (other
# processes still land on the pinned cores), so it is off by default.
PIN_BACKEND=() PIN_PROXY=() PIN_WRK=()
if [[ $TASKSET == 1 ]]; then
  command -v taskset >/dev/null 2>&1 || die "TASKSET=1 needs taskset (util-linux)"
  ncpu=$(nproc)
  if ((ncpu >= 3)); then
    PIN_BACKEND=(taskset -c 0) PIN_PROXY=(taskset -c 1) PIN_WRK=(taskset -c 2)
  elif ((ncpu == 2)); then
    PIN_BACKEND=(taskset -c 0) PIN_PROXY=(taskset -c 1) PIN_WRK=(taskset -c 0)
    log "TASKSET=1 on 2 CPUs: wrk shares CPU 0 with the backend"
  else
    log "TASKSET=1 ignored: only one CPU"
  fi
fi

# Stops pid $1 (SIGTERM, then SIGKILL after 10 s) and forgets it.
stop() {
  local pid=$1 p keep=()
  kill_and_reap 100 "$pid"
  for p in "${PIDS[@]}"; do
    [[ $p == "$pid" ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

free_port BACKEND_PORT
free_port NGINX_PORT
free_port HAPROXY_PORT
free_port GATEWAY_PORT
free_port GATEWAY_B_PORT
free_port GATEWAY_LOG_PORT
NGINX_TLS_PORT="" HAPROXY_TLS_PORT="" GATEWAY_TLS_PORT="" GATEWAY_B_TLS_PORT=""
NGINX_FULL_PORT="" HAPROXY_FULL_PORT="" GATEWAY_FULL_TLS_PORT=""
if ((TLS_CONNS > 0)); then
  free_port NGINX_TLS_PORT
  free_port HAPROXY_TLS_PORT
  free_port GATEWAY_TLS_PORT
  free_port GATEWAY_B_TLS_PORT
  # Full handshakes: TLS ports with session resumption off.
  free_port NGINX_FULL_PORT
  free_port HAPROXY_FULL_PORT
  free_port GATEWAY_FULL_PORT
  free_port GATEWAY_FULL_TLS_PORT
  make_tls_cert
fi

# Every nginx may open NOFILE files; the backend serves the bodies with sendfile.
write_body_files $SIZES
write_backend_conf "worker_rlimit_nofile $NOFILE;" "$BODY_HTTP" "$BODY_LOCATIONS"
write_nginx_proxy_conf "$NGINX_PORT" "worker_rlimit_nofile $NOFILE;" "$NGINX_TLS_PORT" \
  "$NGINX_FULL_PORT"
# Idle keep-alive client connections stay open 60 s or more on every proxy (nginx: its
# default keepalive_timeout, 75 s), long enough to hold IDLE_CONNS of them and read the RSS.
write_haproxy_cfg "$HAPROXY_PORT" "$HAPROXY_TLS_PORT" "$HAPROXY_FULL_PORT"
write_gateway_toml gateway "$GATEWAY_PORT" "$GATEWAY_TLS_PORT" "$GATEWAY_TOML"
write_gateway_toml gateway-b "$GATEWAY_B_PORT" "$GATEWAY_B_TLS_PORT" "$GATEWAY_B_TOML"
((TLS_CONNS == 0)) || write_gateway_toml gateway-full "$GATEWAY_FULL_PORT" \
  "$GATEWAY_FULL_TLS_PORT" "$GATEWAY_TOML" "session_resumption = false"
# The access log on tmpfs: the row measures producing and writing lines, not a disk.
if [[ -d /dev/shm && -w /dev/shm ]]; then
  ACCESS_LOG_FILE=$(mktemp /dev/shm/caas-compare-access.XXXXXX)
else
  ACCESS_LOG_FILE="$WORK/access.log"
fi
write_gateway_toml gateway-log "$GATEWAY_LOG_PORT" "" "$GATEWAY_TOML
access_log = \"$ACCESS_LOG_FILE\""
check_configs

log "temp dir $WORK"
log "backend :$BACKEND_PORT  gateway :$GATEWAY_PORT  nginx-proxy :$NGINX_PORT  haproxy :$HAPROXY_PORT"

start_backend
start_proxy() {
  case "$1" in
    nginx-proxy)
      nginx_cmd nginx-proxy
      start nginx-proxy "${PIN_PROXY[@]}" "${NGINX_CMD[@]}"
      ;;
    haproxy) start haproxy "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy.cfg" ;;
    # Per-request logging would measure the logger; warnings still reach gateway.log.
    gateway)
      RUST_LOG=${RUST_LOG:-warn} start gateway "${PIN_PROXY[@]}" "$GATEWAY_BIN" \
        --config "$WORK/gateway.toml"
      ;;
    gateway-b)
      RUST_LOG=${RUST_LOG:-warn} start gateway-b "${PIN_PROXY[@]}" "$GATEWAY_BIN_B" \
        --config "$WORK/gateway-b.toml"
      ;;
    gateway-log | gateway-full)
      RUST_LOG=${RUST_LOG:-warn} start "$1" "${PIN_PROXY[@]}" "$GATEWAY_BIN" \
        --config "$WORK/$1.toml"
      ;;
  esac
}
start_proxy nginx-proxy
start_proxy haproxy
start_proxy gateway
wait_http nginx-proxy "$NGINX_PORT"
wait_http haproxy "$HAPROXY_PORT"
wait_http gateway "$GATEWAY_PORT"
if [[ -n ${GATEWAY_BIN_B:-} ]]; then
  start_proxy gateway-b
  wait_http gateway-b "$GATEWAY_B_PORT"
fi
if [[ $ACCESS_LOG == 1 ]]; then
  start_proxy gateway-log
  wait_http gateway-log "$GATEWAY_LOG_PORT"
fi
if ((TLS_CONNS > 0)); then
  start_proxy gateway-full
  wait_http gateway-full "$GATEWAY_FULL_PORT"
fi


# Each target must answer 200 "ok" through the Host header before anything is measured, and
# 200 with exactly the file's bytes and Content-Length on the path of every other body size.
check_target() {
  local name=$1 url=$2 size want got len
  check_ok "$name" "$url"
  for size in $SIZES; do
    [[ $size == 0 ]] && continue
    want=$(size_bytes "$size")
    : >"$WORK/check.headers"
    got=$(curl -s --max-time 5 -H "Host: $HOST_HEADER" -D "$WORK/check.headers" -o /dev/null \
      -w '%{http_code} %{size_download}' "${url%/}$(size_path "$size")") || true
    len=$(awk -F': *' 'tolower($1) == "content-length" {sub(/\r$/, "", $2); print $2}' \
      "$WORK/check.headers")
    if [[ $got != "200 $want" || $len != "$want" ]]; then
      tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
      die "$name: GET ${url%/}$(size_path "$size") answered '${got:-nothing}' (status, bytes) with Content-Length '${len:-none}', want '200 $want' and Content-Length $want; check its config ($WORK) and logs above"
    fi
  done
}
check_target backend "http://127.0.0.1:$BACKEND_PORT/"
check_target gateway "http://127.0.0.1:$GATEWAY_PORT/"
check_target nginx-proxy "http://127.0.0.1:$NGINX_PORT/"
check_target haproxy "http://127.0.0.1:$HAPROXY_PORT/"
check_forwarded gateway "http://127.0.0.1:$GATEWAY_PORT/"
check_forwarded nginx-proxy "http://127.0.0.1:$NGINX_PORT/"
check_forwarded haproxy "http://127.0.0.1:$HAPROXY_PORT/"

TARGETS=(direct gateway nginx-proxy haproxy)
IDLE_TARGETS=(gateway nginx-proxy haproxy)
if [[ -n ${GATEWAY_BIN_B:-} ]]; then
  check_target gateway-b "http://127.0.0.1:$GATEWAY_B_PORT/"
  TARGETS=(direct gateway gateway-b nginx-proxy haproxy)
  IDLE_TARGETS=(gateway gateway-b nginx-proxy haproxy)
fi
if [[ $ACCESS_LOG == 1 ]]; then
  check_target gateway-log "http://127.0.0.1:$GATEWAY_LOG_PORT/"
  # One line per check request: the log is written.
  for _ in $(seq 1 50); do
    [[ -s $ACCESS_LOG_FILE ]] && break
    sleep 0.1
  done
  grep -q '"status":200' "$ACCESS_LOG_FILE" ||
    die "gateway-log: no access log line in $ACCESS_LOG_FILE after its check requests"
  TARGETS=("${TARGETS[@]:0:2}" gateway-log "${TARGETS[@]:2}")
fi
declare -A URL=(
  [direct]="http://127.0.0.1:$BACKEND_PORT/"
  [gateway]="http://127.0.0.1:$GATEWAY_PORT/"
  [gateway-b]="http://127.0.0.1:$GATEWAY_B_PORT/"
  [gateway-log]="http://127.0.0.1:$GATEWAY_LOG_PORT/"
  [nginx-proxy]="http://127.0.0.1:$NGINX_PORT/"
  [haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
)
# The HTTPS address of each proxy (no "direct": the backend serves no TLS).
declare -A TLS_URL=(
  [gateway]="https://127.0.0.1:$GATEWAY_TLS_PORT/"
  [gateway-b]="https://127.0.0.1:$GATEWAY_B_TLS_PORT/"
  [nginx-proxy]="https://127.0.0.1:$NGINX_TLS_PORT/"
  [haproxy]="https://127.0.0.1:$HAPROXY_TLS_PORT/"
)
# Each proxy's TLS port with session resumption off, and the process serving it.
declare -A FULL_URL=(
  [gateway]="https://127.0.0.1:$GATEWAY_FULL_TLS_PORT/"
  [nginx-proxy]="https://127.0.0.1:$NGINX_FULL_PORT/"
  [haproxy]="https://127.0.0.1:$HAPROXY_FULL_PORT/"
)
declare -A FULL_SERVER=([gateway]=gateway-full [nginx-proxy]=nginx-proxy [haproxy]=haproxy)
# Whether target $1 has an HTTPS row: not direct (the backend serves no TLS), not gateway-log
# (the access log's cost is measured over plain HTTP); the full-handshake row ($2 =
# https-full) not gateway-b either.
tls_target() {
  if [[ ${2:-} == https-full ]]; then [[ -v "FULL_URL[$1]" ]]; else [[ -v "TLS_URL[$1]" ]]; fi
}
# Each proxy must answer 200 "ok" over TLS 1.3 before anything is measured.
check_tls() {
  local name=$1 url=$2 got
  got=$(curl -sk --max-time 5 -H "Host: $HOST_HEADER" -o /dev/null \
    -w '%{http_code} %{ssl_verify_result}' --tlsv1.3 "$url") || true
  [[ ${got%% *} == 200 ]] ||
    die "$name: GET $url over TLS 1.3 answered '${got:-nothing}', want 200; check its config and logs ($WORK)"
}
# Whether a second connection to $1 resumes the first one's session: prints "resumed",
# "full" or "failed" (Python's ssl, which offers the TLS 1.3 ticket it got, as wrk does).
resumption() {
  python3 - "$1" "$HOST_HEADER" <<'PY' 2>/dev/null || echo failed
import socket, ssl, sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
session, reused = None, False
for _ in range(2):
    with socket.create_connection((u.hostname, u.port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sys.argv[2], session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: " + sys.argv[2].encode() + b"\r\nConnection: close\r\n\r\n")
            while s.recv(4096):
                pass
            session, reused = s.session, s.session_reused
print("resumed" if reused else "full")
PY
}
# Each proxy resumes on its TLS port and does full handshakes on its second one, or the rows
# would not measure what they say.
check_resumption() {
  local name=$1 url=$2 want=$3 got
  got=$(resumption "$url")
  [[ $got == "$want" ]] ||
    die "$name: a returning client's handshake at $url was $got, want $want; check its TLS config ($WORK)"
}
if ((TLS_CONNS > 0)); then
  for target in "${TARGETS[@]}"; do
    tls_target "$target" || continue
    check_tls "$target" "${TLS_URL[$target]}"
    check_resumption "$target" "${TLS_URL[$target]}" resumed
    if tls_target "$target" https-full; then
      check_tls "$target" "${FULL_URL[$target]}"
      check_resumption "$target" "${FULL_URL[$target]}" full
    fi
  done
fi
declare -A PORT=([gateway]=$GATEWAY_PORT [gateway-b]=$GATEWAY_B_PORT
  [gateway-log]=$GATEWAY_LOG_PORT [nginx-proxy]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)

# --- measure -------------------------------------------------------------------------------

# What one round runs, as "size conns": every CONNS on "ok\n", SIZE_CONNS on the other sizes.
RUNS=()
for size in $SIZES; do
  if [[ $size == 0 ]]; then
    for conns in $CONNS; do RUNS+=("0 $conns"); done
  else
    RUNS+=("$size $SIZE_CONNS")
  fi
done
if ((TLS_CONNS > 0)); then
  RUNS+=("https $TLS_CONNS" "https-new $TLS_CONNS" "https-full $TLS_CONNS")
fi

RESULTS="$WORK/results.txt" # round size conns target rps p50 p99 status sock cpu_us_per_req vol_csw_per_req invol_csw_per_req migrations_per_req wrk_cpu_percent steal_percent backend_cpu_us_per_req wrk_cpu_us_per_req idle_percent
: >"$RESULTS"
total=0
for run in "${RUNS[@]}"; do
  for target in "${TARGETS[@]}"; do
    [[ $run == https* ]] && ! tls_target "$target" "${run% *}" || total=$((total + ROUNDS))
  done
done
n=0
# Where a run of body size $1 against target $2 goes: sets url, wrk_extra (more wrk
# arguments: its threads, headers) and server (the process whose CPU time counts: the proxy,
# or the backend for "direct").
aim() {
  local size=$1 target=$2
  url="${URL[$target]%/}$(size_path "$size")"
  wrk_extra=(-t1)
  server=$target
  [[ $target == direct ]] && server=backend
  if [[ $size == https-full ]]; then
    url=${FULL_URL[$target]}
    server=${FULL_SERVER[$target]}
  elif [[ $size == https* ]]; then
    url=${TLS_URL[$target]}
  fi
  [[ $size == https-new || $size == https-full ]] &&
    wrk_extra=(-t"$TLS_NEW_THREADS" -H "Connection: close")
  return 0
}
# least_steal's keeper: the results line, perf counts and wrk output of the attempt
# measure_run just made, as KEPT_LINE, $WORK/perf.kept.txt and RUN_OUT.kept.
keep_attempt() {
  KEPT_LINE=$RUN_LINE
  cp "$WORK/perf.attempt.txt" "$WORK/perf.kept.txt"
  cp "$RUN_OUT" "$RUN_OUT.kept"
}

# One wrk run of $conns connections against $url, measuring process $server (the proxy, or the
# backend for "direct") over it, and the backend and wrk: sets RUN_LINE to the results line
# after "round size conns target" and ATTEMPT_STEAL to the share of the machine's CPU time the
# hypervisor took over the run (%); perf stat's counts, with PERF_STAT=1, go to
# $WORK/perf.attempt.txt.
measure_run() {
  RUN_OUT=$1
  local out=$1 cpu_pid ticks0 ticks1 vol0 invol0 mig0 vol1 invol1 mig1 requests perf_pid
  local wrk_cpu cpu_us csw machine0 machine1 backend_pid backend0 backend1 peers
  cpu_pid=$(pid_of "$server")
  backend_pid=$(pid_of backend)
  ticks0=$(cpu_ticks "$cpu_pid")
  backend0=$(cpu_ticks "$backend_pid")
  read -r vol0 invol0 mig0 < <(ctx_switches "$cpu_pid")
  # The access log starts each run empty (the gateway appends: writes go on at the new end).
  [[ $target == gateway-log ]] && : >"$ACCESS_LOG_FILE"
  perf_pid=""
  : >"$WORK/perf.attempt.txt"
  if [[ $PERF_STAT == 1 ]]; then
    perf stat -x, -o "$out.perf.csv" \
      -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,'syscalls:sys_enter_*' \
      -p "$(proc_tree "$cpu_pid" | paste -sd,)" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  machine0=$(machine_ticks)
  # wrk's own CPU (bash's time, TIMEFORMAT above): near 100 % the client bounds the row.
  { time "${PIN_WRK[@]}" wrk -c"$conns" -d"${DURATION}s" --latency \
    -H "Host: $HOST_HEADER" "${wrk_extra[@]}" "$url" >"$out" 2>&1; } 2>"$out.time" ||
    die "wrk failed against $target: $(tail -n 5 "$out")"
  machine1=$(machine_ticks)
  wrk_cpu=$(awk '{printf "%.0f", ($1 > 0 ? ($2 + $3) / $1 * 100 : 0)}' "$out.time")
  ticks1=$(cpu_ticks "$cpu_pid")
  backend1=$(cpu_ticks "$backend_pid")
  read -r vol1 invol1 mig1 < <(ctx_switches "$cpu_pid")
  requests=$(awk '/requests in/ {print $1}' "$out")
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" || true
    # "round size conns target requests event count" per counted event.
    awk -F, -v r="$round" -v s="$size" -v c="$conns" -v t="$target" -v n="${requests:-0}" \
      'NF >= 3 && $1 ~ /^[0-9.]+$/ {print r, s, c, t, n, $3, $1}' \
      "$out.perf.csv" >"$WORK/perf.attempt.txt"
  fi
  cpu_us=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" -v n="${requests:-0}" \
    'BEGIN {printf "%.2f", (n > 0 ? t / hz / n * 1e6 : 0)}')
  csw=$(awk -v v=$((vol1 - vol0)) -v i=$((invol1 - invol0)) -v m=$((mig1 - mig0)) \
    -v n="${requests:-0}" 'BEGIN {
      printf "%.3f %.3f %.4f", (n > 0 ? v / n : 0), (n > 0 ? i / n : 0), (n > 0 ? m / n : 0)
    }')
  # The backend's and wrk's CPU per request, and the machine's idle share: what the run cost
  # the rest of the pipeline (at a body size, the proxies differ there more than in their own).
  peers=$(awk -v t=$((backend1 - backend0)) -v hz="$CLK_TCK" -v n="${requests:-0}" '{
      printf "%.2f %.2f", (n > 0 ? t / hz / n * 1e6 : 0), (n > 0 ? ($2 + $3) / n * 1e6 : 0)
    }' "$out.time")
  ATTEMPT_STEAL=$(steal_percent "$machine0" "$machine1")
  RUN_LINE="$(parse_wrk "$out") $cpu_us $csw $wrk_cpu $ATTEMPT_STEAL $peers $(idle_percent "$machine0" "$machine1")"
}

RERUNS="$WORK/reruns.txt" # note_reruns: the runs done again for steal
: >"$RERUNS"
# `time` around each wrk prints wall, user and system seconds.
TIMEFORMAT='%R %U %S'
for ((round = 1; round <= ROUNDS; round++)); do
  for run in "${RUNS[@]}"; do
    read -r size conns <<<"$run"
    # Rotate the order each round so no target always runs first (or right after another).
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
      target=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
      [[ $size == https* ]] && ! tls_target "$target" "$size" && continue
      n=$((n + 1))
      aim "$size" "$target"
      out="$WORK/wrk.r$round.s$size.c$conns.$target.txt"
      log "[$n/$total] round $round, $size $(size_path "$size") c$conns, $target"
      # A run that lost more than STEAL_MAX % of the machine to the hypervisor is run again
      # (every target alike: steal is the host's load, not the target's doing).
      least_steal measure_run "$out"
      note_reruns "round $round, body $size, c$conns, $target" "$RERUNS"
      mv "$out.kept" "$out"
      cat "$WORK/perf.kept.txt" >>"$WORK/perf.txt"
      echo "$round $size $conns $target $KEPT_LINE" >>"$RESULTS"
    done
  done
done

# --- paired runs: the gateway against each of PAIR_WITH ------------------------------------

# A round's runs of one row are up to four targets × DURATION apart, and on a shared VM the
# machine's speed moves by 10-30 % on that scale (with or without steal), so the medians of a
# few rounds cross each other by chance when two proxies are within 10 % of each other. Here
# each row runs PAIRS pairs of short runs back to back, the gateway and the other proxy
# alternating which goes first (ABBA: a drift in time favours neither), and the report gives
# the median of the pairs' ratios with a confidence interval.
PAIRED="$WORK/pairs.txt" # size conns other pair gw_rps gw_p99 other_rps other_p99 errors steal%
: >"$PAIRED"
declare -A got=() # target → "rps p50 p99 status sock" of its run in the pair
if ((PAIRS > 0)); then
  for run in "${RUNS[@]}"; do
    read -r size conns <<<"$run"
    for other in $PAIR_WITH; do
      [[ $size == https* ]] && ! tls_target "$other" "$size" && continue
      log "pairs: $size $(size_path "$size") c$conns, gateway and $other: $PAIRS pairs of ${PAIR_SECS}s runs"
      for ((pair = 1; pair <= PAIRS; pair++)); do
        order=(gateway "$other")
        ((pair % 2 == 1)) || order=("$other" gateway)
        machine0=$(machine_ticks)
        got=()
        for target in "${order[@]}"; do
          aim "$size" "$target"
          out="$WORK/pair.$target.txt"
          "${PIN_WRK[@]}" wrk -c"$conns" -d"${PAIR_SECS}s" --latency -H "Host: $HOST_HEADER" \
            "${wrk_extra[@]}" "$url" >"$out" 2>&1 || die "wrk failed against $target: $(tail -n 5 "$out")"
          got[$target]=$(parse_wrk "$out")
        done
        machine1=$(machine_ticks)
        awk -v g="${got[gateway]}" -v o="${got[$other]}" -v row="$size $conns $other $pair" \
          -v st="$(steal_percent "$machine0" "$machine1")" 'BEGIN {
            split(g, a, " "); split(o, b, " ")
            print row, a[1], a[3], b[1], b[3], a[4] + a[5] + b[4] + b[5], st
          }' >>"$PAIRED"
      done
    done
  done
fi

# --- idle keep-alive connections: memory ---------------------------------------------------

# For one proxy: its RSS after the wrk runs; then a fresh process (allocators and pools keep
# memory from the wrk runs: tens of MiB for some, reused by the idle connections for others, so
# neither a baseline from before the runs nor one from after them would give a clean
# difference): its RSS at start (after one check request per path), then open IDLE_CONNS
# keep-alive connections that each made one request, hold them, RSS with them, check they all
# stayed open, close them.
IDLE="$WORK/idle.txt" # target held rss_after_wrk rss_start rss_with (KiB) seconds_to_open
hold_idle() {
  local target=$1 pid p lim after_wrk at_start with line held secs open ctl out errlog
  pid=$(pid_of "$target")
  kill -0 "$pid" 2>/dev/null || die "$target is no longer running (logs in $WORK)"
  after_wrk=$(rss_kib "$pid")
  stop "$pid"
  start_proxy "$target"
  wait_http "$target" "${PORT[$target]}"
  check_target "$target" "${URL[$target]}"
  pid=$(pid_of "$target")
  at_start=$(rss_kib "$pid")
  for p in $(proc_tree "$pid"); do
    lim=$(awk '/^Max open files/ {print $4}' "/proc/$p/limits" 2>/dev/null || true)
    [[ $lim == unlimited ]] || ((${lim:-0} >= IDLE_CONNS + 64)) ||
      die "$target (pid $p) may open ${lim:-?} files, fewer than IDLE_CONNS=$IDLE_CONNS needs"
  done
  out="$WORK/idle.$target.out"
  errlog="$WORK/idle.$target.log"
  rm -f "$WORK/idle.ctl"
  mkfifo "$WORK/idle.ctl"
  log "idle: $target: opening $IDLE_CONNS keep-alive connections"
  # Eight connections opened at a time, not the holder's default 256: what the requests in
  # flight at once leave in the allocator (their buffers, pooled upstream connections) is
  # then small and the same from run to run, where with 256 it moved the per-connection
  # figure by up to 0.25 KiB between runs of one binary.
  python3 "$ROOT/benches/idle_conns.py" --port "${PORT[$target]}" --conns "$IDLE_CONNS" \
    --window 8 --host-header "$HOST_HEADER" <"$WORK/idle.ctl" >"$out" 2>"$errlog" &
  HOLDER_PID=$!
  # Opening the write end waits for the holder to open the read end: its stdin.
  exec {ctl}>"$WORK/idle.ctl"
  line=$(await_line "$out" held "$HOLDER_PID" 300) ||
    die "idle: holding $IDLE_CONNS connections to $target failed: $(tail -n 5 "$errlog")"
  read -r _ held secs <<<"$line"
  sleep 0.5
  with=$(rss_kib "$pid")
  echo status >&"$ctl"
  line=$(await_line "$out" open "$HOLDER_PID" 30) ||
    die "idle: no status from the holder for $target: $(tail -n 5 "$errlog")"
  read -r _ open _ <<<"$line"
  ((open == held)) ||
    die "idle: $target closed $((held - open)) of $held idle connections before its RSS was read (keep-alive timeout? logs in $WORK)"
  exec {ctl}>&-
  wait "$HOLDER_PID" || die "idle: the holder for $target failed on close: $(tail -n 5 "$errlog")"
  HOLDER_PID=""
  echo "$target $held $after_wrk $at_start $with $secs" >>"$IDLE"
}

: >"$IDLE"
if ((IDLE_CONNS > 0)); then
  for target in "${IDLE_TARGETS[@]}"; do
    hold_idle "$target"
  done
fi

# --- report --------------------------------------------------------------------------------

# Median of the numbers on stdin.
col() { # size conns target column → values over rounds
  awk -v s="$1" -v c="$2" -v t="$3" -v k="$4" '$2 == s && $3 == c && $4 == t {print $k}' "$RESULTS"
}
# A body size as the table shows it.
size_label() {
  case "$1" in
    0) echo "3 B (ok)" ;;
    https) echo "HTTPS keep-alive" ;;
    https-new) echo "HTTPS, new TLS conn per request, resumed" ;;
    https-full) echo "HTTPS, new TLS conn per request, full handshake" ;;
    *[kK]) echo "${1%?} KiB" ;;
    *[mM]) echo "${1%?} MiB" ;;
    *) echo "$1 B" ;;
  esac
}

echo
echo "## caas gateway vs nginx vs HAProxy (loopback, wrk -t1 (-t$TLS_NEW_THREADS on new TLS conns), medians of $ROUNDS round(s) × ${DURATION}s)"
echo
report_machine
echo "- $(proxy_versions), $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}')"
echo "- gateway: $GATEWAY_LABEL$([[ -n ${GATEWAY_BIN_B:-} ]] && echo "; gateway-b: $GATEWAY_BIN_B")"
if [[ $ACCESS_LOG == 1 ]]; then
  echo "- gateway-log: the same gateway with access_log = \"$ACCESS_LOG_FILE\" ($(stat -f -c %T "$(dirname "$ACCESS_LOG_FILE")")), emptied before each run"
fi
[[ -z $GATEWAY_TOML ]] || echo "- gateway config adds: ${GATEWAY_TOML//$'\n'/; }"
[[ -z $GATEWAY_B_TOML ]] || echo "- gateway-b config adds: ${GATEWAY_B_TOML//$'\n'/; }"
[[ -z ${HAPROXY_GLOBAL:-} ]] || echo "- haproxy global adds: ${HAPROXY_GLOBAL//$'\n'/; }"
echo "- CPU pinning: $([[ ${#PIN_PROXY[@]} -gt 0 ]] && echo "backend ${PIN_BACKEND[*]: -1}, proxy ${PIN_PROXY[*]: -1}, wrk ${PIN_WRK[*]: -1}" || echo none)"
echo "- every request carries 'Host: $HOST_HEADER'; backend: nginx, 1 worker, return 200 \"ok\\n\" at /, static files (sendfile) at /8k, /256k, ..."
echo
echo "| body | conns | target | req/s | req/s min–max | p50 ms | p99 ms | non-2xx/3xx | socket errors | CPU µs/req | ctx switches/req (preempted) | migrations/1k req | wrk CPU % | steal % | × nginx-proxy | × direct |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for run in "${RUNS[@]}"; do
  read -r size conns <<<"$run"
  label=$(size_label "$size")
  nginx_rps=$(col "$size" "$conns" nginx-proxy 5 | median)
  direct_rps=$(col "$size" "$conns" direct 5 | median)
  [[ $size == https* ]] && direct_rps=0
  for target in "${TARGETS[@]}"; do
    [[ $size == https* ]] && ! tls_target "$target" "$size" && continue
    rps=$(col "$size" "$conns" "$target" 5 | median)
    lo=$(col "$size" "$conns" "$target" 5 | awk 'NR == 1 || $1 < m {m = $1} END {print m + 0}')
    hi=$(col "$size" "$conns" "$target" 5 | awk 'NR == 1 || $1 > m {m = $1} END {print m + 0}')
    p50=$(col "$size" "$conns" "$target" 6 | median)
    p99=$(col "$size" "$conns" "$target" 7 | median)
    status=$(col "$size" "$conns" "$target" 8 | sum)
    sock=$(col "$size" "$conns" "$target" 9 | sum)
    cpu=$(col "$size" "$conns" "$target" 10 | median)
    vol=$(col "$size" "$conns" "$target" 11 | median)
    invol=$(col "$size" "$conns" "$target" 12 | median)
    mig=$(col "$size" "$conns" "$target" 13 | median)
    wcpu=$(col "$size" "$conns" "$target" 14 | median)
    steal=$(col "$size" "$conns" "$target" 15 | median)
    awk -v b="$label" -v c="$conns" -v t="$target" -v r="$rps" -v lo="$lo" -v hi="$hi" \
      -v p50="$p50" -v p99="$p99" -v st="$status" -v so="$sock" -v cpu="$cpu" -v n="$nginx_rps" \
      -v d="$direct_rps" -v vol="$vol" -v invol="$invol" -v mig="$mig" -v w="$wcpu" -v sl="$steal" 'BEGIN {
        printf "| %s | %s | %s | %.0f | %.0f–%.0f | %.3f | %.3f | %d | %d | %.2f | %.3f (%.3f) | %.2f | %.0f | %.1f | %.2f× | %s |\n",
          b, c, t, r, lo, hi, p50, p99, st, so, cpu, vol + invol, invol, mig * 1000, w, sl, (n > 0 ? r / n : 0),
          (d > 0 ? sprintf("%.2f×", r / d) : "—")
      }'
  done
done
echo
echo "Errors are summed over rounds; req/s min–max is the spread over rounds; everything else is"
echo "a median over rounds. CPU µs/req: user + system CPU time of the process serving the run"
echo "(the proxy and its children; for direct, the backend) over the wrk run, per request"
echo "(/proc/PID/stat, kernel time included). Context switches: of every thread of that process,"
echo "per request, and in brackets those where the scheduler preempted it to run another task"
echo "(wrk, the backend) on its CPU (/proc/PID/task/*/status). Migrations: times the scheduler"
echo "moved one of its threads to the other CPU, per 1,000 requests (/proc/PID/task/*/sched)."
echo "wrk CPU %: wrk's user + system time over its run's wall time, in % of one CPU (one thread:"
echo "near 100 % the client bounds the row, and its latency includes waiting for wrk's own event"
echo "loop). The rows with a new TLS connection per request run $TLS_NEW_THREADS wrk threads, so that"
echo "the client can take whatever CPU the proxy leaves: their handshakes/s follow the proxy's cost."
echo "steal %: of the whole machine's CPU time over the wrk run, the share the hypervisor gave"
echo "to other guests while this machine's CPUs wanted to run (/proc/stat); a run above"
echo "STEAL_MAX=$STEAL_MAX % was run again up to $STEAL_RETRIES times and the attempt with the"
echo "least steal kept. Raw wrk output: KEEP=1."
echo
echo "### Where the machine's CPU went, per request"
echo
echo "| body | conns | target | req/s | proxy µs | backend µs | wrk µs | all three µs | machine idle % | × haproxy (all three) |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
# The CPU µs per request of the proxy, backend and wrk together over each round of a row,
# median over rounds (for direct the backend is the serving process: counted once).
cpu_sum() { # size conns target
  awk -v s="$1" -v c="$2" -v t="$3" '$2 == s && $3 == c && $4 == t {
    printf "%.2f\n", (t == "direct" ? 0 : $10) + $16 + $17
  }' "$RESULTS" | median
}
for run in "${RUNS[@]}"; do
  read -r size conns <<<"$run"
  label=$(size_label "$size")
  ha_all=$(cpu_sum "$size" "$conns" haproxy)
  for target in "${TARGETS[@]}"; do
    [[ $size == https* ]] && ! tls_target "$target" "$size" && continue
    awk -v l="$label" -v c="$conns" -v t="$target" -v r="$(col "$size" "$conns" "$target" 5 | median)" \
      -v p="$(col "$size" "$conns" "$target" 10 | median)" \
      -v b="$(col "$size" "$conns" "$target" 16 | median)" \
      -v w="$(col "$size" "$conns" "$target" 17 | median)" \
      -v i="$(col "$size" "$conns" "$target" 18 | median)" \
      -v a="$(cpu_sum "$size" "$conns" "$target")" -v h="$ha_all" 'BEGIN {
        printf "| %s | %s | %s | %.0f | %s | %.2f | %.2f | %.2f | %.1f | %s |\n", l, c, t, r,
          (t == "direct" ? "—" : sprintf("%.2f", p)), b, w, a, i,
          (h > 0 ? sprintf("%.2f×", a / h) : "—")
      }'
  done
done
echo
echo "Medians over rounds of the same runs as the table above: the CPU time (user + system) the"
echo "proxy, the backend and wrk each spent per request, the three summed, and the share of the"
echo "machine's CPU time no task wanted (idle, /proc/stat). The three share the machine's CPUs,"
echo "so a proxy can cost its peers CPU (or leave CPUs idle) by when it sends, not only by what"
echo "it spends itself; the last column is the sum over HAProxy's."
list_reruns "$RERUNS" "Runs done again for steal"

if [[ -s $PAIRED ]]; then
  echo
  echo "## The gateway against ${PAIR_WITH// / and }, in pairs of runs back to back"
  echo
  echo "$PAIRS pairs per row of ${PAIR_SECS}s wrk runs (threads as above), one against the gateway and one against the"
  echo "other, the first of each pair alternating. Ratios are the gateway's over the other's, pair by"
  echo "pair: req/s above 1 and p99 below 1 are the gateway ahead. Median over the pairs, and a"
  echo "distribution-free 95 % confidence interval of that median (order statistics): where it"
  echo "excludes 1 the difference is not the machine's drift."
  echo
  echo "| body | conns | against | pairs | gateway ahead (req/s) | req/s ratio: median (95 % CI) | gateway p99 lower | p99 ratio: median (95 % CI) | errors | steal % |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
  while read -r size conns other; do
    awk -v s="$size" -v c="$conns" -v o="$other" -v label="$(size_label "$size")" '
      function sort(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      }
      function med(a, n) { return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      # The k-th order statistics from each end bound the median with ≥ 95 % confidence:
      # the largest k with 2 P(Binomial(n, 1/2) ≤ k − 1) ≤ 0.05 (0: too few pairs).
      function ci_k(n,   j, c, cum, k) {
        c = 1; cum = 0; k = 0
        for (j = 0; j < n; j++) {
          cum += c / 2 ^ n
          if (2 * cum > 0.05) break
          k = j + 1; c = c * (n - j) / (j + 1)
        }
        return k
      }
      function show(a, n,   k) {
        k = ci_k(n)
        return sprintf("%.2f× (%s)", med(a, n), k ? sprintf("%.2f–%.2f", a[k], a[n - k + 1]) : "too few pairs")
      }
      $1 == s && $2 == c && $3 == o {
        n++; r[n] = ($7 > 0 ? $5 / $7 : 0); q[n] = ($8 > 0 ? $6 / $8 : 0); st[n] = $10
        ahead += ($5 > $7); lower += ($6 < $8); errors += $9
      }
      END {
        if (!n) exit
        sort(r, n); sort(q, n); sort(st, n)
        printf "| %s | %s | %s | %d | %d of %d | %s | %d of %d | %s | %d | %.1f |\n",
          label, c, o, n, ahead, n, show(r, n), lower, n, show(q, n), errors, med(st, n)
      }' "$PAIRED"
  done < <(awk '!seen[$1, $2, $3]++ {print $1, $2, $3}' "$PAIRED")
fi

if [[ $PERF_STAT == 1 && -s $WORK/perf.txt ]]; then
  echo
  echo "Per request, counted by perf stat on the serving process over its wrk runs (all rounds"
  echo "summed): CPU time (task-clock), context switches, migrations, system calls, and the"
  echo "system calls made at least 0.05 times a request:"
  echo
  echo "| body | conns | target | CPU µs | ctx switches | migrations | system calls | by name |"
  echo "|---|---:|---|---:|---:|---:|---:|---|"
  awk '
    # Requests once per run (round size conns target), events summed over runs.
    { run = $1 SUBSEP $2 SUBSEP $3 SUBSEP $4; key = $2 SUBSEP $3 SUBSEP $4
      if (!(run in seen)) { seen[run] = 1; req[key] += $5; if (!(key in order)) { order[key] = ++k; keys[k] = key } }
      ev[key, $6] += $7; names[$6] = 1 }
    END {
      for (i = 1; i <= k; i++) {
        key = keys[i]; n = req[key]; if (n == 0) continue
        split(key, f, SUBSEP)
        calls = ""
        for (e in names) if (e ~ /^syscalls:sys_enter_/ && ev[key, e] / n >= 0.05) {
          calls = calls sprintf("%s%s %.2f", (calls == "" ? "" : ", "), substr(e, 20), ev[key, e] / n)
        }
        printf "| %s | %s | %s | %.2f | %.3f | %.4f | %.2f | %s |\n", f[1], f[2], f[3],
          ev[key, "task-clock"] * 1000 / n, ev[key, "context-switches"] / n,
          ev[key, "cpu-migrations"] / n, ev[key, "raw_syscalls:sys_enter"] / n, calls
      }
    }' "$WORK/perf.txt"
fi

if ((IDLE_CONNS > 0)); then
  echo
  echo "## Proxy memory with $IDLE_CONNS idle keep-alive client connections"
  echo
  echo "- each connection sent one 'GET /' with 'Host: $HOST_HEADER', got its 200 and stayed open, idle (benches/idle_conns.py, 8 opened at a time)"
  echo "- RSS: VmRSS summed over the process and its children (nginx-proxy: master + worker, so pages they share count twice; the difference does not)"
  echo "- after the wrk runs: the process that served them; then each proxy is restarted, and the rest is measured on the fresh process"
  echo "- at start: after startup and one check request per path; KiB per connection = (with conns − at start) / conns held"
  echo "- limits: ulimit -n $NOFILE, nginx worker_connections $NGINX_WORKER_CONNS (preallocated, in its RSS at start), HAProxy maxconn $HAPROXY_MAXCONN"
  echo
  echo "| target | idle conns held | RSS after the wrk runs MiB | RSS at start MiB | RSS with conns MiB | KiB per connection |"
  echo "|---|---:|---:|---:|---:|---:|"
  awk '{
    printf "| %s | %d | %.1f | %.1f | %.1f | %.2f |\n",
      $1, $2, $3 / 1024, $4 / 1024, $5 / 1024, ($2 > 0 ? ($5 - $4) / $2 : 0)
  }' "$IDLE"
fi

if ((CHURN_APPS > 0)); then
  echo
  quick=()
  $QUICK && quick=(--quick)
  GATEWAY_BIN=$GATEWAY_BIN ROUNDS=$ROUNDS DURATION=$DURATION CHURN_APPS=$CHURN_APPS \
    "$ROOT/benches/churn.sh" "${quick[@]}" | sed '1s/^# /## /' || die "benches/churn.sh failed"
fi
STATUS=0
