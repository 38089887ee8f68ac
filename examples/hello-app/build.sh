#!/usr/bin/env bash
# Builds the statically linked hello-app binary and its FROM-scratch image.
#
#   examples/hello-app/build.sh [--push] [--no-image] [TAG...]
#
#   TAG         image tag(s), e.g. 127.0.0.1:5000/hello:v1 (default: hello-app:latest)
#   --push      docker push every TAG after building (TAGs must be given)
#   --no-image  only build and check the static binary
#
# Uses BuildKit if `docker buildx` is available, otherwise the legacy builder
# (DOCKER_BUILDKIT=0). An explicit DOCKER_BUILDKIT in the environment wins.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET=x86_64-unknown-linux-gnu
BIN="$HERE/target/$TARGET/release/hello-app"

usage() { sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

push=0
image=1
tags=()
for arg in "$@"; do
  case "$arg" in
    --push) push=1 ;;
    --no-image) image=0 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "build.sh: unknown option: $arg" >&2; usage >&2; exit 2 ;;
    *) tags+=("$arg") ;;
  esac
done
if [[ $push -eq 1 && ${#tags[@]} -eq 0 ]]; then
  echo "build.sh: --push needs at least one TAG (e.g. 127.0.0.1:5000/hello:v1)" >&2
  exit 2
fi
if [[ $push -eq 1 && $image -eq 0 ]]; then
  echo "build.sh: --push and --no-image are mutually exclusive" >&2
  exit 2
fi
[[ ${#tags[@]} -gt 0 ]] || tags=("hello-app:latest")

start=$SECONDS

echo "==> cargo build (static, $TARGET)"
# Own target dir, own manifest: independent of the caas workspace.
RUSTFLAGS='-C target-feature=+crt-static' \
  CARGO_TARGET_DIR="$HERE/target" \
  cargo build --release --locked --target "$TARGET" --manifest-path "$HERE/Cargo.toml"

echo "==> checking that $BIN is static"
file_out="$(file -b "$BIN" 2>/dev/null || true)"
ldd_out="$(ldd "$BIN" 2>&1 || true)"
if [[ "$file_out" == *"dynamically linked"* ]] ||
  ! { [[ "$ldd_out" == *"not a dynamic executable"* || "$ldd_out" == *"statically linked"* ]] ||
    [[ "$file_out" == *"statically linked"* || "$file_out" == *"static-pie linked"* ]]; }; then
  echo "build.sh: $BIN is not statically linked" >&2
  echo "  file: $file_out" >&2
  echo "  ldd:  $ldd_out" >&2
  exit 1
fi
echo "    file: $file_out"
echo "    ldd:  $ldd_out"
echo "    size: $(stat -c %s "$BIN") bytes"

if [[ $image -eq 0 ]]; then
  echo "==> done in $((SECONDS - start))s (binary only)"
  exit 0
fi

if [[ -z "${DOCKER_BUILDKIT:-}" ]]; then
  if docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=1
  else
    export DOCKER_BUILDKIT=0
  fi
fi

tag_args=()
for t in "${tags[@]}"; do tag_args+=(-t "$t"); done

echo "==> docker build (DOCKER_BUILDKIT=$DOCKER_BUILDKIT) ${tags[*]}"
# Context is this folder; .dockerignore limits it to the binary.
docker build -f "$HERE/Dockerfile" "${tag_args[@]}" "$HERE"

if [[ $push -eq 1 ]]; then
  for t in "${tags[@]}"; do
    echo "==> docker push $t"
    docker push "$t"
  done
fi

echo "==> done in $((SECONDS - start))s: ${tags[*]}"
