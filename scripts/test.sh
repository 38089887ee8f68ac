#!/usr/bin/env bash
# scripts/test.sh — THE one command that runs caas' whole test suite, on a fresh machine too.
#
#   1. scripts/install-deps.sh (Debian packages: zookeeper, etcd-server, docker-registry, ...;
#      only if missing)
#   2. checks the Docker daemon (fails loudly when CI=true and it is unreachable)
#   3. starts a private registry on 127.0.0.1:5000 unless one already answers there
#      (ZooKeeper and etcd are left to the Rust test harness, which spawns its own servers)
#   4. cargo fmt --all --check
#   5. cargo clippy --workspace --all-targets -- -D warnings
#   6. cargo test --workspace --doc; fmt, clippy and tests of examples/hello-app (its own package)
#   7. cargo nextest run --workspace --all-targets --no-fail-fast   (cargo test if no nextest)
#
# Steps 4-7 all run even when one fails; the script exits non-zero if any failed and stops what
# it started on exit. The doc tests run before nextest so that the test runner's closing lines
# at the end of the log are nextest's summary of the main suite.
#
# Exported for the tests:
#   CAAS_ZK_CLASSPATH  jars for `java -cp DIR:$CAAS_ZK_CLASSPATH
#                      org.apache.zookeeper.server.quorum.QuorumPeerMain DIR/zoo.cfg`
#   CAAS_ETCD_BIN      the etcd server binary the harness runs (/usr/bin/etcd)
#   CAAS_REGISTRY      127.0.0.1:5000 (plain HTTP, no auth; Docker treats 127.0.0.0/8 as insecure)
#
# Usage: scripts/test.sh [ARGS...]   (ARGS go to nextest / cargo test, e.g. a test filter)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REGISTRY_ADDR=127.0.0.1:5000
case "${CI:-}" in
  true | TRUE | True | 1 | yes) IN_CI=true ;;
  *) IN_CI=false ;;
esac

SUMMARY=()
FAILED=0
REGISTRY_DIR=""
T0=$SECONDS

log() { printf '\n==> %s\n' "$*"; }

print_summary() {
  printf '\n================ caas test summary ================\n'
  local line
  for line in "${SUMMARY[@]}"; do
    printf '  %s\n' "$line"
  done
  if ((FAILED)); then
    printf 'RESULT: FAILED (%ss)\n' "$((SECONDS - T0))"
  else
    printf 'RESULT: OK (%ss)\n' "$((SECONDS - T0))"
  fi
  printf '===================================================\n'
}

# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  if [[ -n $REGISTRY_DIR ]]; then
    scripts/registry.sh stop "$REGISTRY_DIR" || true
    rm -rf "$REGISTRY_DIR"
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fatal MSG: a setup step failed; nothing after it can run.
fatal() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! test.sh: %s\n' "$*" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  SUMMARY+=("FAIL  setup: $*")
  FAILED=1
  print_summary
  exit 1
}

# step NAME CMD...: run a check; record PASS/FAIL and its duration; never aborts the script.
step() {
  local name=$1 start=$SECONDS status
  shift
  log "[$name] $*"
  if "$@"; then
    status=PASS
  else
    status="FAIL (exit $?)"
    FAILED=1
  fi
  SUMMARY+=("$(printf '%-6s %-12s %4ss  %s' "${status%% *}" "$name" "$((SECONDS - start))" "$*")")
  printf '<== [%s] %s\n' "$name" "$status"
}

# --- 1. packages -------------------------------------------------------------------------------
log "[deps] scripts/install-deps.sh"
scripts/install-deps.sh || fatal "scripts/install-deps.sh failed"
SUMMARY+=("ok     deps")

# --- 2. Docker ---------------------------------------------------------------------------------
log "[docker] checking the Docker daemon"
if docker_version=$(docker version --format '{{.Server.Version}}' 2>&1); then
  echo "Docker Engine $docker_version reachable"
  SUMMARY+=("ok     docker       Engine $docker_version")
else
  echo "$docker_version" >&2
  if $IN_CI; then
    fatal "CI=true but the Docker daemon is unreachable: the container tests cannot run"
  fi
  echo "WARNING: Docker daemon unreachable; tests that need Docker will fail or skip" >&2
  SUMMARY+=("WARN   docker       daemon unreachable")
fi

# --- 3. registry -------------------------------------------------------------------------------
log "[registry] private registry on $REGISTRY_ADDR"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$REGISTRY_ADDR/v2/" 2>/dev/null || true)
case "$code" in
  200)
    echo "a registry already answers on $REGISTRY_ADDR: using it"
    SUMMARY+=("ok     registry     reused the one on $REGISTRY_ADDR")
    ;;
  000 | "")
    REGISTRY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/caas-registry.XXXXXX")
    scripts/registry.sh start "$REGISTRY_DIR" "$REGISTRY_ADDR" ||
      fatal "could not start a registry on $REGISTRY_ADDR"
    SUMMARY+=("ok     registry     started on $REGISTRY_ADDR")
    ;;
  *)
    fatal "something on $REGISTRY_ADDR answers GET /v2/ with HTTP $code, not 200 (the Debian" \
      "docker-registry service with its htpasswd config?): stop it and rerun"
    ;;
esac

CAAS_ZK_CLASSPATH=$(scripts/zk.sh classpath)
export CAAS_ZK_CLASSPATH
CAAS_ETCD_BIN=$(command -v etcd || echo /usr/bin/etcd)
export CAAS_ETCD_BIN
export CAAS_REGISTRY=$REGISTRY_ADDR
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
echo "CAAS_ZK_CLASSPATH=$CAAS_ZK_CLASSPATH"
echo "CAAS_ETCD_BIN=$CAAS_ETCD_BIN"
echo "CAAS_REGISTRY=$CAAS_REGISTRY"
cargo --version
rustc --version

# A build from scratch gains nothing from incremental state, which roughly doubles the size of
# target/ (a CI run on a small disk once ran out of space linking the test binaries).
if $IN_CI; then
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
fi
disk_free() { df -Pk "$ROOT" | awk 'NR == 2 { printf "%.1f GiB free", $4 / 1048576 }'; }
SUMMARY+=("ok     disk         $(disk_free) before the build")

# --- 4-7. checks and tests ---------------------------------------------------------------------
step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step doctests cargo test --workspace --doc
# hello-app is its own package (the test image's binary, outside the workspace).
HELLO=examples/hello-app/Cargo.toml
step hello-app bash -c "cargo fmt --manifest-path $HELLO --check &&
  cargo clippy --manifest-path $HELLO --all-targets -- -D warnings &&
  cargo test --manifest-path $HELLO"
# The example binaries the end-to-end tests run as a user would (they build them too, but
# one build here keeps that out of their time limits).
step examples cargo build --example caasd --example caas --example gateway --example route_churn --example open_loop
if cargo nextest --version >/dev/null 2>&1; then
  step tests cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
  echo "cargo-nextest not found: falling back to cargo test" >&2
  step tests cargo test --workspace --all-targets --no-fail-fast "$@"
fi

SUMMARY+=("ok     disk         $(disk_free) after the tests; target/ is $(du -sh target 2>/dev/null | cut -f1)")
print_summary
exit "$FAILED"
