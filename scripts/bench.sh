#!/usr/bin/env bash
# The side-by-side staging benchmark (issue 8): builds release binaries, starts a private
# containerd (with nestcache's shim on its PATH), and runs scripts/bench.py, which prints a
# Markdown table (or JSON with --json) on stdout.
#   scripts/bench.sh [--images small,medium,large,many-small] [--reps 3] [--json] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --workspace >&2
dir=$(mktemp -d /tmp/nestcache-bench.XXXXXX)
trap 'scripts/containerd.sh stop "$dir/ctd"; rm -rf "$dir"' EXIT
mkdir -p "$dir/bin"
ln -sf "$PWD/target/release/containerd-shim-nestcache-v2" "$dir/bin/"
export PATH="$dir/bin:$PATH"
export CONTAINERD_ADDRESS NESTCACHE_STATE_DIR="$dir/state"
CONTAINERD_ADDRESS=$(scripts/containerd.sh start "$dir/ctd")
python3 scripts/bench.py "$@"
