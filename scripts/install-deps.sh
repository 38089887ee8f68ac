#!/usr/bin/env bash
# scripts/install-deps.sh — install the Debian packages that caas' tests and benches need.
#
# Idempotent: installs only what is missing, and runs `apt-get update` only when something
# has to be installed. Waits for the dpkg lock (another apt-get may be running) instead of
# failing. Needs root (or sudo).
#
#   zookeeper, libzookeeper-java  ZooKeeper 3.8 server jar (/usr/share/java/zookeeper.jar)
#   libslf4j-java                 /usr/share/java/slf4j-simple.jar (ZooKeeper's log output)
#   libnetty-java                 /usr/share/java/netty-codec.jar (NettyServerCnxnFactory / TLS)
#   etcd-server, etcd-client      etcd 3.4 (/usr/bin/etcd, /usr/bin/etcdctl): the second control store
#   protobuf-compiler,            protoc and the well-known .proto files (descriptor, struct),
#     libprotobuf-dev             which the etcd-client crate's build script compiles
#   docker-registry               Distribution 2.8 private registry for test images
#   apache2-utils                 htpasswd -B, for the registry's htpasswd auth
#   nginx-light, haproxy, wrk     side-by-side gateway benchmarks
#   curl, openssl                 readiness probes, test certificates
#
# Usage: scripts/install-deps.sh [-h|--help]
set -euo pipefail

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  # Accepted for compatibility: everything is always installed.
  --bench | --all) ;;
  *) echo "install-deps: unknown argument: $1" >&2; usage >&2; exit 2 ;;
esac

# Debian package -> a file that proves it is installed and usable.
declare -A WANT=(
  [zookeeper]=/usr/share/java/zookeeper.jar
  [libzookeeper-java]=/usr/share/java/zookeeper.jar
  [libslf4j-java]=/usr/share/java/slf4j-simple.jar
  [libnetty-java]=/usr/share/java/netty-codec.jar
  [etcd-server]=/usr/bin/etcd
  [etcd-client]=/usr/bin/etcdctl
  [protobuf-compiler]=/usr/bin/protoc
  [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
  [docker-registry]=/usr/bin/docker-registry
  [apache2-utils]=/usr/bin/htpasswd
  [nginx-light]=/usr/sbin/nginx
  [haproxy]=/usr/sbin/haproxy
  [wrk]=/usr/bin/wrk
  [curl]=/usr/bin/curl
  [openssl]=/usr/bin/openssl
)

pkg_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${!WANT[@]}"; do
  file=${WANT[$pkg]}
  if [[ $pkg == nginx-light ]]; then
    # Any nginx flavour (nginx, nginx-light, nginx-full, ...) will do.
    [[ -x $file ]] && continue
  elif pkg_installed "$pkg" && [[ -e $file ]]; then
    continue
  fi
  missing+=("$pkg")
done

# java itself comes with the zookeeper package (default-jre-headless) when missing.
if ! command -v java >/dev/null 2>&1 && [[ " ${missing[*]} " != *" zookeeper "* ]]; then
  missing+=(default-jre-headless)
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all packages already installed"
  exit 0
fi

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort)
echo "install-deps: installing: ${missing[*]}"

SUDO=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "install-deps: must run as root (or have sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

# `apt-get update` takes the lists lock, which DPkg::Lock::Timeout does not always cover:
# retry while another apt-get holds it.
updated=false
for attempt in $(seq 1 60); do
  if "${SUDO[@]}" apt-get "${APT_OPTS[@]}" update -qq; then
    updated=true
    break
  fi
  echo "install-deps: apt-get update failed (attempt $attempt, lock busy?), retrying in 10 s" >&2
  sleep 10
done
if ! $updated; then
  echo "install-deps: apt-get update kept failing" >&2
  exit 1
fi

"${SUDO[@]}" apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${missing[@]}"

# The Debian packages enable system services (docker-registry on :5000 with htpasswd auth,
# nginx on :80, haproxy, etcd on :2379). Where a service manager did start them, stop them: the tests start
# their own instances with their own configs.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
  for svc in docker-registry nginx haproxy zookeeper etcd; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      echo "install-deps: stopping and disabling system service $svc"
      "${SUDO[@]}" systemctl disable --now "$svc" || true
    fi
  done
fi

fail=0
for pkg in "${!WANT[@]}"; do
  file=${WANT[$pkg]}
  if [[ ! -e $file ]]; then
    echo "install-deps: $file still missing after installing $pkg" >&2
    fail=1
  fi
done
if ! command -v java >/dev/null 2>&1; then
  echo "install-deps: java still missing" >&2
  fail=1
fi
exit "$fail"
