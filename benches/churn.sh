#!/usr/bin/env bash
# benches/churn.sh — the gateway's latency while its route table changes: a ZooKeeper-fed
# gateway (examples/gateway --zk, one worker) with CHURN_APPS apps registered, loaded by wrk
# on one of them (`hello`, the nginx backend's "ok\n"), with and without a writer changing
# routes CHURN_RATE times a second (examples/route_churn):
#
#   none           no writes: the baseline
#   specs          app specs rewritten (`/apps/app{k}`): each write is one app's route change
#   registrations  instances of `app{k}` registered and deregistered, one per write
#   unwatched      the specs writes under a root the gateway does not watch
#                  (/caas-unwatched): ZooKeeper and the writer as busy, the gateway idle.
#                  The control: what the churn costs the machine, apart from the gateway
#   specs-vs-unwatched, registrations-vs-unwatched
#                  interleaved rows only: the writer writes all the time, in the churning
#                  slices under /caas (the gateway's routes change) and in the resting ones
#                  the same writes under /caas-unwatched (`route_churn --off-chroot`), so
#                  ZooKeeper and the writer are as busy in both halves and the ratio is what
#                  the gateway's own work costs, without their share of the two CPUs
#   inproc-none    the same apps served by the gateway library embedded in
#                  `route_churn serve`, fed in-process (no store): its baseline
#   inproc-specs   that gateway taking CHURN_RATE one-app updates a second through its
#                  discovery channel: the route table's own churn, with no ZooKeeper and no
#                  writer process taking CPU (the thread sending them at nice 10, as the
#                  gateway's store thread). Its p99 ratio is to inproc-none
#
# The modes run in rotating order each round, twice:
#
#   flat out       wrk -t1 -cCHURN_CONNS: every connection busy, the gateway at full speed.
#                  On a small machine ZooKeeper and the writer then take CPU the gateway,
#                  wrk and the backend would use, so this p99 also counts the machine.
#   fixed rate     examples/open_loop sends CHURN_LOAD % of the flat-out no-churn req/s
#                  over the same connections, at a fixed rate (an open loop: a request waiting
#                  for a free connection counts that wait): there is CPU to spare, and the p99 shows
#                  what the gateway's own route updates cost the requests it is serving.
#
# For each, the script prints the medians over rounds (requests/s, p50, p99) with each p99 as
# a ratio to the no-churn p99 of the same run, the write rate the writer kept, the gateway's
# CPU per request and the CPU ZooKeeper used (% of one CPU). Target: the p99 with churn within
# 5 % of the p99 without. Compare ratios in one run only.
#
# Rounds a few seconds apart see the machine change under them (another tenant of the host,
# ZooKeeper's collector): their p99 moves by tens of percent with no churn at all. So the
# script then interleaves: one run of PAIRED_SECONDS per mode in which the writer churns only
# in half of the wall-clock slices of PHASE_MS, dealt by a fixed pseudo-random function of
# the slice's number so that nothing periodic lines up with them (`route_churn --phase-ms`),
# while open_loop
# sorts each request by the slice it was released in (`open_loop --phase-ms`, leaving out
# the first tenth of every slice, where the other half's effects may linger). Both halves
# of a row share the machine's ups and downs. Their ratio is taken twice: of the p99 over
# all of a half's requests, and of the median over a half's slices of each slice's own p99,
# which a stall hitting a slice or two (the host, not the gateway) barely moves while a cost
# every churning slice pays moves it in full. The `none` rows interleave nothing against
# nothing: how far apart two halves come out by chance. One such run puts a row within a few
# per cent; PAIRED_REPEATS=N runs the rows N times over (in rotating order, on the same
# ZooKeeper and gateway) and adds each row's mean ratio with its 95 % interval over the N
# runs, which is what tells a 5 % cost from chance.
# Closed loop (open_loop --closed: every connection busy) and at the fixed rate.
#
# benches/compare.sh runs this at its end (CHURN_APPS=0 there skips it).
#
# Usage: benches/churn.sh [--quick] [-h|--help]
# Environment:
#   ROUNDS=3 DURATION=5   rounds, seconds per wrk run (--quick: 1 round of 3 s)
#   CHURN_APPS=10000      apps in the route table
#   CHURN_RATE=100        route changes per second
#   CHURN_CONNS=32        connections (wrk and open_loop)
#   CHURN_LOAD=25         the fixed-rate rows' rate, in % of the flat-out no-churn req/s
#                         (0 skips them). At 50 % on two CPUs, open_loop (less frugal than
#                         wrk), the gateway and the backend left no CPU to spare: the p99
#                         without churn swung from 2 to 9 ms between rounds
#   GATEWAY_BIN=path      the gateway binary (skips cargo build); ROUTE_CHURN_BIN and
#                         OPEN_LOOP_BIN likewise
#   PAIRED_SECONDS=20     seconds per interleaved run (0 skips them; --quick: 6)
#   PAIRED_MODES="…"      the interleaved rows to run, of: none specs registrations unwatched
#                         specs-vs-unwatched registrations-vs-unwatched inproc-none
#                         inproc-specs (default all; for instance the three closed-loop
#                         rows that tell two builds apart, with CHURN_LOAD=0)
#   PHASE_MS=200          the interleaved runs' slice; the first tenth of each is left out
#   PAIRED_REPEATS=1      times the interleaved rows run (more than 1: their means and
#                         95 % intervals too; 8 put a row's mean within about ±2 % on a
#                         quiet host, 16 within ±5 % on a busy one)
#   STEAL_MAX=10          an interleaved run during which the hypervisor took more than
#   STEAL_RETRIES=2       this % of the machine (steal, /proc/stat) is run again, up to
#                         STEAL_RETRIES more times, and the attempt with the least steal kept
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
  PAIRED_SECONDS=${PAIRED_SECONDS:-6}
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-5}
  PAIRED_SECONDS=${PAIRED_SECONDS:-20}
