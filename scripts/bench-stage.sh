#!/usr/bin/env bash
# Staging throughput and memory next to the floor: `sha256sum` over the same bytes.
# Builds a docker-archive of SIZE_MB (default 1536) of incompressible data in LAYERS
# layers, then times `nestcache stage --no-unpack` into a fresh store (cold: every byte
# hashed and written once), a re-stage (dedupe), and sha256sum over the layer tars.
# Usage: scripts/bench-stage.sh [SIZE_MB] [LAYERS]   (needs ~3x SIZE_MB free in $TMPDIR)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
size_mb=${1:-1536}
layers=${2:-10}
cargo build --release --quiet --bin nestcache
nc=$(nc_bin release nestcache)
work=$(mktemp -d "${TMPDIR:-/tmp}/nc-bench-stage.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

per=$(( size_mb / layers ))
diff_ids=()
names=()
for i in $(seq 1 "$layers"); do
  mkdir -p "l$i/data"
  head -c "$(( per * 1024 * 1024 ))" /dev/urandom > "l$i/data/blob$i"
  tar -C "l$i" -cf "layer$i.tar" data
  rm -rf "l$i"
  diff_ids+=("\"sha256:$(sha256sum "layer$i.tar" | cut -d' ' -f1)\"")
  names+=("\"layer$i.tar\"")
done
join() { local IFS=,; echo "$*"; }
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]}}' \
  "$(join "${diff_ids[@]}")" > config.json
printf '[{"Config":"config.json","RepoTags":["bench:1"],"Layers":[%s]}]' \
  "$(join "${names[@]}")" > manifest.json
tar -cf image.tar manifest.json config.json layer*.tar
rm -f layer*.tar
bytes=$(stat -c %s image.tar)
sync

secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
mib=$(( bytes / 1024 / 1024 ))
# Both read from the page cache: warm it, so neither pays the first read from disk.
cat image.tar > /dev/null
t_sha=$(secs sha256sum image.tar)
t_ssl=$( command -v openssl >/dev/null && secs openssl dgst -sha256 image.tar || echo 0)
if [ -x /usr/bin/time ]; then
  t_stage=$(secs /usr/bin/time -f %M -o rss.txt "$nc" stage "docker-archive:$work/image.tar" --store "$work/store" --no-unpack)
  rss_kib=$(tail -1 rss.txt)
else
  t_stage=$(secs "$nc" stage "docker-archive:$work/image.tar" --store "$work/store" --no-unpack)
  rss_kib=unknown
fi
t_again=$(secs "$nc" stage "docker-archive:$work/image.tar" --store "$work/store" --no-unpack)
t_check=$(secs "$nc" store check --store "$work/store")
echo "image: ${mib} MiB in ${layers} layers"
echo "sha256sum (floor):      ${t_sha}s  ($(echo "$mib / $t_sha" | bc) MiB/s)"
[ "$t_ssl" != 0 ] && echo "openssl dgst -sha256:   ${t_ssl}s  ($(echo "$mib / $t_ssl" | bc) MiB/s)"
echo "nestcache stage (cold): ${t_stage}s  ($(echo "$mib / $t_stage" | bc) MiB/s), peak RSS ${rss_kib} KiB"
echo "nestcache stage (again): ${t_again}s"
echo "nestcache store check:  ${t_check}s"
echo "stage / sha256sum: $(echo "scale=2; $t_stage / $t_sha" | bc)  (stage also writes and fsyncs every byte)"
