#!/usr/bin/env bash
# The main job, end to end, on a fresh machine (as root):
#   1. install containerd, runc and the build tools if missing (scripts/install-deps.sh),
#   2. build nestcache,
#   3. use the containerd that answers (CONTAINERD_ADDRESS, else the system socket), or
#      let nestcache start its embedded one,
#   4. create a cache container; stage a small image (busybox, built here with umoci,
#      no registry needed) into its content dir,
#   5. write a file into the content dir on the host and show it inside the cache
#      container through /proc/<pid>/root/<path>,
#   6. run a nested container from the cache's store that reads the same file at the same
#      path (nestcache verifies from outside that it sees the cache),
#   7. remove the cache (and stop the embedded containerd if this script started it).
# Environment: NESTCACHE_STATE_DIR (default /var/lib/nestcache), CONTAINERD_ADDRESS.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "dependencies"
scripts/install-deps.sh
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

step "build"
cargo build --quiet --bin nestcache
nc="$PWD/target/debug/nestcache"

step "environment"
"$nc" env
status=$("$nc" system status --json)
embedded_before=$(grep -c '"running": true' <<<"$status" || true)

work=$(mktemp -d /tmp/nestcache-demo.XXXXXX)
name="demo-$$"
path=/cache
# The embedded containerd is stopped again only if this script started it.
stop_embedded_if_started() {
  # (Output captured first: grep -q would close the pipe under nestcache.)
  local status
  status=$("$nc" system status --json)
  if [ "$embedded_before" = 0 ] && grep -q '"running": true' <<<"$status"; then
    step "stop the embedded containerd this demo started"
    "$nc" system stop
  fi
}
cleanup() {
  "$nc" cache rm "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
  stop_embedded_if_started || true
}
trap cleanup EXIT

step "create cache $name (target path $path, TTL 30m)"
"$nc" cache create "$name" --path "$path" --ttl 30m
info=$("$nc" cache inspect "$name" --json)
field() { sed -n "s/^  \"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" <<<"$info"; }
content=$(field content_dir)
pid=$(field pid)
"$nc" cache inspect "$name"

step "stage a busybox image into the cache (an OCI layout built with umoci)"
busybox=$(command -v busybox)
umoci init --layout "$work/image"
umoci new --image "$work/image:demo"
umoci unpack --image "$work/image:demo" "$work/bundle" >/dev/null
mkdir -p "$work/bundle/rootfs/bin"
cp "$busybox" "$work/bundle/rootfs/bin/busybox"
for applet in sh cat ls; do ln -s busybox "$work/bundle/rootfs/bin/$applet"; done
umoci repack --image "$work/image:demo" "$work/bundle"
umoci config --image "$work/image:demo" --config.cmd /bin/sh
"$nc" stage "oci:$work/image:demo" --cache "$name"

step "write on the host, read inside the cache container"
echo "written on the host at $(date -u +%FT%TZ)" >"$content/hello.txt"
echo "host:      $content/hello.txt"
echo "container: /proc/$pid/root$path/hello.txt"
echo "--- inside the cache container:"
cat "/proc/$pid/root$path/hello.txt"

step "run a nested container from the cache; it reads the same file at $path"
"$nc" run --rm --cache "$name" demo -- cat "$path/hello.txt"

step "list $path in a nested container (its mount is verified before the process starts)"
"$nc" run --rm --cache "$name" demo -- ls -la "$path"
echo "nested containers left: $("$nc" ps -a --json | grep -c '"id"' || true)"

step "caches"
"$nc" cache ls

step "remove cache $name"
trap - EXIT
"$nc" cache rm "$name"
rm -rf "$work"
if [ -e "$content" ]; then echo "content dir $content still exists" >&2; exit 1; fi
echo "content dir $content removed"

stop_embedded_if_started
