#!/usr/bin/env bash
# Pull-and-stage from a loopback registry, side by side, in one run:
#   nestcache stage docker://… --no-unpack   (blobs verified into an OCI layout)
#   skopeo copy docker://… oci:…              (its peer: blobs into an OCI layout)
#   nestcache stage docker://…               (blobs + every layer extracted)
#   ctr images pull --plain-http              (its peer: content store + overlay snapshots,
#                                              fresh containerd root each time)
# on mkimage's `medium` (~300 MB, 5 gzip layers) and `large` (~1.5 GB, 10 layers) images,
# served by Debian's docker-registry on 127.0.0.1 (plain http, filesystem storage).
# Usage: scripts/bench-registry.sh [--json] [--reps N] [--images "medium large"]
# Needs ~4x the image sizes free under $TMPDIR; run as root (ctr, unpack of devices).
# NC_BENCH_NO_BUILD=1 uses the release binaries already built (under $CARGO_TARGET_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
repo_root=$PWD
. scripts/lib.sh

json=0
reps=3
images="medium large"
while [ $# -gt 0 ]; do
  case "$1" in
    --json) json=1 ;;
    --reps) reps=$2; shift ;;
    --images) images=$2; shift ;;
    *) echo "usage: $0 [--json] [--reps N] [--images \"medium large\"]" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "bench-registry: $*" >&2; }

[ -n "${NC_BENCH_NO_BUILD:-}" ] || cargo build --release --quiet -p nestcache --bin nestcache -p mkimage --bin nestcache-mkimage
nc=$(nc_bin release nestcache)
mk=$(nc_bin release nestcache-mkimage)

work=$(mktemp -d "${TMPDIR:-/tmp}/nc-bench-registry.XXXXXX")
reg_pid=
cleanup() {
  [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
  "$repo_root/scripts/containerd.sh" stop "$work/ctrd" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $addr
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 1 200); do
  (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
  sleep 0.05
done

for img in $images; do
  log "generating $img"
  "$mk" --preset "$img" --layout "$work/src" >&2
  log "pushing $img to $addr"
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/src:$img" "docker://$addr/bench/$img:v1"
done
rm -rf "$work/src"

now() { date +%s.%N; }
# Runs "$@" once, prints elapsed seconds; output goes to $work/last.log.
timed() {
  local s e
  sync
  s=$(now)
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; return 1; }
  e=$(now)
  echo "$e - $s" | bc
}

fresh_containerd() {
  "$repo_root/scripts/containerd.sh" stop "$work/ctrd" >/dev/null 2>&1 || true
  rm -rf "$work/ctrd"
  "$repo_root/scripts/containerd.sh" start "$work/ctrd"
}

declare -A samples
for img in $images; do
  ref=$addr/bench/$img:v1
  for r in $(seq 1 "$reps"); do
    log "$img rep $r/$reps"
    rm -rf "$work/store"
    samples[$img,nestcache_blobs]+="$(timed "$nc" stage "docker://$ref" --insecure --no-unpack --store "$work/store") "
    rm -rf "$work/oci"
    samples[$img,skopeo_copy]+="$(timed skopeo copy --quiet --src-tls-verify=false "docker://$ref" "oci:$work/oci:$img") "
    rm -rf "$work/oci" "$work/store"
    samples[$img,nestcache_stage]+="$(timed "$nc" stage "docker://$ref" --insecure --store "$work/store") "
    rm -rf "$work/store"
    sock=$(fresh_containerd)
    samples[$img,ctr_pull]+="$(timed ctr --address "$sock" -n bench images pull --plain-http "$ref") "
  done
done

stats() { # prints "min median" of the numbers given
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f %.3f", a[1], m}'
}
ratio() { echo "scale=3; $1 / $2" | bc; }

rows=()
for img in $images; do
  read -r nb_min nb_med <<<"$(stats ${samples[$img,nestcache_blobs]})"
  read -r sk_min sk_med <<<"$(stats ${samples[$img,skopeo_copy]})"
  read -r ns_min ns_med <<<"$(stats ${samples[$img,nestcache_stage]})"
  read -r ct_min ct_med <<<"$(stats ${samples[$img,ctr_pull]})"
  rows+=("$img $nb_min $nb_med $sk_min $sk_med $(ratio "$nb_med" "$sk_med") $ns_min $ns_med $ct_min $ct_med $(ratio "$ns_med" "$ct_med")")
done

if [ "$json" = 1 ]; then
  printf '{"reps":%s,"images":[' "$reps"
  sep=
  for row in "${rows[@]}"; do
    set -- $row
    printf '%s{"image":"%s","nestcache_blobs":{"min":%s,"median":%s},"skopeo_copy":{"min":%s,"median":%s},"ratio_blobs_vs_skopeo":%s,"nestcache_stage":{"min":%s,"median":%s},"ctr_pull":{"min":%s,"median":%s},"ratio_stage_vs_ctr":%s}' \
      "$sep" "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "$9" "${10}" "${11}"
    sep=,
  done
  printf ']}\n'
else
  echo "Pull from a loopback registry ($reps reps, seconds: min / median; ratio of medians, < 1 = nestcache faster)"
  echo
  echo "| image | nestcache --no-unpack | skopeo copy | ratio | nestcache stage (+unpack) | ctr pull (+unpack) | ratio |"
  echo "|---|---|---|---|---|---|---|"
  for row in "${rows[@]}"; do
    set -- $row
    echo "| $1 | $2 / $3 | $4 / $5 | $6 | $7 / $8 | $9 / ${10} | ${11} |"
  done
fi
