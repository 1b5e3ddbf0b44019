#!/usr/bin/env bash
# Builds containerd-shim-nestcache-v2 (cargo profile `shim`: size-optimised, static on
# glibc; see nc_build_shim in scripts/lib.sh) and installs it where containerd looks up
# shims: on its PATH. Runtime name io.containerd.nestcache.v2 maps to this binary name.
#   scripts/install-shim.sh [PREFIX]     (default PREFIX=/usr/local -> /usr/local/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
. scripts/lib.sh
bin=$(nc_build_shim shim)
install -D -m 0755 "$bin" "$prefix/bin/containerd-shim-nestcache-v2"
echo "installed $prefix/bin/containerd-shim-nestcache-v2" >&2
command -v runc >/dev/null || echo "note: the shim runs containers with runc, which is not on PATH" >&2
