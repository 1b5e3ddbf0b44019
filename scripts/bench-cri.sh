#!/usr/bin/env bash
# RunPodSandbox -> container process exited through containerd's CRI plugin, nestcache's
# runtime with a store rootfs vs io.containerd.runc.v2 with the declared image; medians
# of N (default 10). Root; starts a private CRI containerd (testkit::cri), own CNI bridge.
#   scripts/bench-cri.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p nestcache --bin nestcache -p containerd-shim-nestcache --example cri_bench
# The shim alone, last: built with the CLI it would link the CLI's features too.
cargo build --release -p containerd-shim-nestcache
exec target/release/examples/cri_bench "${1:-10}"
