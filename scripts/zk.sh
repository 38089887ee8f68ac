#!/usr/bin/env bash
# scripts/zk.sh — start/stop a throw-away standalone ZooKeeper 3.8 server on loopback.
#
# Usage:
#   scripts/zk.sh start DIR PORT   write DIR/zoo.cfg (dataDir DIR/data), start the server in the
#                                  background (DIR/zk.pid, DIR/zk.log) and wait until `srvr`
#                                  answers `Mode: standalone` (30 s, else print the log and fail).
#                                  If DIR/zoo-extra.cfg exists it is appended to zoo.cfg (e.g. the
#                                  secureClientPort/ssl.* lines for TLS).
#   scripts/zk.sh stop DIR         stop the server started in DIR.
#   scripts/zk.sh status DIR PORT  print `srvr` output; exit 0 if it is serving.
#   scripts/zk.sh classpath        print the jar classpath (without DIR), as used below.
#
# Needs the Debian packages zookeeper, libslf4j-java, libnetty-java (scripts/install-deps.sh).
#
# The exact command this script runs (a Rust test harness spawns the same, with its own DIR):
#
#   java -Xmx256m \
#     -cp DIR:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-codec.jar \
#     org.apache.zookeeper.server.quorum.QuorumPeerMain DIR/zoo.cfg
#
# zookeeper.jar's manifest Class-Path pulls in the rest (zookeeper-jute, slf4j-api,
# netty-{buffer,common,handler,transport}, jetty, jackson, ...). slf4j-simple makes ZooKeeper log
# to stderr (else SLF4J falls back to NOP and logs nothing); netty-codec is only needed with
# serverCnxnFactory=NettyServerCnxnFactory (TLS), where without it every connection dies with
# NoClassDefFoundError while the port still listens. DIR on the classpath is harmless (room for a
# simplelogger.properties).
set -euo pipefail

ZK_JARS=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-codec.jar
ZK_MAIN=org.apache.zookeeper.server.quorum.QuorumPeerMain
START_TIMEOUT=30
DAEMON_TAG=zk.sh DAEMON_WHAT=ZooKeeper DAEMON_PID=zk.pid DAEMON_CONF=zoo.cfg
# shellcheck source=scripts/daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"

die() { echo "zk.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

# srvr PORT: send the `srvr` four-letter word to 127.0.0.1:PORT, print the reply.
srvr() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf srvr >&3 && cat <&3' _ "$1" 2>/dev/null
}

serving() {
  local out
  out=$(srvr "$1") || return 1
  [[ $out == *"Mode: standalone"* ]]
}

cmd_start() {
  (($# == 2)) || { usage >&2; exit 2; }
  local dir=$1 port=$2
  [[ $port =~ ^[0-9]+$ ]] || die "bad port: $port"
  command -v java >/dev/null 2>&1 || die "java not found (run scripts/install-deps.sh)"
  local jar
  for jar in ${ZK_JARS//:/ }; do
    [[ -f $jar ]] || die "$jar missing (run scripts/install-deps.sh)"
  done
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)

  if pid=$(daemon_pid "$dir"); then
    die "already running in $dir (pid $pid)"
  fi
  if srvr "$port" >/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "127.0.0.1:$port is already in use"
  fi

  cat >"$dir/zoo.cfg" <<CFG
tickTime=2000
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons,wchs,dump
CFG
  if [[ -f $dir/zoo-extra.cfg ]]; then
    cat "$dir/zoo-extra.cfg" >>"$dir/zoo.cfg"
  fi

  nohup java -Xmx256m -cp "$dir:$ZK_JARS" "$ZK_MAIN" "$dir/zoo.cfg" \
    >"$dir/zk.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/$DAEMON_PID"

  daemon_wait "$dir" "$pid" "$dir/zk.log" 40 "127.0.0.1:$port" serving "$port"
  echo "zk.sh: ZooKeeper serving on 127.0.0.1:$port (pid $pid, dir $dir)"
}

cmd_stop() {
  (($# == 1)) || { usage >&2; exit 2; }
  daemon_stop "$1"
}

cmd_status() {
  (($# == 2)) || { usage >&2; exit 2; }
  srvr "$2" || { echo "zk.sh: nothing answers on 127.0.0.1:$2"; exit 1; }
  serving "$2"
}

sub=${1:-}
shift || true
case "$sub" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  classpath) echo "$ZK_JARS" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
