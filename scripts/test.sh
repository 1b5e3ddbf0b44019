#!/usr/bin/env bash
# Runs every test against a private containerd + runc: installs what is missing, starts
# containerd under a temp dir, runs the whole workspace's tests, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
scripts/install-deps.sh
nc_temp_dir dir nestcache-test
# containerd finds runtime io.containerd.nestcache.v2 as containerd-shim-nestcache-v2 on its
# PATH: build the shim first and put it there (for this containerd and the tests' own).
nc_shim_on_path debug "$dir"
# A group shim exits with its last task, as the tests' leak checks expect (the linger's
# own tests ask for theirs in the task's options).
export NESTCACHE_SHIM_LINGER_MS=0
nc_containerd_start "$dir"
echo "private containerd at $CONTAINERD_ADDRESS" >&2
# Every prerequisite is here now: a test that finds one missing fails instead of skipping.
export NESTCACHE_TEST_REQUIRE=1
# Every test binary runs, so one failure does not hide the others.
cargo test --workspace --no-fail-fast "$@"
