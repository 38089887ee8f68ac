# shellcheck shell=bash
# scripts/daemon.sh — sourced by scripts/zk.sh and scripts/registry.sh: what the two share
# about a throw-away server they run in the background from a directory of its own (its pid
# file, waiting until it serves, stopping it). Each sets before sourcing:
#
#   DAEMON_TAG   the script's name, first word of every message (zk.sh, registry.sh)
#   DAEMON_WHAT  what it runs, for messages (ZooKeeper, registry)
#   DAEMON_PID   the pid file's name in the directory (zk.pid, registry.pid)
#   DAEMON_CONF  the config file's name in the directory (zoo.cfg, config.yml): a process
#                counts as ours only while that path is on its command line, so a pid the
#                kernel has handed to another process since is never signalled
#   START_TIMEOUT  seconds to wait for it to serve

# daemon_pid DIR: prints the pid from DIR/$DAEMON_PID while that process is still ours.
daemon_pid() {
  local dir=$1 pid
  [[ -f $dir/$DAEMON_PID ]] || return 1
  pid=$(<"$dir/$DAEMON_PID")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/$DAEMON_CONF" || return 1
  echo "$pid"
}

# daemon_wait DIR PID LOG LINES WHERE CHECK...: waits until the command CHECK succeeds. If
# the process exits first, or START_TIMEOUT passes (then it is killed), prints the last
# LINES lines of LOG, removes the pid file and exits 1. WHERE names what was checked.
daemon_wait() {
  local dir=$1 pid=$2 log=$3 lines=$4 where=$5
  shift 5
  local deadline=$((SECONDS + START_TIMEOUT))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$DAEMON_TAG: $DAEMON_WHAT (pid $pid) exited; log tail:" >&2
      tail -n "$lines" "$log" >&2 || true
      rm -f "$dir/$DAEMON_PID"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$DAEMON_TAG: $DAEMON_WHAT not serving on $where after ${START_TIMEOUT}s; log tail:" >&2
      tail -n "$lines" "$log" >&2 || true
      kill "$pid" 2>/dev/null || true
      rm -f "$dir/$DAEMON_PID"
      exit 1
    fi
    sleep 0.1
  done
}

# daemon_stop DIR: stops the process started in DIR (SIGTERM, SIGKILL after 10 s). Nothing
# running there is not an error.
daemon_stop() {
  local dir=$1 pid
  [[ -d $dir ]] || { echo "$DAEMON_TAG: no such dir $dir, nothing to stop"; return 0; }
  dir=$(cd "$dir" && pwd)
  if ! pid=$(daemon_pid "$dir"); then
    rm -f "$dir/$DAEMON_PID"
    echo "$DAEMON_TAG: not running in $dir"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  local _
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/$DAEMON_PID"
  echo "$DAEMON_TAG: stopped $DAEMON_WHAT (pid $pid)"
}
