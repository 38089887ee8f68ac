#!/usr/bin/env bash
# benches/cpu_per_request.sh — CPU cost per proxied request as user-space instructions, counted
# by valgrind's callgrind: for machines without perf's hardware counters (most VMs), and a
# number that does not move with other load on the machine.
#
# Each proxy (the caas gateway, nginx as a reverse proxy, HAProxy; one worker / thread each,
# the proxy settings of compare.sh) runs under `valgrind --tool=callgrind` twice: once serving
# BASE_REQUESTS and once REQUESTS requests (`GET /` with `Host: hello.caas.local` over CONNS
# keep-alive connections, sent by benches/fixed_load.py), then stops cleanly (gateway SIGTERM,
# nginx SIGQUIT, HAProxy SIGUSR1) so callgrind writes its totals. The backend (nginx, one
# worker, `return 200 "ok\n"`) runs natively. The script prints a markdown table of
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
#   TARGETS="gateway nginx-proxy haproxy"
#   GATEWAY_BIN=path     gateway binary to run as `$GATEWAY_BIN --config FILE` (skips cargo build)
#   KEEP=1               keep the temp dir (configs, logs, callgrind.out files) even on success
# Needs nginx, haproxy, curl, valgrind and python3. Under callgrind a proxy runs some 50×
# slower, on one CPU: --quick takes about 10 s, the default counts a minute or two.
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
    *) echo "cpu_per_request: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

if $QUICK; then
  REQUESTS=${REQUESTS:-2000}
  BASE_REQUESTS=${BASE_REQUESTS:-200}
else
  REQUESTS=${REQUESTS:-20000}
  BASE_REQUESTS=${BASE_REQUESTS:-2000}
fi
CONNS=${CONNS:-32}
TARGETS=${TARGETS:-"gateway nginx-proxy haproxy"}
KEEP=${KEEP:-0}
HOST_HEADER="hello.caas.local"

log() { printf 'cpu_per_request: %s\n' "$*" >&2; }
die() { printf 'cpu_per_request: error: %s\n' "$*" >&2; exit 1; }

[[ $REQUESTS =~ ^[0-9]+$ && $BASE_REQUESTS =~ ^[0-9]+$ ]] ||
  die "REQUESTS and BASE_REQUESTS take numbers, got '$REQUESTS' and '$BASE_REQUESTS'"
((REQUESTS > BASE_REQUESTS)) ||
  die "REQUESTS ($REQUESTS) must be larger than BASE_REQUESTS ($BASE_REQUESTS)"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS takes a positive integer, got '$CONNS'"
for target in $TARGETS; do
  case "$target" in
    gateway | nginx-proxy | haproxy) ;;
    *) die "unknown target '$target' in TARGETS (gateway, nginx-proxy, haproxy)" ;;
  esac
done

# --- tools ------------------------------------------------------------------------------

need_install=false
for tool in nginx haproxy curl; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || need_install=true
done
if $need_install; then
  log "nginx, haproxy or curl missing: running scripts/install-deps.sh"
  "$ROOT/scripts/install-deps.sh"
fi
export PATH="$PATH:/usr/sbin:/sbin"
for tool in nginx haproxy curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found even after scripts/install-deps.sh"
done
command -v valgrind >/dev/null 2>&1 || die "valgrind not found (Debian: apt-get install valgrind)"
command -v python3 >/dev/null 2>&1 || die "python3 not found"

# --- gateway binary (before any process starts: a failed build leaves nothing behind) ----

if [[ " $TARGETS " != *" gateway "* ]]; then
  GATEWAY_LABEL="not measured"
elif [[ -n ${GATEWAY_BIN:-} ]]; then
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/caas-cpu.XXXXXX")
# nginx workers run as an unprivileged user when started as root: let them in.
chmod 755 "$WORK"
PIDS=()
PROXY_PID="" # the proxy under valgrind, while it runs
STATUS=1

cleanup() {
  local pid
  for pid in $PROXY_PID "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in $PROXY_PID "${PIDS[@]}"; do
    # Give each a moment to exit cleanly (valgrind writes its output), then make sure.
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $STATUS -eq 0 && $KEEP != 1 ]]; then
    rm -rf "$WORK"
  else
    log "configs, logs and callgrind output kept in $WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback port below the kernel's ephemeral range, not in use in any state now, and
# not handed out before (as in compare.sh).
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

# Waits until something listens on 127.0.0.1:$2 (no request: it would be counted) or pid $3
# (process $1) dies; valgrind takes a while to start a program.
wait_listen() {
  local name=$1 port=$2 pid=$3
  for _ in $(seq 1 1200); do
    if [[ -n $(ss -Htln "sport = :$port" 2>/dev/null) ]]; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
      die "$name exited before listening on 127.0.0.1:$port (logs above, in $WORK)"
    fi
    sleep 0.1
  done
  tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
  die "$name did not listen on 127.0.0.1:$port within 120 s (logs in $WORK)"
}

free_port BACKEND_PORT
free_port PROXY_PORT

# nginx writes its temp files and pid under our dir, never under /var. $2: extra main-context
# lines.
nginx_common() {
  local name=$1
  mkdir -p "$WORK/$name"
  cat <<EOF
worker_processes 1;
daemon off;
$2
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
  nginx_common backend ""
  cat <<EOF
  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
  }
}
EOF
} >"$WORK/backend.conf"

# One process under valgrind: no master, the worker's loop in the process itself.
{
  nginx_common nginx-proxy "master_process off;"
  cat <<EOF
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$PROXY_PORT;
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
  bind 127.0.0.1:$PROXY_PORT
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
EOF

cat >"$WORK/gateway.toml" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
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
nginx -c "$WORK/backend.conf" -p "$WORK" -e "$WORK/backend.error.log" >"$WORK/backend.log" 2>&1 &
PIDS+=("$!")
backend_ok=false
for _ in $(seq 1 100); do
  if [[ $(curl -s --max-time 1 "http://127.0.0.1:$BACKEND_PORT/" || true) == ok ]]; then
    backend_ok=true
    break
  fi
  sleep 0.1
done
$backend_ok || die "the backend nginx did not answer on 127.0.0.1:$BACKEND_PORT (logs in $WORK)"

# --- measure -------------------------------------------------------------------------------

# The proxy's command line and the signal that stops it gracefully.
proxy_cmd() {
  case "$1" in
    # The file is polled for route changes every second; once an hour keeps that out.
    gateway) echo "$GATEWAY_BIN --config $WORK/gateway.toml --reload-interval-ms 3600000" ;;
    nginx-proxy) echo "nginx -c $WORK/nginx-proxy.conf -p $WORK -e $WORK/nginx-proxy.error.log" ;;
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
    --host-header "$HOST_HEADER" >"$WORK/load.$target.$n.txt" 2>&1 ||
    die "$target: $(tail -n 3 "$WORK/load.$target.$n.txt") (logs in $WORK)"
  kill -"$(stop_signal "$target")" "$PROXY_PID"
  for _ in $(seq 1 600); do
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$PROXY_PID" 2>/dev/null &&
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

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo
echo "## Instructions per proxied request (callgrind, user space only)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n 1 | awk '{print "HAProxy " $3}'), $(valgrind --version)"
echo "- gateway: $GATEWAY_LABEL"
echo "- 'GET /' with 'Host: $HOST_HEADER' over $CONNS keep-alive connections; backend: nginx, return 200 \"ok\\n\" (not counted)"
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
