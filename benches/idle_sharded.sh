#!/usr/bin/env bash
# benches/idle_sharded.sh — IDLE_CONNS idle keep-alive client connections (100,000 by default)
# held by the gateway on a machine where one process may not open that many files: SHARDS
# gateway processes of the same binary and config, each on its own port and each holding its
# share, with the RSS of all of them summed.
#
# compare.sh's idle row holds what one process may open (RLIMIT_NOFILE; only root with
# CAP_SYS_RESOURCE may raise the hard limit). Sharded, the figure overstates one process: each
# shard pays the startup RSS (runtime, config, route table, allocator arenas) that a single
# process pays once. The report gives the sum, and the sum with one startup RSS in place of
# SHARDS of them: what one process holding every connection would take at the same cost per
# connection. Where the limit cannot be raised here, benches/in_vm.sh runs this script in a
# guest that can: there one process holds all of them (SHARDS comes out 1).
#
# Each connection sends one 'GET /' with the benchmark's Host, gets its 200 and stays open,
# idle (benches/idle_conns.py, one holder per shard, 8 connections opened at a time by each,
# all shards at once). The gateways' idle timeout is raised to 10 minutes so that none closes
# while the last shard is still opening (the holders give up after 9: 100,000 in one gateway
# took 3.5 minutes in benches/in_vm.sh's emulated guest); the cost of a connection does not
# depend on it.
#
# Usage: benches/idle_sharded.sh [-h|--help]
# Environment:
#   IDLE_CONNS=100000    connections in all
#   SHARDS=              gateway processes (default: the fewest whose share fits in
#                        ulimit -n less 1024)
#   GATEWAY_BIN=path     the gateway (skips cargo build)
#   KEEP=1               keep the temp dir (configs, logs)
# Needs nginx (the backend), curl and python3 (scripts/install-deps.sh installs them).
set -euo pipefail

BENCH_NAME=idle_sharded
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
parse_flags "$@"

IDLE_CONNS=${IDLE_CONNS:-100000}
[[ $IDLE_CONNS =~ ^[1-9][0-9]*$ ]] || die "IDLE_CONNS takes a positive integer, got '$IDLE_CONNS'"
nofile=$(ulimit -n)
[[ $nofile == unlimited ]] && nofile=$((IDLE_CONNS + 1024))
((nofile > 1024 + 64)) || die "ulimit -n is $nofile: too few open files to shard over"
if [[ -z ${SHARDS:-} ]]; then
  per=$((nofile - 1024))
  SHARDS=$(((IDLE_CONNS + per - 1) / per))
fi
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || die "SHARDS takes a positive integer, got '$SHARDS'"
((SHARDS <= IDLE_CONNS)) || die "SHARDS=$SHARDS is more than IDLE_CONNS=$IDLE_CONNS"
SHARE=$(((IDLE_CONNS + SHARDS - 1) / SHARDS))
((SHARE + 64 <= nofile)) ||
  die "$SHARDS shards hold $SHARE connections each, more than ulimit -n ($nofile) allows: raise SHARDS"

require_tools nginx curl python3
build_gateway

make_workdir caas-idle-sharded
HOLDERS=() # one benches/idle_conns.py per shard while they hold connections
CTLS=()    # the write ends of their stdin fifos
cleanup() {
  local fd
  for fd in "${CTLS[@]}"; do
    exec {fd}>&- 2>/dev/null || true
  done
  kill_and_reap 10 "${HOLDERS[@]}" "${PIDS[@]}"
  finish_workdir "configs and logs"
}
on_exit cleanup

free_port BACKEND_PORT
write_backend_conf "" "" ""
start_backend

PORTS=() shard_port=""
for i in $(seq 1 "$SHARDS"); do
  free_port shard_port
  PORTS+=("$shard_port")
  write_gateway_toml "gw$i" "$shard_port"
  printf '[limits]\nidle_timeout_ms = 600000\n' >>"$WORK/gw$i.toml"
  RUST_LOG=${RUST_LOG:-warn} start "gw$i" "$GATEWAY_BIN" --config "$WORK/gw$i.toml"
done
AT_START=()
for i in $(seq 1 "$SHARDS"); do
  wait_http "gw$i" "${PORTS[i - 1]}"
  check_ok "gw$i" "http://127.0.0.1:${PORTS[i - 1]}/"
  pid=$(pid_of "gw$i")
  lim=$(awk '/^Max open files/ {print $4}' "/proc/$pid/limits")
  [[ $lim == unlimited ]] || ((lim >= SHARE + 64)) ||
    die "gw$i (pid $pid) may open $lim files, fewer than its $SHARE connections need"
  AT_START+=("$(rss_kib "$pid")")
done

