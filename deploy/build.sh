#!/usr/bin/env bash
# Builds shardq's static binaries and the FROM-scratch container image.
#
# Usage: deploy/build.sh [IMAGE]
#
#   IMAGE              image tag; default $SHARDQ_IMAGE, else shardq:dev
#   CARGO_TARGET_DIR   honoured as cargo honours it (default: <repo>/target)
#   SHARDQ_TARGET      Rust target triple; default the host's (…-linux-gnu)
#   SHARDQ_SKIP_CARGO  set to 1 to package already-built binaries as they are
#
# Safe to run again: cargo rebuilds only what changed, and docker reuses
# the cached layer when the binaries are byte-identical.
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(dirname "$deploy_dir")"
image="${1:-${SHARDQ_IMAGE:-shardq:dev}}"
binaries=(shardq-consumer shardq-producer shardq-demo)

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo is not on PATH"
command -v docker >/dev/null || die "docker is not on PATH"

# CARGO_TARGET_DIR may be relative to where we were started: make it
# absolute before changing directory, so cargo and we agree on it.
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
case "$target_dir" in
/*) ;;
*) target_dir="$PWD/$target_dir" ;;
esac

triple="${SHARDQ_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
case "$triple" in
*-linux-gnu) ;;
*) die "target $triple: the image needs a static *-linux-gnu build (set SHARDQ_TARGET)" ;;
esac
bin_dir="$target_dir/$triple/release"

cd "$repo_root"
if [[ "${SHARDQ_SKIP_CARGO:-0}" != 1 ]]; then
    say "cargo build --release --target $triple (static: +crt-static) -> $bin_dir"
    # An explicit --target keeps RUSTFLAGS away from build scripts and
    # proc macros, which must stay dynamic host binaries.
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
        CARGO_TARGET_DIR="$target_dir" \
        cargo build --release --locked --target "$triple" \
        -p shardq-consumer -p shardq-producer -p shardq-demo
else
    say "SHARDQ_SKIP_CARGO=1: using the binaries already in $bin_dir"
fi

# The build context is a fresh temporary directory holding only the three
# binaries (debug info stripped, symbols kept), so nothing else of the
# repository or the target dir is sent to the docker daemon.
context="$(mktemp -d "${TMPDIR:-/tmp}/shardq-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
for bin in "${binaries[@]}"; do
    [[ -x "$bin_dir/$bin" ]] || die "$bin_dir/$bin is missing: build it first"
    if command -v readelf >/dev/null && readelf -l "$bin_dir/$bin" | grep -q INTERP; then
        die "$bin_dir/$bin is dynamically linked: a FROM scratch image needs it static"
    fi
    cp "$bin_dir/$bin" "$context/$bin"
    if command -v strip >/dev/null; then
        strip --strip-debug "$context/$bin"
    fi
    chmod 0755 "$context/$bin"
done
cp "$deploy_dir/Dockerfile" "$context/Dockerfile"
# The (empty) data directory the image creates for --data-dir.
mkdir "$context/data"
printf 'shardq consumer state (topics.json), written on SIGTERM\n' >"$context/data/README"
say "binaries: $(cd "$context" && du -h "${binaries[@]}" | awk '{printf "%s %s  ", $2, $1}')"

say "docker build -t $image (FROM scratch)"
docker build --tag "$image" "$context"

say "built $image: $(docker image inspect --format '{{.Id}} {{.Size}} bytes' "$image")"
