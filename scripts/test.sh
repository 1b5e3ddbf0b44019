#!/usr/bin/env bash
# Runs every test against a private containerd + runc: installs what is missing, starts
# containerd under a temp dir, runs the whole workspace's tests, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
dir=$(mktemp -d /tmp/nestcache-test.XXXXXX)
trap 'scripts/containerd.sh stop "$dir"; rm -rf "$dir"' EXIT
export CONTAINERD_ADDRESS
CONTAINERD_ADDRESS=$(scripts/containerd.sh start "$dir")
echo "private containerd at $CONTAINERD_ADDRESS" >&2
cargo test --workspace "$@"