# How the report names the processes: "one process" or "6 processes, each on its own port".
PROCS="one process"
((SHARDS == 1)) || PROCS="$SHARDS processes, each on its own port"
log "holding $IDLE_CONNS idle connections in $PROCS"
held_all=0
for i in $(seq 1 "$SHARDS"); do
  # As even as can be: the first IDLE_CONNS % SHARDS shards hold one more.
  n=$((IDLE_CONNS / SHARDS + (i <= IDLE_CONNS % SHARDS ? 1 : 0)))
  held_all=$((held_all + n))
  rm -f "$WORK/idle$i.ctl"
  mkfifo "$WORK/idle$i.ctl"
  python3 "$ROOT/benches/idle_conns.py" --port "${PORTS[i - 1]}" --conns "$n" --window 8 \
    --timeout 540 --host-header "$HOST_HEADER" <"$WORK/idle$i.ctl" >"$WORK/idle$i.out" \
    2>"$WORK/idle$i.log" &
  HOLDERS+=("$!")
done
# Each holder's stdin is a fifo, and opening its write end waits for the holder to open the
# read end. Opened only once every holder runs, so that no holder inherits another's.
for i in $(seq 1 "$SHARDS"); do
  exec {ctl}>"$WORK/idle$i.ctl"
  CTLS+=("$ctl")
done
HELD=() SECS=()
for i in $(seq 1 "$SHARDS"); do
  line=$(await_line "$WORK/idle$i.out" held "${HOLDERS[i - 1]}" 560) ||
    die "shard $i: holding its connections failed: $(tail -n 5 "$WORK/idle$i.log")"
  read -r _ held secs <<<"$line"
  HELD+=("$held") SECS+=("$secs")
done
sleep 0.5
WITH=()
for i in $(seq 1 "$SHARDS"); do
  WITH+=("$(rss_kib "$(pid_of "gw$i")")")
done
for i in $(seq 1 "$SHARDS"); do
  echo status >&"${CTLS[i - 1]}"
  line=$(await_line "$WORK/idle$i.out" open "${HOLDERS[i - 1]}" 30) ||
    die "shard $i: no status from its holder: $(tail -n 5 "$WORK/idle$i.log")"
  read -r _ open _ <<<"$line"
  ((open == HELD[i - 1])) ||
    die "shard $i: the gateway closed $((HELD[i - 1] - open)) of ${HELD[i - 1]} idle connections before the RSS was read"
done
for i in $(seq 1 "$SHARDS"); do
  fd=${CTLS[i - 1]}
  exec {fd}>&-
  wait "${HOLDERS[i - 1]}" || die "shard $i: its holder failed on close: $(tail -n 5 "$WORK/idle$i.log")"
done
CTLS=() HOLDERS=()

echo
echo "## Gateway memory with $held_all idle keep-alive client connections in ${PROCS%%,*}"
echo
report_machine
echo "- gateway: $GATEWAY_LABEL; $PROCS, ulimit -n $nofile"
echo "- each connection sent one 'GET /' with 'Host: $HOST_HEADER', got its 200 and stayed open, idle (benches/idle_conns.py, 8 opened at a time, one holder per process)"
echo "- RSS: VmRSS; at start: after startup and one check request; KiB per connection = (with conns − at start) / conns held"
echo
echo "| process | idle conns held | seconds to open | RSS at start MiB | RSS with conns MiB | KiB per connection |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq 1 "$SHARDS"); do
  awk -v p="gw$i" -v h="${HELD[i - 1]}" -v s="${SECS[i - 1]}" -v a="${AT_START[i - 1]}" \
    -v w="${WITH[i - 1]}" 'BEGIN {
      printf "| %s | %d | %.1f | %.1f | %.1f | %.2f |\n", p, h, s, a / 1024, w / 1024, (w - a) / h
    }'
done
start_sum=$(printf '%s\n' "${AT_START[@]}" | sum)
with_sum=$(printf '%s\n' "${WITH[@]}" | sum)
start_max=$(printf '%s\n' "${AT_START[@]}" | sort -g | tail -n 1)
awk -v n="$SHARDS" -v h="$held_all" -v a="$start_sum" -v w="$with_sum" -v m="$start_max" 'BEGIN {
  if (n == 1) {
    printf "\nIn all: %d idle connections in %.1f MiB of RSS, one process.\n", h, w / 1024
    exit
  }
  printf "| all %d | %d | | %.1f | %.1f | %.2f |\n", n, h, a / 1024, w / 1024, (w - a) / h
  printf "\nIn all: %d idle connections in %.1f MiB of RSS over %d processes; with one startup RSS (the largest, %.1f MiB) in place of %d, as one process would hold them: %.1f MiB.\n",
    h, w / 1024, n, m / 1024, n, (w - a + m) / 1024
}'
STATUS=0
