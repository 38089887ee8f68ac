#!/usr/bin/env bash
# benches/compare.sh — side-by-side HTTP/1.1 load comparison on loopback: the caas gateway
# (examples/gateway, one worker) against nginx as a reverse proxy and HAProxy (one worker /
# thread each), and against the backend hit directly (the ceiling: a proxy that cost nothing).
# All four serve the same nginx backend (`return 200 "ok\n"`, one worker).
#
# wrk -t1 runs -c32 and -c256 against each target in turn, for several rounds (targets rotate
# their order each round), and the script prints a markdown table of the medians over rounds:
# requests/s, p50, p99, errors, and the ratio to nginx-proxy and to direct. Compare ratios
# measured in one run, never absolute numbers across runs or machines: on a small machine
# wrk, the proxy and the backend share the CPUs. Targets (DESIGN.md): ≥ 1.25× nginx at c32,
# ≥ 1.6× at c256, ahead of HAProxy at both, p99 no worse than HAProxy's.
#
# Usage: benches/compare.sh [--quick] [-h|--help]
#   --quick           1 round of 2 s (a smoke test, not a measurement)
# Environment:
#   ROUNDS=3          rounds (each round runs every target at every connection count)
#   DURATION=5        seconds per wrk run
#   CONNS="32 256"    connection counts
#   GATEWAY_BIN=path  gateway binary to run as `$GATEWAY_BIN --config FILE` (skips cargo build)
#   TASKSET=1         pin backend, proxies and wrk to separate CPUs (see "CPU pinning" below)
#   KEEP=1            keep the temp dir (configs, logs, raw wrk output) even on success
# Needs nginx, haproxy, wrk and curl; runs scripts/install-deps.sh when one is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

QUICK=false
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=true ;;
    -h | --help) usage; exit 0 ;;
    *) echo "compare: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

if $QUICK; then
  ROUNDS=${ROUNDS:-1}
  DURATION=${DURATION:-2}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-5}
fi
CONNS=${CONNS:-"32 256"}
TASKSET=${TASKSET:-0}
KEEP=${KEEP:-0}
HOST_HEADER="hello.caas.local"

log() { printf 'compare: %s\n' "$*" >&2; }
die() { printf 'compare: error: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------

need_install=false
for tool in nginx haproxy wrk curl; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || need_install=true
done
if $need_install; then
  log "nginx, haproxy, wrk or curl missing: running scripts/install-deps.sh"
  "$ROOT/scripts/install-deps.sh"
fi
export PATH="$PATH:/usr/sbin:/sbin"
for tool in nginx haproxy wrk curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found even after scripts/install-deps.sh"
done

# --- gateway binary (before any process starts: a failed build leaves nothing behind) ----

if [[ -n ${GATEWAY_BIN:-} ]]; then
  [[ -x $GATEWAY_BIN ]] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
  GATEWAY_LABEL="gateway ($GATEWAY_BIN)"
else
  log "building the gateway: cargo build --release --example gateway"
  (cd "$ROOT" && cargo build --release --example gateway) ||
    die "cargo build --release --example gateway failed"
  GATEWAY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/gateway"
  [[ -x $GATEWAY_BIN ]] || die "built, but $GATEWAY_BIN is not there (CARGO_TARGET_DIR?)"
  GATEWAY_LABEL="caas gateway (examples/gateway, release)"
fi

# --- temp dir, processes, cleanup -----------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/caas-compare.XXXXXX")
# nginx workers run as an unprivileged user when started as root: let them in.
chmod 755 "$WORK"
PIDS=()
STATUS=1

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    # Give each a moment to exit cleanly, then make sure.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $STATUS -eq 0 && $KEEP != 1 ]]; then
    rm -rf "$WORK"
  else
    log "configs, logs and raw wrk output kept in $WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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

# A free loopback port below the kernel's ephemeral range (outgoing connections of wrk, curl
# and the proxies take ports from that range, and a listener can't bind one in use), not in
# use in any state now, and not handed out before.
read -r EPHEMERAL_LO _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LO=32768
if ((EPHEMERAL_LO > 12000)); then
  PORT_LO=10000 PORT_SPAN=$((EPHEMERAL_LO - 10000))
else
  PORT_LO=$((EPHEMERAL_LO / 2)) PORT_SPAN=$((EPHEMERAL_LO / 2))
fi
USED_PORTS=" "
# Sets the variable named $1 (not a $(subshell): USED_PORTS must persist).
free_port() {
  local port in_use
  in_use=" $(ss -Htan 2>/dev/null | awk '{sub(/.*:/, "", $4); print $4}' | tr '\n' ' ') "
  for _ in $(seq 1 200); do
    port=$((PORT_LO + (RANDOM * 32768 + RANDOM) % PORT_SPAN))
    [[ $in_use == *" $port "* || $USED_PORTS == *" $port "* ]] && continue
    USED_PORTS+="$port "
    printf -v "$1" '%s' "$port"
    return 0
  done
  die "no free loopback port found"
}

# Starts "$@" in the background, logging to $WORK/$name.log, and records its pid.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  eval "PID_${name//-/_}=$!"
}