fi
PHASE_MS=${PHASE_MS:-200}
steal_settings
PAIRED_REPEATS=${PAIRED_REPEATS:-1}
[[ $PAIRED_REPEATS =~ ^[1-9][0-9]*$ ]] ||
  die "PAIRED_REPEATS takes a positive number of runs, got '$PAIRED_REPEATS'"
[[ $PAIRED_SECONDS =~ ^[0-9]+$ ]] || die "PAIRED_SECONDS takes seconds (0 skips the interleaved runs), got '$PAIRED_SECONDS'"
[[ $PHASE_MS =~ ^[1-9][0-9]*$ ]] && ((PHASE_MS >= 10)) ||
  die "PHASE_MS takes milliseconds, at least 10, got '$PHASE_MS'"
CHURN_APPS=${CHURN_APPS:-10000}
CHURN_RATE=${CHURN_RATE:-100}
CHURN_CONNS=${CHURN_CONNS:-32}
CHURN_LOAD=${CHURN_LOAD:-25}
[[ $CHURN_LOAD =~ ^[0-9]+$ ]] && ((CHURN_LOAD <= 100)) ||
  die "CHURN_LOAD takes a percentage, 0 to 100 (0 skips the fixed-rate rows), got '$CHURN_LOAD'"
KEEP=${KEEP:-0}
ALL_PAIRED_MODES="none specs registrations unwatched specs-vs-unwatched registrations-vs-unwatched inproc-none inproc-specs"
read -r -a PAIRED_MODES <<<"${PAIRED_MODES:-$ALL_PAIRED_MODES}"
((${#PAIRED_MODES[@]} > 0)) || die "PAIRED_MODES is empty (PAIRED_SECONDS=0 skips the interleaved rows)"
for mode in "${PAIRED_MODES[@]}"; do
  [[ " $ALL_PAIRED_MODES " == *" $mode "* ]] ||
    die "PAIRED_MODES: unknown row '$mode' (rows: $ALL_PAIRED_MODES)"
done
NGINX_WORKER_CONNS=4096
for v in ROUNDS DURATION CHURN_APPS CHURN_RATE CHURN_CONNS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v takes a positive integer, got '${!v}'"
done

require_tools nginx wrk curl
"$ROOT/scripts/zk.sh" classpath >/dev/null 2>&1 || require_tools java

build_gateway
build_churn_tools

make_workdir caas-churn
cleanup() {
  kill_and_reap 10 "${PIDS[@]}"
  "$ROOT/scripts/zk.sh" stop "$WORK/zk" >/dev/null 2>&1 || true
  finish_workdir "logs and raw wrk output"
}
on_exit cleanup

free_port BACKEND_PORT
write_backend_conf "" "" ""
start_backend
start_zk
churn_args=(--zk "$ZK" --apps "$CHURN_APPS" --backend "127.0.0.1:$BACKEND_PORT")
log "registering $CHURN_APPS apps in ZooKeeper (twice: /caas and /caas-unwatched)"
for root in /caas /caas-unwatched; do
  "$ROUTE_CHURN_BIN" seed "${churn_args[@]}" --chroot "$root" 2>>"$WORK/route_churn.log" ||
    die "seeding $root failed: $(tail -n 3 "$WORK/route_churn.log")"
done

# The in-process gateway: churns when told `churn SECONDS` on its stdin (a FIFO this script
# holds open, read-write so that neither open waits for the other) and answers on its log.
free_port INPROC_PORT
mkfifo "$WORK/inproc.ctl"
exec {INPROC_CTL}<>"$WORK/inproc.ctl"
# Not through `start`: a background command's stdin would be /dev/null there.
"$ROUTE_CHURN_BIN" serve --listen "127.0.0.1:$INPROC_PORT" --apps "$CHURN_APPS" \
  --backend "127.0.0.1:$BACKEND_PORT" --rate "$CHURN_RATE" \
  <"$WORK/inproc.ctl" >>"$WORK/inproc.log" 2>&1 {INPROC_CTL}>&- &
INPROC_PID=$!
PIDS+=("$INPROC_PID")
PID_inproc=$INPROC_PID
INPROC_CHURNS=0
wait_http inproc "$INPROC_PORT"
check_ok inproc "http://127.0.0.1:$INPROC_PORT/"

# Routable once the whole tree is read: the last app and hello both answer.
start_zk_gateway gateway "$GATEWAY_BIN" "$CHURN_APPS"
check_ok gateway "http://127.0.0.1:$GW_PORT/"
# Warm-up, not measured: ZooKeeper has just taken 20,000 writes (its JIT and collector are
# still busy), and the gateway's pools are empty.
log "warming up (wrk, 3 s)"
for port in "$GW_PORT" "$INPROC_PORT"; do
  wrk -t1 -c"$CHURN_CONNS" -d3s -H "Host: $HOST_HEADER" "http://127.0.0.1:$port/" \
    >"$WORK/warmup.txt" 2>&1 || die "wrk failed: $(tail -n 5 "$WORK/warmup.txt")"
done

MODES=(none specs registrations unwatched inproc-none inproc-specs)
ZK_PID=$(cat "$WORK/zk/zk.pid" 2>/dev/null || true)
GW_PID=$(pid_of gateway)
RESULTS="$WORK/results.txt" # load round mode rps p50 p99 status sock writes_per_s gw_cpu_us zk_cpu_pct p999 steal_pct
: >"$RESULTS"

# The rate in a churn report: the number after " = " ("… = 99.8/s, …").
rate_kept() {
  awk '{for (i = 1; i <= NF; i++) if ($i == "=") {sub(/\/s,?/, "", $(i + 1)); print $(i + 1)}}'
}

# Starts the churn of mode $1 (none and inproc-none: nothing) for $2 seconds, in the
# churning slices of $3 ms only (0: throughout); a writer process reports into $4. The
# in-process gateway is told on its control FIFO; a writer's pid goes in WRITER.
start_churn() {
  local mode=$1 seconds=$2 phase=$3 out=$4 how
  WRITER=""
  if [[ $mode == inproc-specs ]]; then
    echo "churn $seconds $phase" >&"$INPROC_CTL"
    INPROC_CHURNS=$((INPROC_CHURNS + 1))
  elif [[ $mode != none && $mode != inproc-none ]]; then
    how=(--mode "${mode%-vs-unwatched}")
    [[ $mode == unwatched ]] && how=(--mode specs --chroot /caas-unwatched)
    [[ $mode == *-vs-unwatched ]] && how+=(--off-chroot /caas-unwatched)
    "$ROUTE_CHURN_BIN" churn "${churn_args[@]}" "${how[@]}" --rate "$CHURN_RATE" \
      --seconds "$seconds" --phase-ms "$phase" >"$out" 2>>"$WORK/route_churn.log" &
    WRITER=$!
  fi
}

# Waits for the churn start_churn started (mode $1, writer report $2) and sets KEPT to the
# write rate it kept (0 for none). Not in a $(subshell): only this shell can wait for the
# writer. The in-process gateway answers on its log: "churned N in S s = R/s, K not applied
# yet; built T tables, W whole, in U µs each", the INPROC_CHURNS-th such line.
finish_churn() {
  local mode=$1 out=$2 answer
  KEPT=0
  if [[ -n $WRITER ]]; then
    wait "$WRITER" || die "the writer failed ($mode): $(tail -n 3 "$WORK/route_churn.log")"
    KEPT=$(rate_kept <"$out")
  elif [[ $mode == inproc-specs ]]; then
    for _ in $(seq 1 100); do
      (($(grep -c '^churned' "$WORK/inproc.log") >= INPROC_CHURNS)) && break
      sleep 0.1
    done
    answer=$(grep '^churned' "$WORK/inproc.log" | sed -n "${INPROC_CHURNS}p")
    [[ -n $answer ]] || die "route_churn serve did not answer churn $INPROC_CHURNS: $(tail -n 3 "$WORK/inproc.log")"
    [[ $answer == *", 0 not applied yet;"* ]] || log "warning: inproc: $answer"
    log "inproc: $answer"
    KEPT=$(rate_kept <<<"$answer")
  fi
}

# One measured run: load $1 (flat or fixed), round $2, mode $3; for fixed, the rate is $4.
measure() {
  local load=$1 round=$2 mode=$3 rate=${4:-0} out gw0 zk0 t0 gw1 zk1 t1 stats
  local rps p50 p99 status sock requests p999 port=$GW_PORT pid=$GW_PID machine0 machine1
  out="$WORK/$load.r$round.$mode.txt"
  log "$load, round $round, $mode"
  [[ $mode == inproc-* ]] && port=$INPROC_PORT pid=$INPROC_PID
  start_churn "$mode" "$((DURATION + 1))" 0 "$WORK/churn.$load.r$round.$mode.txt"
  # The writer connected and writing (the in-process gateway churning) before the load starts.
  [[ $mode == *none ]] || sleep 0.5
  gw0=$(cpu_ticks "$pid")
  zk0=$([[ -n $ZK_PID ]] && cpu_ticks "$ZK_PID" || echo 0)
  t0=$(date +%s.%N)
  machine0=$(machine_ticks)
  if [[ $load == flat ]]; then
    wrk -t1 -c"$CHURN_CONNS" -d"${DURATION}s" --latency -H "Host: $HOST_HEADER" \
      "http://127.0.0.1:$port/" >"$out" 2>&1 || die "wrk failed: $(tail -n 5 "$out")"
    # rps p50 p99 status sock, then the requests and a p99.9 wrk does not give.
    stats="$(parse_wrk "$out") $(awk '/requests in/ {print $1}' "$out") 0"
  else
    "$OPEN_LOOP_BIN" --addr "127.0.0.1:$port" --host "$HOST_HEADER" --rate "$rate" \
      --conns "$CHURN_CONNS" --seconds "$DURATION" >"$out" 2>&1 ||
      die "open_loop failed: $(tail -n 5 "$out")"
    stats=$(awk '/^requests/ {print $4, $6, $10, 0, 0, $2, $12}' "$out")
  fi
  machine1=$(machine_ticks)
  t1=$(date +%s.%N)
  gw1=$(cpu_ticks "$pid")
  zk1=$([[ -n $ZK_PID ]] && cpu_ticks "$ZK_PID" || echo 0)
  finish_churn "$mode" "$WORK/churn.$load.r$round.$mode.txt"
  read -r rps p50 p99 status sock requests p999 <<<"$stats"
  awk -v l="$load" -v r="$round" -v m="$mode" -v rps="$rps" -v p50="$p50" -v p99="$p99" \
    -v st="$status" -v so="$sock" -v w="$KEPT" -v n="$requests" -v g=$((gw1 - gw0)) \
    -v z=$((zk1 - zk0)) -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v p999="$p999" \
    -v steal="$(steal_percent "$machine0" "$machine1")" 'BEGIN {
      printf "%s %s %s %s %s %s %s %s %s %.2f %.1f %s %s\n", l, r, m, rps, p50, p99, st, so, w,
        (n > 0 ? g / hz / n * 1e6 : 0), z / hz / (t1 - t0) * 100, p999, steal
    }' >>"$RESULTS"
}

for ((round = 1; round <= ROUNDS; round++)); do
  for ((i = 0; i < ${#MODES[@]}; i++)); do
    measure flat "$round" "${MODES[$(((i + round - 1) % ${#MODES[@]}))]}"
  done
done

col() { awk -v l="$1" -v m="$2" -v c="$3" '$1 == l && $3 == m {print $c}' "$RESULTS"; }

FIXED_RATE=0
if ((CHURN_LOAD > 0)); then
  FIXED_RATE=$(col flat none 4 | median | awk -v p="$CHURN_LOAD" '{printf "%d", $1 * p / 100}')
  ((FIXED_RATE > 0)) || die "no flat-out no-churn req/s to take $CHURN_LOAD % of"
  for ((round = 1; round <= ROUNDS; round++)); do
    for ((i = 0; i < ${#MODES[@]}; i++)); do
      measure fixed "$round" "${MODES[$(((i + round - 1) % ${#MODES[@]}))]}" "$FIXED_RATE"
    done
  done
fi

# One interleaved run: load $1 (closed or fixed), mode $2, turn $4 of PAIRED_REPEATS; for
# fixed, the rate is $3. The writer churns in the churning half of the PHASE_MS slices
# only; open_loop reports the two halves apart.
PAIRED="$WORK/paired.txt" # load mode writes_per_s requests_on requests_off p50_on p50_off p99_on p99_off p999_on p999_off rps slice_p99_on slice_p99_off steal_pct turn
: >"$PAIRED"
measure_paired() {
  local load=$1 mode=$2 rate=${3:-0} turn=${4:-1} out port=$GW_PORT how machine0 machine1
  out="$WORK/paired.$load.$mode.t$turn.txt"
  log "interleaved, $load, $mode, turn $turn of $PAIRED_REPEATS"
  [[ $mode == inproc-* ]] && port=$INPROC_PORT
  start_churn "$mode" "$((PAIRED_SECONDS + 1))" "$PHASE_MS" "$WORK/churn.paired.$load.$mode.t$turn.txt"
  sleep 0.5
  how=(--closed)
  [[ $load == fixed ]] && how=(--rate "$rate")
  machine0=$(machine_ticks)
  "$OPEN_LOOP_BIN" --addr "127.0.0.1:$port" --host "$HOST_HEADER" "${how[@]}" \
    --conns "$CHURN_CONNS" --seconds "$PAIRED_SECONDS" --phase-ms "$PHASE_MS" \
    --guard-ms "$((PHASE_MS / 10))" >"$out" 2>&1 ||
    die "open_loop failed: $(tail -n 5 "$out")"
  machine1=$(machine_ticks)
  finish_churn "$mode" "$WORK/churn.paired.$load.$mode.t$turn.txt"
  # "requests N rate R p50 …", then "on requests N p50 P p90 P p99 P p999 P max P slices K
  # slice_p99_median P", "off …".
  ATTEMPT_STEAL=$(steal_percent "$machine0" "$machine1") PAIRED_OUT=$out
  PAIRED_LINE=$(awk -v l="$load" -v m="$mode" -v w="$KEPT" -v steal="$ATTEMPT_STEAL" -v t="$turn" '
    $1 == "requests" {rps = $4}
    $1 == "on" || $1 == "off" {n[$1] = $3; p50[$1] = $5; p99[$1] = $9; p999[$1] = $11; sp99[$1] = $17}
    END {
      print l, m, w, n["on"], n["off"], p50["on"], p50["off"], p99["on"], p99["off"], p999["on"], p999["off"], rps,
        sp99["on"], sp99["off"], steal, t
    }
  ' "$out")
}

# least_steal's keeper: the results line and open_loop output of the attempt measure_paired
# just made.
keep_attempt() {
  KEPT_LINE=$PAIRED_LINE
  cp "$PAIRED_OUT" "$PAIRED_OUT.kept"
}

# measure_paired's arguments, run again while the hypervisor took more than STEAL_MAX % of
# the machine (as benches/compare.sh does), keeping the attempt that lost the least.
PAIRED_RERUNS="$WORK/paired_reruns.txt" # note_reruns: the turns done again for steal
: >"$PAIRED_RERUNS"
measure_paired_kept() {
  least_steal measure_paired "$@"
  note_reruns "$([[ $1 == closed ]] && echo "closed loop" || echo "fixed rate"), $2, turn ${4:-1}" "$PAIRED_RERUNS"
  mv "$PAIRED_OUT.kept" "$PAIRED_OUT"
  echo "$KEPT_LINE" >>"$PAIRED"
}

if ((PAIRED_SECONDS > 0)); then
  for load in closed fixed; do
    [[ $load == fixed ]] && ((CHURN_LOAD == 0)) && continue
    for ((turn = 1; turn <= PAIRED_REPEATS; turn++)); do
      # Rotating, so that no row always follows the same one.
      for ((i = 0; i < ${#PAIRED_MODES[@]}; i++)); do
        measure_paired_kept "$load" "${PAIRED_MODES[$(((i + turn - 1) % ${#PAIRED_MODES[@]}))]}" \
          "$FIXED_RATE" "$turn"
      done
    done
  done
fi

# Per load and mode of the interleaved runs on stdin (the PAIRED columns): the turns, the
# mean p99 ratio with its 95 % interval, how many turns kept it within 5 %, each turn's ratio,
# and the same mean for the median-slice ratio. Rows in the order first seen.
paired_summary() {
  awk '
    # Student t, two-sided 95 %, by degrees of freedom (beyond 30: 2.0).
    function t95(df) {
      split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", t, " ")
      return df <= 30 ? t[df] : 2.0
    }
    function interval(sum, sumsq, n,   mean, v, sd) {
      mean = sum / n
      if (n < 2) return sprintf("%.3f×", mean)
      # Rounding can take a spread of nothing a hair below zero.
      v = (sumsq - n * mean * mean) / (n - 1)
      sd = v > 0 ? sqrt(v) : 0
      return sprintf("%.3f× (%.3f–%.3f)", mean, mean - t95(n - 1) * sd / sqrt(n), mean + t95(n - 1) * sd / sqrt(n))
    }
    $9 > 0 && $14 > 0 {
      k = $1 SUBSEP $2
      if (!(k in n)) order[++rows] = k
      r = $8 / $9; s = $13 / $14
      n[k]++; sum[k] += r; sq[k] += r * r; ssum[k] += s; ssq[k] += s * s
      if (r <= 1.05) within[k]++
      by[k] = by[k] (by[k] == "" ? "" : " ") sprintf("%.2f", r)
    }
    END {
      for (i = 1; i <= rows; i++) {
        k = order[i]; split(k, f, SUBSEP)
        printf "| %s | %s | %d | %s | %d of %d | %s | %s |\n", (f[1] == "closed" ? "closed loop" : "fixed rate"),
          f[2], n[k], interval(sum[k], sq[k], n[k]), within[k], n[k], by[k], interval(ssum[k], ssq[k], n[k])
      }
    }
  '
}

echo "# Route churn: a ZooKeeper-fed gateway under load while its routes change"
echo
report_machine
echo "- gateway: $GATEWAY_LABEL, one worker, fed by ZooKeeper 3.8 (standalone, loopback); inproc-*: the same library embedded in examples/route_churn (serve), one worker, fed in-process"
echo "- $CHURN_APPS apps registered (app0..app$((CHURN_APPS - 1)) and hello); $CHURN_CONNS connections on hello.caas.local"
echo "- churn: $CHURN_RATE writes/s by examples/route_churn while the load runs; $ROUNDS rounds × $DURATION s, modes in rotating order"
echo "- flat out: wrk -t1 -c$CHURN_CONNS; fixed rate: examples/open_loop at $FIXED_RATE req/s ($CHURN_LOAD % of the flat-out no-churn req/s), latency from when each request was released"
for load in flat fixed; do
  [[ $load == fixed ]] && ((CHURN_LOAD == 0)) && continue
  echo
  if [[ $load == flat ]]; then echo "Flat out:"; else echo "At a fixed $FIXED_RATE req/s:"; fi
  echo
  echo "| churn | writes/s kept | req/s | p50 ms | p99 ms | p99.9 ms | p99 × none | non-2xx/3xx | socket errors | gateway CPU µs/req | ZooKeeper CPU % | steal % |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for mode in "${MODES[@]}"; do
    base=none
    [[ $mode == inproc-* ]] && base=inproc-none
    base_p99=$(col "$load" "$base" 6 | median)
    awk -v l="$load" -v m="$mode" -v w="$(col "$load" "$mode" 9 | median)" \
      -v r="$(col "$load" "$mode" 4 | median)" -v p50="$(col "$load" "$mode" 5 | median)" \
      -v p99="$(col "$load" "$mode" 6 | median)" -v p999="$(col "$load" "$mode" 12 | median)" \
      -v b="$base_p99" -v st="$(col "$load" "$mode" 7 | sum)" \
      -v so="$(col "$load" "$mode" 8 | sum)" \
      -v cpu="$(col "$load" "$mode" 10 | median)" -v zk="$(col "$load" "$mode" 11 | median)" \
      -v steal="$(col "$load" "$mode" 13 | median)" 'BEGIN {
        printf "| %s | %s | %.0f | %.3f | %.3f | %s | %.2f× | %d | %d | %.2f | %.1f | %.1f |\n",
          m, (m ~ /none$/ ? "—" : sprintf("%.0f", w)), r, p50, p99,
          (l == "flat" ? "—" : sprintf("%.3f", p999)), (b > 0 ? p99 / b : 0), st, so, cpu, zk, steal
      }'
  done
  echo
  echo "Medians over rounds. Per round (p99 ms, steal %): $(awk -v l="$load" '$1 == l {printf "%s%s r%s %.3f (%.1f)", (n++ ? ", " : ""), $3, $2, $6, $13}' "$RESULTS")"
done
if ((PAIRED_SECONDS > 0)); then
  echo
  echo "Interleaved: one $PAIRED_SECONDS s run per row, the writer churning in half of the $PHASE_MS ms slices of the wall clock (dealt at random, the same deal in every process); requests sorted by the slice they were released in (the first tenth of each left out). Churning ÷ resting: of the p99 over all the half's requests, and of the median over its slices of each slice's own p99 (a stall that hits a slice or two moves it little; a cost every churning slice pays moves it all the same). \`none\` rows: nothing against nothing, the spread to expect by chance. \`*-vs-unwatched\` rows: the writer busy in both halves, under the watched root in the churning one and the same writes under /caas-unwatched in the resting one, so that only the gateway's work differs:"
  echo
  echo "| load | churn | turn | writes/s kept (churning slices) | req/s | p50 ms churning / resting | p99 ms churning / resting | p99 ÷ | median slice p99 ms churning / resting | median slice p99 ÷ | p99.9 ms churning / resting | steal % |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk '{
    printf "| %s | %s | %s | %s | %.0f | %.3f / %.3f | %.3f / %.3f | %.2f× | %.3f / %.3f | %.2f× | %.3f / %.3f | %.1f |\n",
      ($1 == "closed" ? "closed loop" : "fixed rate"), $2, $16, ($2 ~ /none$/ ? "—" : sprintf("%.0f", $3)),
      $12, $6, $7, $8, $9, ($9 > 0 ? $8 / $9 : 0), $13, $14, ($14 > 0 ? $13 / $14 : 0), $10, $11, $15
  }' "$PAIRED"
  if ((PAIRED_REPEATS > 1)); then
    echo
    echo "Over the $PAIRED_REPEATS turns: each row's churning ÷ resting ratios, their mean with its 95 % interval (Student's t over the turns), and the turns within 5 %. A row whose interval lies below 1.05 meets the target; the \`none\` rows show where chance alone puts the interval:"
    echo
    echo "| load | churn | turns | p99 ÷ mean (95 % interval) | p99 ÷ within 5 % | p99 ÷ by turn | median slice p99 ÷ mean (95 % interval) |"
    echo "|---|---|---:|---:|---:|---|---:|"
    paired_summary <"$PAIRED"
  fi
  list_reruns "$PAIRED_RERUNS" "Interleaved turns done again for steal"
fi
echo
echo "steal %: of the whole machine's CPU time over the run, the share the hypervisor gave to other guests while this machine's CPUs wanted to run (/proc/stat); a p99 from a run that lost much of the machine measures the host as much as the gateway."
STATUS=0
