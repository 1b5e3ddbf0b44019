#!/usr/bin/env bash
# Runs every test against a private containerd + runc: installs what is missing, starts
# containerd under a temp dir, runs the whole workspace's tests, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
dir=$(mktemp -d /tmp/nestcache-test.XXXXXX)
trap 'scripts/containerd.sh stop "$dir"; rm -rf "$dir"' EXIT
# containerd finds runtime io.containerd.nestcache.v2 as containerd-shim-nestcache-v2 on its
# PATH: build the shim first and put it there (for this containerd and the tests' own).
cargo build -p containerd-shim-nestcache
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
mkdir -p "$dir/bin"
ln -sf "$target_dir/debug/containerd-shim-nestcache-v2" "$dir/bin/containerd-shim-nestcache-v2"
export PATH="$dir/bin:$PATH"
export CONTAINERD_ADDRESS
# Every prerequisite is here now: a test that finds one missing fails instead of skipping.
export NESTCACHE_TEST_REQUIRE=1
CONTAINERD_ADDRESS=$(scripts/containerd.sh start "$dir")
echo "private containerd at $CONTAINERD_ADDRESS" >&2
cargo test --workspace "$@"