# Waits until http://127.0.0.1:$port/ answers (any status) or the process dies.
wait_http() {
  local name=$1 port=$2 pid
  pid=$(eval "echo \$PID_${name//-/_}")
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
      die "$name exited before answering on 127.0.0.1:$port (logs above, in $WORK)"
    fi
    sleep 0.1
  done
  tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
  die "$name did not answer on 127.0.0.1:$port within 10 s (logs in $WORK)"
}

free_port BACKEND_PORT
free_port NGINX_PORT
free_port HAPROXY_PORT
free_port GATEWAY_PORT

# nginx writes its temp files and pid under our dir, never under /var.
nginx_common() {
  local name=$1
  mkdir -p "$WORK/$name"
  cat <<EOF
worker_processes 1;
daemon off;
pid $WORK/$name/nginx.pid;
error_log $WORK/$name.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$name/body;
  proxy_temp_path $WORK/$name/proxy;
  fastcgi_temp_path $WORK/$name/fastcgi;
  uwsgi_temp_path $WORK/$name/uwsgi;
  scgi_temp_path $WORK/$name/scgi;
  keepalive_requests 100000;
EOF
}

{
  nginx_common backend
  cat <<EOF
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
  }
}
EOF
} >"$WORK/backend.conf"

{
  nginx_common nginx-proxy
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$WORK/nginx-proxy.conf"

cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
  pidfile $WORK/haproxy.pid
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
EOF

cat >"$WORK/gateway.toml" <<EOF
listen = "127.0.0.1:$GATEWAY_PORT"
domains = ["caas.local"]
workers = 1
[apps.hello]
default_version = "v1"
[apps.hello.versions.v1]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
EOF

nginx -t -q -c "$WORK/backend.conf" -p "$WORK" -e "$WORK/backend.error.log" ||
  die "nginx rejected $WORK/backend.conf"
nginx -t -q -c "$WORK/nginx-proxy.conf" -p "$WORK" -e "$WORK/nginx-proxy.error.log" ||
  die "nginx rejected $WORK/nginx-proxy.conf"
haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejected $WORK/haproxy.cfg"

log "temp dir $WORK"
log "backend :$BACKEND_PORT  gateway :$GATEWAY_PORT  nginx-proxy :$NGINX_PORT  haproxy :$HAPROXY_PORT"

start backend "${PIN_BACKEND[@]}" nginx -c "$WORK/backend.conf" -p "$WORK" -e "$WORK/backend.error.log"
wait_http backend "$BACKEND_PORT"
start nginx-proxy "${PIN_PROXY[@]}" nginx -c "$WORK/nginx-proxy.conf" -p "$WORK" -e "$WORK/nginx-proxy.error.log"
start haproxy "${PIN_PROXY[@]}" haproxy -db -f "$WORK/haproxy.cfg"
# Per-request logging would measure the logger; warnings still reach gateway.log.
RUST_LOG=${RUST_LOG:-warn} start gateway "${PIN_PROXY[@]}" "$GATEWAY_BIN" --config "$WORK/gateway.toml"
wait_http nginx-proxy "$NGINX_PORT"
wait_http haproxy "$HAPROXY_PORT"
wait_http gateway "$GATEWAY_PORT"

# Each target must answer 200 "ok" through the Host header before anything is measured.
check_target() {
  local name=$1 url=$2 code body
  body=$(curl -s --max-time 5 -H "Host: $HOST_HEADER" -o - -w '\n%{http_code}' "$url") || true
  code=${body##*$'\n'}
  body=${body%$'\n'*}
  body=${body%$'\n'}
  if [[ $code != 200 || $body != ok ]]; then
    tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
    die "$name: GET $url with 'Host: $HOST_HEADER' answered ${code:-nothing} (body: ${body:0:200}), want 200 \"ok\"; check its config ($WORK) and logs above"
  fi
}
check_target backend "http://127.0.0.1:$BACKEND_PORT/"
check_target gateway "http://127.0.0.1:$GATEWAY_PORT/"
check_target nginx-proxy "http://127.0.0.1:$NGINX_PORT/"
check_target haproxy "http://127.0.0.1:$HAPROXY_PORT/"

# --- measure -------------------------------------------------------------------------------

TARGETS=(direct gateway nginx-proxy haproxy)
declare -A URL=(
  [direct]="http://127.0.0.1:$BACKEND_PORT/"
  [gateway]="http://127.0.0.1:$GATEWAY_PORT/"
  [nginx-proxy]="http://127.0.0.1:$NGINX_PORT/"
  [haproxy]="http://127.0.0.1:$HAPROXY_PORT/"
)

# wrk latency → milliseconds ("812.00us", "1.23ms", "1.01s").
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.3f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "nan"
  }'
}

