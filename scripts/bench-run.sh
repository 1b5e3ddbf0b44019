#!/usr/bin/env bash
# Warm start of a nested container, side by side, in one run (issue 5's benchmark):
#   nestcache run --rm IMAGE /bin/true   (image staged and extracted in a cache's store;
#                                         --net none, and --net bridge: the network's cost)
#   ctr run --rm IMAGE ID /bin/true      (the same image imported into containerd)
#   runc run ID                          (a prepared bundle: rootfs + config.json)
# Each is run N times (default 20) after one warm-up; prints mean and median wall times
# and the ratios nestcache/ctr and nestcache/runc.
#
#   scripts/bench-run.sh [N]      (as root; BUILD=release for an optimized nestcache)
#
# Uses a private containerd under a temp dir (scripts/containerd.sh) and removes
# everything it made when done.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

n=${1:-20}
profile=${BUILD:-debug}
cargo_flags=()
[ "$profile" = release ] && cargo_flags=(--release)
cargo build --quiet "${cargo_flags[@]}" --bin nestcache -p nestcache
cargo build --quiet "${cargo_flags[@]}" --bin nestcache-mkimage -p mkimage
nc=$(nc_bin "$profile" nestcache)
mkimage=$(nc_bin "$profile" nestcache-mkimage)

work=$(mktemp -d /tmp/nc-bench.XXXXXX)
ctd="$work/containerd"
cleanup() {
  set +e
  "$nc" cache rm bench >/dev/null 2>&1
  ctr --address "$CONTAINERD_ADDRESS" -n bench-ctr images rm bench/small:latest >/dev/null 2>&1
  scripts/containerd.sh stop "$ctd"
  runc delete -f "nc-bench-runc-$$" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

export CONTAINERD_ADDRESS
CONTAINERD_ADDRESS=$(scripts/containerd.sh start "$ctd")
export CONTAINERD_NAMESPACE=bench NESTCACHE_STATE_DIR="$work/state"

echo "image: mkimage preset small (busybox-static root), $n runs each, nestcache $profile build" >&2
"$mkimage" --preset small --ref small --layout "$work/layout" --oci-archive "$work/small.tar" >/dev/null

# nestcache: a cache, the image staged and extracted.
"$nc" cache create bench --path /cache >/dev/null
"$nc" stage --cache bench "oci:$work/layout:small" >/dev/null

# ctr: the same image imported (and unpacked into the overlayfs snapshotter).
ctr --address "$CONTAINERD_ADDRESS" -n bench-ctr images import --index-name bench/small:latest \
  "$work/small.tar" >/dev/null

# runc: a bundle with the extracted rootfs and a default config running /bin/true.
bundle="$work/bundle"
mkdir -p "$bundle/rootfs"
layer=$(ls -d "$NESTCACHE_STATE_DIR"/caches/bench/layers/diff/* | head -1)
cp -a "$layer/." "$bundle/rootfs/"
(cd "$bundle" && runc spec)
sed -i 's/"terminal": true/"terminal": false/; s/"sh"/"\/bin\/true"/' "$bundle/config.json"

now_ns() { date +%s%N; }

# time_runs NAME CMD...: runs CMD once to warm up, then n times; prints one ms per line.
time_runs() {
  local name=$1; shift
  "$@" >/dev/null 2>&1 || { echo "$name failed: $*" >&2; "$@"; exit 1; }
  for _ in $(seq 1 "$n"); do
    local t0 t1
    t0=$(now_ns)
    "$@" >/dev/null 2>&1
    t1=$(now_ns)
    echo $(((t1 - t0) / 1000))
  done >"$work/$name.us"
}

i=0
next_id() { i=$((i + 1)); echo "nc-bench-$$-$i"; }
ctr_run() { ctr --address "$CONTAINERD_ADDRESS" -n bench-ctr run --rm bench/small:latest "$(next_id)" /bin/true; }
runc_run() { runc run -b "$bundle" "nc-bench-runc-$$"; }

time_runs nestcache "$nc" run --rm --net none --cache bench small -- /bin/true
time_runs bridge "$nc" run --rm --net bridge --cache bench small -- /bin/true
time_runs ctr ctr_run
time_runs runc runc_run

stats() { # mean and median in ms, from microseconds
  sort -n "$work/$1.us" | awk '{a[NR]=$1; s+=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f %.1f\n", s/NR/1000, m/1000}'
}
read -r nc_mean nc_median < <(stats nestcache)
read -r br_mean br_median < <(stats bridge)
read -r ctr_mean ctr_median < <(stats ctr)
read -r runc_mean runc_median < <(stats runc)

printf '\n%-34s %10s %10s\n' "warm start of /bin/true" "mean ms" "median ms"
printf '%-34s %10s %10s\n' "nestcache run --rm (cache store)" "$nc_mean" "$nc_median"
printf '%-34s %10s %10s\n' "  same, --net bridge (CNI)" "$br_mean" "$br_median"
printf '%-34s %10s %10s\n' "ctr run --rm (imported image)" "$ctr_mean" "$ctr_median"
printf '%-34s %10s %10s\n' "runc run (prepared bundle)" "$runc_mean" "$runc_median"
awk -v a="$nc_median" -v b="$ctr_median" -v c="$runc_median" \
  'BEGIN { printf "\nratios (median): nestcache/ctr = %.2f, nestcache/runc = %.2f\n", a/b, a/c }'
awk -v a="$nc_median" -v b="$br_median" 'BEGIN { printf "the network (--net bridge - --net none, median): %.1f ms\n", b-a }'
