# shellcheck shell=bash
# benches/lib.sh — the setup the benchmark scripts (compare.sh, churn.sh, reconnect.sh,
# write_cost.sh, idle_sharded.sh, in_vm.sh, cpu_per_request.sh) share, sourced by each (not
# run on its own): flags, tool checks, the gateway build, the temp dir and its cleanup, free
# ports, starting processes and waiting for them, reading their RSS, and the configs of the
# backend and of the three proxies. Each benchmark's own logic (what it runs, measures and
# prints) stays in its script.
#
# The sourcing script sets BENCH_NAME (the prefix of its messages) before sourcing. The
# functions below use these globals:
#   ROOT                 the repository (set here)
#   HOST_HEADER          the Host every request carries: app `hello` under domain caas.local
#   WORK                 the temp dir (make_workdir): configs, logs, pids, temp files
#   PIDS                 processes to stop on exit (start adds to it); STATUS=0 on success
#   BACKEND_PORT         the backend nginx's port (the script picks it with free_port)
#   PIN_BACKEND          command prefix for the backend (compare.sh: taskset), empty here
#   NGINX_WORKER_CONNS   nginx worker_connections; HAPROXY_MAXCONN: HAProxy's maxconn (4096
#                        here; compare.sh raises both for its idle connections)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST_HEADER="hello.caas.local"
PIN_BACKEND=()
NGINX_WORKER_CONNS=4096
HAPROXY_MAXCONN=4096

# --- messages and flags ---------------------------------------------------------------------

# Prints a progress line on stderr, prefixed with the script's name.
log() { printf '%s: %s\n' "$BENCH_NAME" "$*" >&2; }

# Prints an error on stderr and exits 1 (the EXIT trap then cleans up).
die() { printf '%s: error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

# Prints the sourcing script's usage: its header comment, from line 2 to `set -euo`.
usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

# Reads the flags both scripts take: sets QUICK=true for --quick, prints the usage for
# -h/--help and exits, and exits 2 with the usage on anything else.
# shellcheck disable=SC2034 # QUICK is read by the sourcing script
parse_flags() {
  local arg
  QUICK=false
  for arg in "$@"; do
    case "$arg" in
      --quick) QUICK=true ;;
      -h | --help) usage; exit 0 ;;
      *) echo "$BENCH_NAME: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
  done
}

# --- tools and the gateway binary -------------------------------------------------------------

