#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (as root):
#   1. install containerd, runc and the build tools if missing (scripts/install-deps.sh),
#   2. build nestcache,
#   3. use the containerd that answers (CONTAINERD_ADDRESS, else the system socket), or
#      let nestcache start its embedded one,
#   4. create a cache container, write a file into its content dir on the host, show the
#      file inside the cache container through /proc/<pid>/root/<path>,
#   5. remove the cache (and stop the embedded containerd if this script started it).
# Environment: NESTCACHE_STATE_DIR (default /var/lib/nestcache), CONTAINERD_ADDRESS.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

step "dependencies"
scripts/install-deps.sh
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

step "build"
cargo build --quiet --bin nestcache
nc="$PWD/target/debug/nestcache"

step "environment"
"$nc" env
embedded_before=$("$nc" system status --json | grep -c '"running": true' || true)

name="demo-$$"
path=/cache
step "create cache $name (target path $path, TTL 30m)"
"$nc" cache create "$name" --path "$path" --ttl 30m
cleanup() { "$nc" cache rm "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

info=$("$nc" cache inspect "$name" --json)
field() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" <<<"$info"; }
content=$(field content_dir)
pid=$(field pid)
"$nc" cache inspect "$name"

step "write on the host, read inside the cache container"
echo "written on the host at $(date -u +%FT%TZ)" >"$content/hello.txt"
echo "host:      $content/hello.txt"
echo "container: /proc/$pid/root$path/hello.txt"
echo "--- inside the cache container:"
cat "/proc/$pid/root$path/hello.txt"

step "caches"
"$nc" cache ls

step "remove cache $name"
trap - EXIT
"$nc" cache rm "$name"
if [ -e "$content" ]; then echo "content dir $content still exists" >&2; exit 1; fi
echo "content dir $content removed"

if [ "$embedded_before" = 0 ] && "$nc" system status --json | grep -q '"running": true'; then
  step "stop the embedded containerd this demo started"
  "$nc" system stop
fi
