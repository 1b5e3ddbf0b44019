#!/usr/bin/env bash
# The side-by-side staging benchmark (issue 8): builds release binaries, starts a private
# containerd (with nestcache's shim on its PATH), and runs scripts/bench.py, which prints a
# Markdown table (or JSON with --json) on stdout.
#   scripts/bench.sh [--images small,medium,large,many-small] [--reps 3] [--json] [--workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/install-deps.sh
cargo build --release --workspace >&2
nc_temp_dir dir nestcache-bench
# The shim as a node runs it (scripts/install-shim.sh): profile shim, static.
nc_shim_on_path shim "$dir"
export NESTCACHE_STATE_DIR="$dir/state"
# containerd's state on tmpfs, as on a node (scripts/containerd.sh), for every containerd
# of the run, the peers' too.
export NESTCACHE_CONTAINERD_STATE_TMPFS=1
# The shim logs its per-phase milliseconds into containerd's log (bench.py reads them for
# the warm run's phase table).
NESTCACHE_SHIM_TIMING=1 nc_containerd_start "$dir/ctd"
export NESTCACHE_BENCH_CONTAINERD_LOG="$dir/ctd/containerd.log"
python3 scripts/bench.py "$@"
