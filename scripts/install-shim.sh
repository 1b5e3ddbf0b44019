#!/usr/bin/env bash
# Builds containerd-shim-nestcache-v2 (release) and installs it where containerd looks up
# shims: on its PATH. Runtime name io.containerd.nestcache.v2 maps to this binary name.
#   scripts/install-shim.sh [PREFIX]     (default PREFIX=/usr/local -> /usr/local/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
cargo build --release -p containerd-shim-nestcache
. scripts/lib.sh
target_dir=$(nc_target_dir)
install -D -m 0755 "$target_dir/release/containerd-shim-nestcache-v2" \
  "$prefix/bin/containerd-shim-nestcache-v2"
echo "installed $prefix/bin/containerd-shim-nestcache-v2" >&2
command -v runc >/dev/null || echo "note: the shim runs containers with runc, which is not on PATH" >&2
