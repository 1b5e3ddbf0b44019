#!/usr/bin/env bash
# A private containerd for development and tests, all of it under one directory.
#   scripts/containerd.sh start DIR   -> prints the socket address once it answers
#   scripts/containerd.sh stop DIR    -> stops that containerd (by its PID file only)
#   scripts/containerd.sh env DIR     -> prints `export CONTAINERD_ADDRESS=...`
# NESTCACHE_CONTAINERD_STATE_TMPFS=1 puts DIR/state (bundles, shim sockets' records) on a
# tmpfs of its own, as /run/containerd is on a node; this VM's /run is on disk, where each
# task's bundle writes and removals pay ext4's journal. The benchmarks set it for every
# containerd they start, peers' included.
set -euo pipefail

cmd=${1:?usage: containerd.sh start|stop|env DIR}
dir=$(realpath -m "${2:?usage: containerd.sh start|stop|env DIR}")
sock="$dir/containerd.sock"
pidfile="$dir/containerd.pid"

case "$cmd" in
start)
  command -v containerd >/dev/null || { echo "containerd not found: apt-get install -y containerd" >&2; exit 1; }
  mkdir -p "$dir"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "$sock"; exit 0; fi
  if [ "${NESTCACHE_CONTAINERD_STATE_TMPFS:-0}" = 1 ] && ! mountpoint -q "$dir/state"; then
    mkdir -p "$dir/state"
    mount -t tmpfs -o mode=0711,size=1g "nc-ctd-state" "$dir/state"
  fi
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$dir/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
TOML
  setsid containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 200); do
    if ctr --address "$sock" version >/dev/null 2>&1; then echo "$sock"; exit 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "containerd exited; log:" >&2; tail -20 "$dir/containerd.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "containerd did not answer on $sock within 10s; log: $dir/containerd.log" >&2
  exit 1
  ;;
stop)
  [ -f "$pidfile" ] || exit 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$pidfile"
  # Lazily: a shim still lingering may have its cwd in a bundle there.
  if mountpoint -q "$dir/state"; then umount -l "$dir/state"; fi
  ;;
env)
  echo "export CONTAINERD_ADDRESS=$sock"
  ;;
*)
  echo "usage: containerd.sh start|stop|env DIR" >&2; exit 2 ;;
esac