# One wrk run → "rps p50_ms p99_ms non2xx3xx socket_errors" on stdout.
parse_wrk() {
  local f=$1 rps p50 p99 status sock
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  p50=$(awk '$1 == "50%" {print $2}' "$f")
  p99=$(awk '$1 == "99%" {print $2}' "$f")
  status=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
  sock=$(awk '/Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s + 0}' "$f")
  [[ -n $rps && -n $p50 && -n $p99 ]] || die "could not parse wrk output $f: $(tail -n 5 "$f")"
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${status:-0} ${sock:-0}"
}

RESULTS="$WORK/results.txt" # round conns target rps p50 p99 status sock
: >"$RESULTS"
total=$((ROUNDS * $(wc -w <<<"$CONNS") * ${#TARGETS[@]}))
n=0
for ((round = 1; round <= ROUNDS; round++)); do
  for conns in $CONNS; do
    # Rotate the order each round so no target always runs first (or right after another).
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
      target=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
      n=$((n + 1))
      out="$WORK/wrk.r$round.c$conns.$target.txt"
      log "[$n/$total] round $round, c$conns, $target"
      "${PIN_WRK[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" --latency \
        -H "Host: $HOST_HEADER" "${URL[$target]}" >"$out" 2>&1 ||
        die "wrk failed against $target: $(tail -n 5 "$out")"
      echo "$round $conns $target $(parse_wrk "$out")" >>"$RESULTS"
    done
  done
done

# --- report --------------------------------------------------------------------------------

# Median of the numbers on stdin.
median() {
  sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
  }'
}
col() { # conns target column → values over rounds
  awk -v c="$1" -v t="$2" -v k="$3" '$2 == c && $3 == t {print $k}' "$RESULTS"
}
sum() { awk '{s += $1} END {print s + 0}'; }

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "## caas gateway vs nginx vs HAProxy (loopback, wrk -t1, medians of $ROUNDS round(s) × ${DURATION}s)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n 1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -n 1 | awk '{print "wrk " $2}')"
echo "- gateway: $GATEWAY_LABEL"
echo "- CPU pinning: $([[ ${#PIN_PROXY[@]} -gt 0 ]] && echo "backend ${PIN_BACKEND[*]: -1}, proxy ${PIN_PROXY[*]: -1}, wrk ${PIN_WRK[*]: -1}" || echo none)"
echo "- every request carries 'Host: $HOST_HEADER'; backend: nginx, 1 worker, return 200 \"ok\\n\""
echo
echo "| conns | target | req/s | req/s min–max | p50 ms | p99 ms | non-2xx/3xx | socket errors | × nginx-proxy | × direct |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for conns in $CONNS; do
  nginx_rps=$(col "$conns" nginx-proxy 4 | median)
  direct_rps=$(col "$conns" direct 4 | median)
  for target in "${TARGETS[@]}"; do
    rps=$(col "$conns" "$target" 4 | median)
    lo=$(col "$conns" "$target" 4 | awk 'NR == 1 || $1 < m {m = $1} END {print m + 0}')
    hi=$(col "$conns" "$target" 4 | awk 'NR == 1 || $1 > m {m = $1} END {print m + 0}')
    p50=$(col "$conns" "$target" 5 | median)
    p99=$(col "$conns" "$target" 6 | median)
    status=$(col "$conns" "$target" 7 | sum)
    sock=$(col "$conns" "$target" 8 | sum)
    awk -v c="$conns" -v t="$target" -v r="$rps" -v lo="$lo" -v hi="$hi" -v p50="$p50" \
      -v p99="$p99" -v st="$status" -v so="$sock" -v n="$nginx_rps" -v d="$direct_rps" 'BEGIN {
        printf "| %s | %s | %.0f | %.0f–%.0f | %.3f | %.3f | %d | %d | %.2f× | %.2f× |\n",
          c, t, r, lo, hi, p50, p99, st, so, (n > 0 ? r / n : 0), (d > 0 ? r / d : 0)
      }'
  done
done
echo
echo "Errors are summed over rounds; req/s min–max is the spread over rounds; everything else is"
echo "a median over rounds. Raw wrk output: KEEP=1."
STATUS=0