# Makes sure the commands named exist: runs scripts/install-deps.sh once when one is missing,
# puts /usr/sbin and /sbin on PATH (nginx and haproxy live there) and dies naming any still
# missing.
require_tools() {
  local tool missing=false names
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing=true
  done
  if $missing; then
    # "nginx, haproxy or curl"
    names=${*: -1}
    if (($# > 1)); then
      names="$(printf '%s, ' "${@:1:$#-1}")"
      names="${names%, } or ${*: -1}"
    fi
    log "$names missing: running scripts/install-deps.sh"
    "$ROOT/scripts/install-deps.sh"
  fi
  export PATH="$PATH:/usr/sbin:/sbin"
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found even after scripts/install-deps.sh"
  done
}

# Sets GATEWAY_BIN and GATEWAY_LABEL (for the report): the GATEWAY_BIN the user gave, checked,
# or `cargo build --release --example gateway`. Called before any process starts, so a failed
# build leaves nothing behind.
# shellcheck disable=SC2034 # GATEWAY_LABEL is read by the sourcing script
build_gateway() {
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
}

# Sets ROUTE_CHURN_BIN and OPEN_LOOP_BIN (examples/route_churn, which seeds and churns the
# store, and examples/open_loop, the load): the paths the user gave, checked, or built with
# cargo. Called before any process starts, as build_gateway.
build_churn_tools() {
  if [[ -z ${ROUTE_CHURN_BIN:-} || -z ${OPEN_LOOP_BIN:-} ]]; then
    log "building the store writer and the load: cargo build --release --example route_churn --example open_loop"
    (cd "$ROOT" && cargo build --release --example route_churn --example open_loop) ||
      die "cargo build --release --example route_churn --example open_loop failed"
    ROUTE_CHURN_BIN=${ROUTE_CHURN_BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/route_churn"}
    OPEN_LOOP_BIN=${OPEN_LOOP_BIN:-"${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/open_loop"}
  fi
  [[ -x $ROUTE_CHURN_BIN ]] || die "ROUTE_CHURN_BIN=$ROUTE_CHURN_BIN is not an executable file"
  [[ -x $OPEN_LOOP_BIN ]] || die "OPEN_LOOP_BIN=$OPEN_LOOP_BIN is not an executable file"
}

# Sets BUILDS, the builds to measure (gateway; baseline first when BASELINE_BIN is set, which
# must then be an executable file), and ORDER, their turns over $1 rounds, taking turns
# (baseline, gateway, gateway, baseline, ...) so that neither always goes first; with $2,
# every round starts with that entry too (write_cost.sh's "none": no gateway at all).
turn_order() {
  local rounds=$1 first=${2:-} turn i
  BUILDS=(gateway)
  if [[ -n ${BASELINE_BIN:-} ]]; then
    [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN=$BASELINE_BIN is not an executable file"
    BUILDS=(baseline gateway)
  fi
  ORDER=()
  for ((turn = 0; turn < rounds; turn++)); do
    [[ -n $first ]] && ORDER+=("$first")
    if ((turn % 2)); then
      for ((i = ${#BUILDS[@]} - 1; i >= 0; i--)); do ORDER+=("${BUILDS[$i]}"); done
    else
      ORDER+=("${BUILDS[@]}")
    fi
  done
}

# --- temp dir, processes, cleanup -------------------------------------------------------------

# Creates the temp dir WORK ($TMPDIR/$1.XXXXXX) and starts with no processes and STATUS=1
# (the script sets STATUS=0 once it has printed its report).
make_workdir() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  # nginx workers run as an unprivileged user when started as root: let them in.
  chmod 755 "$WORK"
  PIDS=()
  STATUS=1
}

# Installs the traps: function $1 runs on exit; Ctrl-C and SIGTERM exit through it (130, 143).
on_exit() {
  # shellcheck disable=SC2064 # the function name is fixed now, on purpose
  trap "$1" EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Removes WORK after a successful run unless KEEP=1; otherwise says where it is and that it
# holds $1 ("configs, logs and ...").
finish_workdir() {
  if [[ $STATUS -eq 0 && ${KEEP:-0} != 1 ]]; then
    rm -rf "$WORK"
  else
    log "$1 kept in $WORK"
  fi
}

# Waits up to $2 tenths of a second for pid $1 to exit; fails if it still runs.
wait_exit() {
  local pid=$1 tenths=$2
  for _ in $(seq 1 "$tenths"); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  ! kill -0 "$pid" 2>/dev/null
}

# Sends SIGTERM to every pid after $1, gives each up to $1 tenths of a second to exit
# cleanly, then SIGKILLs and reaps it.
kill_and_reap() {
  local tenths=$1 pid
  shift
  for pid in "$@"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    wait_exit "$pid" "$tenths" || true
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}

# Starts "$@" in the background as process $name ($1), logging to $WORK/$name.log (appending:
# a process restarted later logs to the same file); records its pid in PIDS and in PID_$name
# (dashes as underscores; read it with pid_of).
start() {
  local name=$1
  shift
  "$@" >>"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  eval "PID_${name//-/_}=$!"
}

# The pid of the process that start recorded as $1.
pid_of() { eval "echo \$PID_${1//-/_}"; }

# The median of the numbers on stdin, one a line ("nan" when there are none).
median() {
  sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2
  }'
}

# The sum of the numbers on stdin, one a line.
sum() { awk '{s += $1} END {print s + 0}'; }

# Every line of file $1 as a row of a markdown table, its fields as the cells.
markdown_rows() { awk '{row = "|"; for (i = 1; i <= NF; i++) row = row " " $i " |"; print row}' "$1"; }

# Field $4 of the lines of file $1 whose first two fields are $2 and $3, one a line.
field_where() { awk -v a="$2" -v b="$3" -v k="$4" '$1 == a && $2 == b {print $k}' "$1"; }

# A process and its descendants, one pid a line.
proc_tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1" || true); do
    proc_tree "$child"
  done
}

# VmRSS in KiB of a process and all its descendants (nginx: the master and its worker).
rss_kib() {
  local kib child
  kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || true)
  kib=${kib:-0}
  for child in $(pgrep -P "$1" || true); do
    kib=$((kib + $(rss_kib "$child")))
  done
  echo "$kib"
}

# Polls $1 for a line starting with "$2 " while pid $3 lives, for up to $4 seconds.
await_line() {
  local file=$1 prefix=$2 pid=$3 secs=$4 line
  for _ in $(seq 1 $((secs * 10))); do
    line=$(grep -m 1 "^$prefix " "$file" 2>/dev/null || true)
    if [[ -n $line ]]; then
      echo "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# CPU time (user + system, clock ticks) of a process and its descendants.
cpu_ticks() {
  local pid total=0 t
  for pid in $(proc_tree "$1"); do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
# shellcheck disable=SC2034 # read by the sourcing scripts
CLK_TCK=$(getconf CLK_TCK)

# The machine's CPU time from /proc/stat, all CPUs, in clock ticks: "TOTAL STEAL IDLE". Steal
# is time a virtual CPU of this machine wanted to run and the hypervisor ran something else;
# idle is time no task wanted it (idle and iowait); TOTAL counts user, nice, system, idle,
# iowait, irq, softirq and steal (guest time is already in user and nice).
machine_ticks() {
  awk '$1 == "cpu" {t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9, $5 + $6; exit}' /proc/stat
}
# The share of the machine's CPU time between two machine_ticks readings "$2" and "$3" that
# field $1 of them holds (2: steal, 3: idle), in % with one decimal.
tick_share() {
  awk -v k="$1" -v a="$2" -v b="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " "); t = y[1] - x[1]
    printf "%.1f", (t > 0 ? (y[k] - x[k]) / t * 100 : 0)
  }'
}
# What the hypervisor took between two machine_ticks readings, and what no task wanted.
steal_percent() { tick_share 2 "$1" "$2"; }
idle_percent() { tick_share 3 "$1" "$2"; }

# STEAL_MAX (10 %) and STEAL_RETRIES (2), checked: for least_steal.
steal_settings() {
  STEAL_MAX=${STEAL_MAX:-10}
  STEAL_RETRIES=${STEAL_RETRIES:-2}
  [[ $STEAL_MAX =~ ^[0-9]+([.][0-9]+)?$ ]] || die "STEAL_MAX takes a percentage, got '$STEAL_MAX'"
  [[ $STEAL_RETRIES =~ ^[0-9]+$ ]] ||
    die "STEAL_RETRIES takes a number (0: never again), got '$STEAL_RETRIES'"
}

# Runs the measurement "$@" and runs it again while the hypervisor took more than STEAL_MAX %
# of the machine during it, up to STEAL_RETRIES more times: a run that lost a fifth of the
# machine measures the host. "$@" sets ATTEMPT_STEAL (its steal_percent); after each attempt
# that lost the least so far, least_steal calls keep_attempt, which the script defines to
# keep what that attempt measured. Sets KEPT_STEAL, ATTEMPT_STEALS (each attempt's steal, in
# order) and ATTEMPTS (how many ran). Call it as a plain command, not in a condition, so that
# `set -e` still stops the script on a failure inside the measurement.
least_steal() {
  local attempt
  KEPT_STEAL="" ATTEMPT_STEALS="" ATTEMPTS=0
  for ((attempt = 0; attempt <= STEAL_RETRIES; attempt++)); do
    # shellcheck disable=SC2034 # ATTEMPTS: for the caller
    ATTEMPTS=$((attempt + 1))
    "$@"
    # shellcheck disable=SC2153 # ATTEMPT_STEAL: set by the measurement "$@"
    ATTEMPT_STEALS+="${ATTEMPT_STEALS:+ }$ATTEMPT_STEAL"
    if [[ -z $KEPT_STEAL ]] || awk -v a="$ATTEMPT_STEAL" -v b="$KEPT_STEAL" 'BEGIN {exit !(a < b)}'; then
      KEPT_STEAL=$ATTEMPT_STEAL
      keep_attempt
    fi
    awk -v a="$ATTEMPT_STEAL" -v m="$STEAL_MAX" 'BEGIN {exit !(a > m)}' || break
    ((attempt == STEAL_RETRIES)) ||
      log "  the hypervisor took $ATTEMPT_STEAL % of the machine (STEAL_MAX=$STEAL_MAX): again"
  done
}

# After least_steal: when the measurement ran more than once, appends to file $2 a line
# naming it ($1, tab-separated from what follows) with the kept and each attempt's steal.
note_reruns() {
  ((ATTEMPTS == 1)) || printf '%s\t%s\t%s\n' "$1" "$KEPT_STEAL" "$ATTEMPT_STEALS" >>"$2"
}

# The measurements note_reruns wrote to file $1, under the heading $2, one item each.
list_reruns() {
  [[ -s $1 ]] || return 0
  printf '\n%s (steal %% of each attempt, kept):\n\n' "$2"
  awk -F '\t' '{
    n = split($3, a, " "); s = ""; for (i = 1; i <= n; i++) s = s (i > 1 ? ", " : "") a[i]
    printf "- %s: %s %%, kept %s %%\n", $1, s, $2
  }' "$1"
}

# Context switches and CPU migrations of a process and its descendants, every thread:
# "VOLUNTARY INVOLUNTARY MIGRATIONS". Voluntary: the thread waited (for events, a lock);
# involuntary: the scheduler preempted it to run another task on its CPU; migrations: the
# scheduler moved it to another CPU (0 where the kernel has no /proc/PID/task/*/sched).
ctx_switches() {
  local pid
  for pid in $(proc_tree "$1"); do
    cat "/proc/$pid/task/"*/status "/proc/$pid/task/"*/sched 2>/dev/null || true
  done | awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {i += $2}
    /^se.nr_migrations/ {m += $3} END {print v + 0, i + 0, m + 0}'
}

# --- ports and readiness ----------------------------------------------------------------------

USED_PORTS=" "
# Sets the variable named $1 (not a $(subshell): USED_PORTS must persist) to a free loopback
# port below the kernel's ephemeral range (outgoing connections of wrk, curl and the proxies
# take ports from that range, and a listener can't bind one in use), not in use in any state
# now, and not handed out before.
free_port() {
  local lo span ephemeral_lo port in_use
  read -r ephemeral_lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || ephemeral_lo=32768
  if ((ephemeral_lo > 12000)); then
    lo=10000 span=$((ephemeral_lo - 10000))
  else
    lo=$((ephemeral_lo / 2)) span=$((ephemeral_lo / 2))
  fi
  in_use=" $(ss -Htan 2>/dev/null | awk '{sub(/.*:/, "", $4); print $4}' | tr '\n' ' ') "
  for _ in $(seq 1 200); do
    port=$((lo + (RANDOM * 32768 + RANDOM) % span))
    [[ $in_use == *" $port "* || $USED_PORTS == *" $port "* ]] && continue
    USED_PORTS+="$port "
    printf -v "$1" '%s' "$port"
    return 0
  done
  die "no free loopback port found"
}

# Polls `"${@:5}"` every 0.1 s until it succeeds. Dies, showing the tail of process $1's logs,
# if pid $2 exits first ("$1 exited before ${3}ing on $4") or $5 seconds pass ("$1 did not $3
# on $4 within N s").
await_ready() {
  local name=$1 pid=$2 verb=$3 addr=$4 secs=$5
  shift 5
  for _ in $(seq 1 $((secs * 10))); do
    "$@" && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
      die "$name exited before ${verb}ing on $addr (logs above, in $WORK)"
    fi
    sleep 0.1
  done
  tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
  die "$name did not $verb on $addr within $secs s (logs in $WORK)"
}

# Waits up to 10 s until http://127.0.0.1:$2/ answers (any status) or process $1 (started
# with start) dies.
wait_http() {
  await_ready "$1" "$(pid_of "$1")" answer "127.0.0.1:$2" 10 \
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$2/"
}

# Waits up to 120 s until something listens on 127.0.0.1:$2, sending no request (it would be
# counted), or pid $3 (process $1) dies; valgrind takes a while to start a program.
wait_listen() {
  await_ready "$1" "$3" listen "127.0.0.1:$2" 120 listening "$2"
}

# Whether something listens on TCP 127.0.0.1:$1.
listening() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }

# Dies unless GET $2 with the Host header answers 200 "ok", showing process $1's log tails.
check_ok() {
  local name=$1 url=$2 body code
  body=$(curl -s --max-time 5 -H "Host: $HOST_HEADER" -o - -w '\n%{http_code}' "$url") || true
  code=${body##*$'\n'}
  body=${body%$'\n'*}
  body=${body%$'\n'}
  if [[ $code != 200 || $body != ok ]]; then
    tail -n 20 "$WORK/$name.log" "$WORK/$name.error.log" 2>/dev/null >&2 || true
    die "$name: GET $url with 'Host: $HOST_HEADER' answered ${code:-nothing} (body: ${body:0:200}), want 200 \"ok\"; check its config ($WORK) and logs above"
  fi
}

# Dies unless process $1 at $2 (a proxy's base URL) sends the backend the forwarded fields
# each proxy is configured to add (X-Forwarded-For 127.0.0.1, -Proto http, -Host the Host):
# the proxies compared do the same job.
check_forwarded() {
  local name=$1 url=$2 got want="127.0.0.1 http $HOST_HEADER"
  got=$(curl -s --max-time 5 -H "Host: $HOST_HEADER" "${url%/}/_forwarded") || true
  [[ $got == "$want" ]] ||
    die "$name: the backend saw forwarded fields '${got:-nothing}', want '$want'; check its config ($WORK)"
}

# --- configs ----------------------------------------------------------------------------------

# The start of the nginx config of process $1 (backend, nginx-proxy), on stdout: one worker,
# in the foreground, NGINX_WORKER_CONNS connections, no access log, 100,000 requests per
# client connection; pid, error log and temp files under WORK, never under /var. $2: more
# main-context lines (may be empty). Leaves `http {` open for the servers.
nginx_common() {
  local name=$1 main=$2
  mkdir -p "$WORK/$name"
  cat <<EOF
worker_processes 1;
daemon off;
$main
pid $WORK/$name/nginx.pid;
error_log $WORK/$name.error.log warn;
events { worker_connections $NGINX_WORKER_CONNS; }
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

# Dies unless $2 is a body size (0, N, Nk or Nm bytes), naming the setting $1.
check_size() {
  [[ $2 =~ ^[0-9]+[kKmM]?$ ]] || die "$1 takes 0, N, Nk or Nm (bytes), got '$2'"
}

# A body size → bytes ("8k" → 8192); 0 is the "ok\n" at /.
size_bytes() {
  case "$1" in
    *[kK]) echo $((${1%?} * 1024)) ;;
    *[mM]) echo $((${1%?} * 1024 * 1024)) ;;
    *) echo $((10#$1)) ;;
  esac
}

# Writes a file of exactly each size in $@ (0 skipped) under $WORK/body, for the backend to
# serve at /SIZE with sendfile: sets BODY_HTTP and BODY_LOCATIONS, write_backend_conf's $2
# and $3.
write_body_files() {
  local size
  mkdir -p "$WORK/body"
  BODY_HTTP="  default_type application/octet-stream;"$'\n'"  sendfile on;"$'\n'
  BODY_LOCATIONS=""
  for size in "$@"; do
    [[ $size == 0 ]] && continue
    head -c "$(size_bytes "$size")" /dev/zero | tr '\0' x >"$WORK/body/$size"
    BODY_LOCATIONS+="    location = /$size { alias $WORK/body/$size; }"$'\n'
  done
}

# Writes $WORK/backend.conf: the backend nginx on BACKEND_PORT, `return 200 "ok\n"` at /, and
# at /_forwarded the X-Forwarded-For, -Proto and -Host fields it received (check_forwarded).
# $1: more main-context lines, $2: more http-context lines, $3: more `location` lines.
write_backend_conf() {
  {
    nginx_common backend "$1"
    cat <<EOF
$2  server {
    listen 127.0.0.1:$BACKEND_PORT;
    location / { return 200 "ok\n"; }
    location = /_forwarded {
      return 200 "\$http_x_forwarded_for \$http_x_forwarded_proto \$http_x_forwarded_host\n";
    }
$3  }
}
EOF
  } >"$WORK/backend.conf"
}

# Writes $WORK/nginx-proxy.conf: nginx as a reverse proxy on port $1 to the backend over
# keep-alive upstream connections (up to 64 idle ones kept), adding the X-Forwarded-For,
# -Proto and -Host fields the gateway adds, so all three proxies do the same job. $2: more
# main-context lines.
# $3 (optional): a TLS port too, with the certificate of make_tls_cert (TLS 1.2 and 1.3:
# nginx 1.22's default list stops at 1.2), session cache and tickets on. $4 (optional): a
# second TLS port with session resumption off (no tickets, no cache): full handshakes only.
write_nginx_proxy_conf() {
  local tls="" full="" location cert
  cert="    ssl_certificate $WORK/tls/cert.pem;
    ssl_certificate_key $WORK/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;"
  location='    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }'
  if [[ -n ${3:-} ]]; then
    tls="    listen 127.0.0.1:$3 ssl;
$cert
    ssl_session_cache shared:SSL:10m;"
  fi
  if [[ -n ${4:-} ]]; then
    full="  server {
    listen 127.0.0.1:$4 ssl;
$cert
    ssl_session_cache off;
    ssl_session_tickets off;
$location
  }"
  fi
  {
    nginx_common nginx-proxy "$2"
    cat <<EOF
  upstream backend {
    server 127.0.0.1:$BACKEND_PORT;
    keepalive 64;
    keepalive_requests 100000;
  }
  server {
    listen 127.0.0.1:$1;
$tls
$location
  }
$full
}
EOF
  } >"$WORK/nginx-proxy.conf"
}

# Writes $WORK/haproxy.cfg: HAProxy, one thread, HTTP mode with keep-alive on both sides and
# upstream connections shared between clients, on port $1 to the backend, adding the
# X-Forwarded-For, -Proto and -Host fields the gateway adds. HAPROXY_MAXCONN
# client connections: HAProxy asks for 2×maxconn files and by default stops when it can't
# have them; with `no strict-limits` it warns and runs on what ulimit -n allows (enough: an
# idle client connection has no server side). Idle keep-alive client connections stay open
# 60 s, long enough for compare.sh to hold many and read the RSS. $2 (optional): a TLS port
# too, with the certificate of make_tls_cert (resumption by tickets). $3 (optional): a second
# TLS port with session resumption off: no tickets there, and no session cache at all (it is
# global; the first port's clients resume by tickets, which need none).
write_haproxy_cfg() {
  local tls="" full="" cache=""
  [[ -z ${2:-} ]] || tls="  bind 127.0.0.1:$2 ssl crt $WORK/tls/haproxy.pem alpn http/1.1"
  if [[ -n ${3:-} ]]; then
    full="  bind 127.0.0.1:$3 ssl crt $WORK/tls/haproxy.pem alpn http/1.1 no-tls-tickets"
    cache="  tune.ssl.cachesize 0"
  fi
  cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $HAPROXY_MAXCONN
  no strict-limits
  pidfile $WORK/haproxy.pid
$cache
${HAPROXY_GLOBAL:-}
defaults
  mode http
  maxconn $HAPROXY_MAXCONN
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 60s
frontend fe
  bind 127.0.0.1:$1
$tls
$full
  option forwardfor
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
EOF
}

# Writes $WORK/$1.toml (gateway, gateway-b, gateway-log, gateway-full): the gateway, one
# worker, on port $2, routing HOST_HEADER (app hello, version v1) to the backend. $3 (may be
# empty): a TLS port too, with the certificate of make_tls_cert; $4: more top-level keys;
# $5: more keys of its [tls] table.
write_gateway_toml() {
  local tls_listen="" tls=""
  if [[ -n ${3:-} ]]; then
    tls_listen="listen_tls = \"127.0.0.1:$3\""
    tls="[tls]
certificates = [{ cert = \"$WORK/tls/cert.pem\", key = \"$WORK/tls/key.pem\" }]
${5:-}"
  fi
  cat >"$WORK/$1.toml" <<EOF
listen = "127.0.0.1:$2"
$tls_listen
${4:-}
domains = ["caas.local"]
workers = 1
$tls
[apps.hello]
default_version = "v1"
[apps.hello.versions.v1]
endpoints = ["127.0.0.1:$BACKEND_PORT"]
EOF
}

# Starts a throw-away ZooKeeper in $WORK/zk on a free port; sets ZK_PORT and ZK (its
# connect string). The script's cleanup stops it (scripts/zk.sh stop "$WORK/zk").
start_zk() {
  free_port ZK_PORT
  "$ROOT/scripts/zk.sh" start "$WORK/zk" "$ZK_PORT" >"$WORK/zk-start.log" 2>&1 ||
    die "ZooKeeper did not start: $(tail -n 5 "$WORK/zk-start.log")"
  ZK="127.0.0.1:$ZK_PORT"
}

# Starts gateway build $2 as process $1 (config $WORK/$1.toml) on a free port, GW_PORT, fed by
# the ZooKeeper at ZK, and waits until it routes app{$3 - 1}, the last of the $3 apps seeded:
# until it has read the whole tree.
start_zk_gateway() {
  local name=$1 bin=$2 apps=$3 code=""
  free_port GW_PORT
  write_gateway_toml "$name" "$GW_PORT" "" ""
  start "$name" "$bin" --config "$WORK/$name.toml" --zk "$ZK"
  wait_http "$name" "$GW_PORT"
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: app$((apps - 1)).caas.local" \
      "http://127.0.0.1:$GW_PORT/" || true)
    [[ $code == 200 ]] && break
    sleep 0.1
  done
  [[ $code == 200 ]] || die "$name did not route app$((apps - 1)) (logs in $WORK)"
}

# Writes the one certificate every proxy terminates TLS with, under $WORK/tls: an ECDSA P-256
# key and a self-signed certificate for HOST_HEADER and *.caas.local (cert.pem, key.pem; for
# HAProxy both in haproxy.pem).
make_tls_cert() {
  mkdir -p "$WORK/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$HOST_HEADER" -addext "subjectAltName=DNS:$HOST_HEADER,DNS:*.caas.local" \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>"$WORK/tls/openssl.log" ||
    die "openssl could not make the TLS certificate: $(tail -n 3 "$WORK/tls/openssl.log")"
  cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/haproxy.pem"
}

# Has nginx and HAProxy check the configs written above; dies naming the one they reject.
check_configs() {
  local name
  for name in backend nginx-proxy; do
    nginx -t -q -c "$WORK/$name.conf" -p "$WORK" -e "$WORK/$name.error.log" ||
      die "nginx rejected $WORK/$name.conf"
  done
  haproxy -c -q -f "$WORK/haproxy.cfg" || die "haproxy rejected $WORK/haproxy.cfg"
}

# The command line of nginx process $1 (backend, nginx-proxy) with its config, prefix and
# error log under WORK, in the array NGINX_CMD.
nginx_cmd() {
  NGINX_CMD=(nginx -c "$WORK/$1.conf" -p "$WORK" -e "$WORK/$1.error.log")
}

# Starts the backend nginx (under PIN_BACKEND) and waits until it answers 200 "ok".
start_backend() {
  nginx_cmd backend
  start backend "${PIN_BACKEND[@]}" "${NGINX_CMD[@]}"
  wait_http backend "$BACKEND_PORT"
  check_ok backend "http://127.0.0.1:$BACKEND_PORT/"
}

# --- wrk output -------------------------------------------------------------------------------

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

# --- report -----------------------------------------------------------------------------------

# The report's first lines: the date and the machine, as markdown list items.
report_machine() {
  local cpu_model
  cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, kernel $(uname -r)"
}

# The versions of the proxies compared: "nginx/1.22.1, HAProxy 2.6.12".
proxy_versions() {
  echo "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(haproxy -v | head -n 1 | awk '{print "HAProxy " $3}')"
}
