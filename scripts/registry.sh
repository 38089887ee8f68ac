#!/usr/bin/env bash
# scripts/registry.sh — start/stop a throw-away private Docker registry (Distribution 2.8,
# Debian package docker-registry) on loopback, for caas' tests: test images are built
# `FROM scratch`, tagged 127.0.0.1:5000/{appId}:{version}, pushed here and pulled back by the
# system under test.
#
# Usage:
#   scripts/registry.sh start DIR [ADDR] [--htpasswd USER:PASS]
#       Write DIR/config.yml (filesystem storage under DIR/data, delete enabled), run
#       `docker-registry serve DIR/config.yml` in the background (DIR/registry.pid,
#       DIR/registry.log) and wait until `GET /v2/` answers 200 (30 s).
#       ADDR defaults to 127.0.0.1:5000, or 127.0.0.1:5001 with --htpasswd, which also turns on
#       htpasswd (bcrypt) auth with that one user (DIR/htpasswd, made with `htpasswd -B`).
#   scripts/registry.sh stop DIR
#   scripts/registry.sh status [ADDR]    exit 0 if GET /v2/ answers 200 or 401 there.
#
# Docker treats 127.0.0.0/8 as an insecure registry by default, so the daemon pushes to and pulls
# from http://127.0.0.1:5000 with no daemon configuration. With auth: `docker login ADDR -u USER
# --password-stdin` first.
set -euo pipefail

START_TIMEOUT=30
DAEMON_TAG=registry.sh DAEMON_WHAT=registry DAEMON_PID=registry.pid DAEMON_CONF=config.yml
# shellcheck source=scripts/daemon.sh
. "$(dirname "${BASH_SOURCE[0]}")/daemon.sh"

die() { echo "registry.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

# http_code URL [curl args...]: print the HTTP status (000 when nothing answers).
http_code() {
  local url=$1
  shift
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true
}

# answers_200 URL [curl args...]: whether URL answers 200.
answers_200() {
  [[ $(http_code "$@") == 200 ]]
}

cmd_start() {
  local dir="" addr="" creds="" user="" pass=""
  while (($#)); do
    case "$1" in
      --htpasswd)
        (($# >= 2)) || die "--htpasswd needs USER:PASS"
        creds=$2
        shift 2
        ;;
      --htpasswd=*) creds=${1#--htpasswd=}; shift ;;
      -*) die "unknown option $1" ;;
      *)
        if [[ -z $dir ]]; then dir=$1
        elif [[ -z $addr ]]; then addr=$1
        else usage >&2; exit 2
        fi
        shift
        ;;
    esac
  done
  [[ -n $dir ]] || { usage >&2; exit 2; }
  if [[ -n $creds ]]; then
    [[ $creds == *:* ]] || die "--htpasswd wants USER:PASS"
    user=${creds%%:*}
    pass=${creds#*:}
    [[ -n $user && -n $pass ]] || die "--htpasswd wants a non-empty USER and PASS"
    addr=${addr:-127.0.0.1:5001}
  else
    addr=${addr:-127.0.0.1:5000}
  fi
  command -v docker-registry >/dev/null 2>&1 || die "docker-registry not found (run scripts/install-deps.sh)"
  command -v curl >/dev/null 2>&1 || die "curl not found (run scripts/install-deps.sh)"

  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  local pid
  if pid=$(daemon_pid "$dir"); then
    die "already running in $dir (pid $pid)"
  fi
  local code
  code=$(http_code "http://$addr/v2/")
  [[ $code == 000 ]] || die "something already answers on http://$addr (HTTP $code)"

  {
    echo "# written by scripts/registry.sh"
    echo "version: 0.1"
    echo "log:"
    echo "  level: info"
    echo "  accesslog: {disabled: true}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/data}"
    echo "  delete: {enabled: true}"
    echo "  cache: {blobdescriptor: inmemory}"
    echo "http:"
    echo "  addr: $addr"
    echo "  headers: {X-Content-Type-Options: [nosniff]}"
    if [[ -n $creds ]]; then
      echo "auth:"
      echo "  htpasswd: {realm: caas-registry, path: $dir/htpasswd}"
    fi
  } >"$dir/config.yml"

  local curl_auth=()
  if [[ -n $creds ]]; then
    command -v htpasswd >/dev/null 2>&1 || die "htpasswd not found (apt-get install apache2-utils)"
    # The registry only accepts bcrypt entries.
    htpasswd -Bbn "$user" "$pass" >"$dir/htpasswd"
    curl_auth=(-u "$user:$pass")
  fi

  nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/$DAEMON_PID"

  daemon_wait "$dir" "$pid" "$dir/registry.log" 30 "http://$addr/v2/" answers_200 "http://$addr/v2/" "${curl_auth[@]}"
  if [[ -n $creds ]]; then
    code=$(http_code "http://$addr/v2/")
    [[ $code == 401 ]] || die "auth registry on $addr answers $code without credentials (expected 401)"
  fi
  echo "registry.sh: registry serving on http://$addr (pid $pid, dir $dir${creds:+, htpasswd auth for $user})"
}

cmd_stop() {
  (($# == 1)) || { usage >&2; exit 2; }
  daemon_stop "$1"
}

cmd_status() {
  local addr=${1:-127.0.0.1:5000} code
  code=$(http_code "http://$addr/v2/")
  echo "registry.sh: http://$addr/v2/ -> HTTP $code"
  [[ $code == 200 || $code == 401 ]]
}

sub=${1:-}
shift || true
case "$sub" in
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
