#!/usr/bin/env bash
# containerd-shim-nestcache-v2 next to containerd-shim-runc-v2, in one run, on the same
# image and the same private containerd:
#   - resident memory (VmRSS, Pss) of one idle shim (its task runs `sleep`), and of a
#     running shim with no task yet (issue 17's goal: nestcache's ≤ 1/3 of runc-v2's);
#   - the shim binaries' sizes (ours as a node runs it: cargo profile `shim`, static on
#     glibc, as scripts/install-shim.sh builds it);
#   - task start latency: `ctr run -d` (container + task create + start), and the whole
#     `ctr run --rm IMAGE /bin/true` cycle (create, start, exit, delete);
#   - and, for the shim only, start from a nestcache store (annotated --rootfs run).
# Runtimes alternate run by run so drift hits both alike. Needs root, containerd, runc,
# umoci, busybox-static (scripts/install-deps.sh).
#   scripts/bench-shim.sh [RUNS]     (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
scripts/install-deps.sh
command -v containerd-shim-runc-v2 >/dev/null || { echo "containerd-shim-runc-v2 not on PATH" >&2; exit 1; }

. scripts/lib.sh
cargo build --release -p nestcache --bin nestcache >&2
target_dir=$(nc_target_dir)

nc_temp_dir dir nc-bench-shim
nc_shim_on_path shim "$dir"
nc_containerd_start "$dir/ctd"
address=$CONTAINERD_ADDRESS
ns=bench
ctr() { command ctr --address "$address" --namespace "$ns" "$@"; }

# The image: a busybox-static root as one layer, built with umoci, imported into
# containerd and staged into a nestcache store.
root=$dir/rootfs
mkdir -p "$root"/{bin,proc,dev,sys,tmp,etc,run}
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh true sleep cat; do ln -s busybox "$root/bin/$a"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
umoci init --layout "$dir/layout"
umoci new --image "$dir/layout:bb"
tar -C "$root" -cf "$dir/layer.tar" .
umoci raw add-layer --image "$dir/layout:bb" "$dir/layer.tar"
umoci config --image "$dir/layout:bb" --config.cmd /bin/sh --config.env PATH=/bin
tar -C "$dir/layout" -cf "$dir/image.tar" .
ctr images import --base-name bench.local/bb "$dir/image.tar" >/dev/null
image=bench.local/bb:bb
"$target_dir/release/nestcache" stage --store "$dir/store" "oci:$dir/layout:bb" >/dev/null
mkdir -p "$dir/empty"
# The shim takes stores only under the roots its options allow (default: nestcache's
# state dir); this one is in the bench's temp dir.
printf '{"store_roots": ["%s"]}\n' "$dir" >"$dir/shim.json"

now() { date +%s%N; }
ms() { awk -v ns="$1" 'BEGIN { printf "%.1f", ns / 1e6 }'; }

declare -A detach_ns cycle_ns
for rt in runc nestcache store; do detach_ns[$rt]=""; cycle_ns[$rt]=""; done
runtime_of() { case $1 in runc) echo io.containerd.runc.v2 ;; *) echo io.containerd.nestcache.v2 ;; esac; }
run_args() {
  case $1 in
    store) echo "--runtime-config-path $dir/shim.json --annotation io.nestcache.store=$dir/store --annotation io.nestcache.image=bb --rootfs $dir/empty" ;;
    *) echo "$image" ;;
  esac
}

# One warm-up each (page cache, runc binary), not counted.
for rt in runc nestcache store; do
  # shellcheck disable=SC2046
  ctr run --rm --runtime "$(runtime_of $rt)" $(run_args $rt) "warm-$rt" /bin/true
done

for i in $(seq 1 "$runs"); do
  for rt in runc nestcache store; do
    id="$rt-$i"
    t0=$(now)
    # shellcheck disable=SC2046
    ctr run -d --runtime "$(runtime_of $rt)" $(run_args $rt) "$id" /bin/sleep 1000 >/dev/null
    t1=$(now)
    detach_ns[$rt]+="$((t1 - t0)) "
    ctr task kill -s KILL "$id" >/dev/null
    while ctr task ls | grep -q "^$id .*RUNNING"; do sleep 0.01; done
    ctr task rm "$id" >/dev/null 2>&1 || true
    ctr container rm "$id" >/dev/null
    t0=$(now)
    # shellcheck disable=SC2046
    ctr run --rm --runtime "$(runtime_of $rt)" $(run_args $rt) "$id-c" /bin/true
    t1=$(now)
    cycle_ns[$rt]+="$((t1 - t0)) "
  done
done

stats() { # median and mean in ms of a list of ns
  tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ a[NR] = $1; s += $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
    printf "%.1f %.1f", m / 1e6, s / NR / 1e6 }'
}

# Memory: one idle task per runtime; the shim is the task's parent (subreaper).
mem() { # pid -> "rss_kib pss_kib anonymous_kib"
  local rss pss anon
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status")
  pss=$(awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0)
  anon=$(awk '/^Anonymous:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0)
  echo "$rss $pss $anon"
}
declare -A rss pss anon
for rt in runc nestcache store; do
  # shellcheck disable=SC2046
  ctr run -d --runtime "$(runtime_of $rt)" $(run_args $rt) "idle-$rt" /bin/sleep 1000 >/dev/null
done
sleep 2
for rt in runc nestcache store; do
  task=$(ctr task ls | awk -v id="idle-$rt" '$1 == id { print $2 }')
  shim=$(awk '/^PPid:/ { print $2 }' "/proc/$task/status")
  read -r rss[$rt] pss[$rt] anon[$rt] < <(mem "$shim")
done
for rt in runc nestcache store; do
  ctr task kill -s KILL "idle-$rt" >/dev/null
done
sleep 1
for rt in runc nestcache store; do
  ctr task rm "idle-$rt" >/dev/null 2>&1 || true
  ctr container rm "idle-$rt" >/dev/null 2>&1 || true
done

# A running shim with no task: each runtime's `start` spawns its long-lived shim, which
# waits for containerd's first Create; none comes. The log fifo gets a reader, as
# containerd would be.
notask_mem() { # shim binary, id -> "rss_kib pss_kib anonymous_kib"
  local b=$dir/notask-$2 pid socket
  mkdir -p "$b"
  echo '{"ociVersion": "1.0.2"}' >"$b/config.json"
  mkfifo "$b/log"
  cat "$b/log" >/dev/null &
  socket=$(cd "$b" && TTRPC_ADDRESS=$address.ttrpc "$1" -namespace "$ns" -id "$2" -address "$address" start)
  sleep 1
  pid=$(pgrep -f -- "-id $2 -address" | head -1)
  mem "$pid"
  kill -KILL "$pid"
  rm -f "${socket#unix://}"
}
declare -A notask_rss notask_pss notask_anon
nc_shim=$(command -v containerd-shim-nestcache-v2)
runc_shim=$(command -v containerd-shim-runc-v2)
read -r notask_rss[runc] notask_pss[runc] notask_anon[runc] < <(notask_mem "$runc_shim" notask-runc)
read -r notask_rss[nestcache] notask_pss[nestcache] notask_anon[nestcache] < <(notask_mem "$nc_shim" notask-nc)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
stripped_size() { strip -o "$dir/stripped" "$1" && stat -L -c %s "$dir/stripped"; }

read -r d_runc_med d_runc_mean <<<"$(stats "${detach_ns[runc]}")"
read -r d_nc_med d_nc_mean <<<"$(stats "${detach_ns[nestcache]}")"
read -r d_st_med d_st_mean <<<"$(stats "${detach_ns[store]}")"
read -r c_runc_med c_runc_mean <<<"$(stats "${cycle_ns[runc]}")"
read -r c_nc_med c_nc_mean <<<"$(stats "${cycle_ns[nestcache]}")"
read -r c_st_med c_st_mean <<<"$(stats "${cycle_ns[store]}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "shim benchmark: $runs runs each, image $image (busybox-static, 1 layer), $(nproc) cores"
printf '%-34s %14s %14s %16s %10s\n' "" "runc-v2 shim" "nestcache shim" "nestcache+store" "ratio n/r"
printf '%-34s %14s %14s %16s %10s\n' "idle shim VmRSS (KiB)" "${rss[runc]}" "${rss[nestcache]}" "${rss[store]}" "$(ratio "${rss[nestcache]}" "${rss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "idle shim Pss (KiB)" "${pss[runc]}" "${pss[nestcache]}" "${pss[store]}" "$(ratio "${pss[nestcache]}" "${pss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "idle shim Anonymous (KiB)" "${anon[runc]}" "${anon[nestcache]}" "${anon[store]}" "$(ratio "${anon[nestcache]}" "${anon[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "no-task shim VmRSS (KiB)" "${notask_rss[runc]}" "${notask_rss[nestcache]}" "-" "$(ratio "${notask_rss[nestcache]}" "${notask_rss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "no-task shim Pss (KiB)" "${notask_pss[runc]}" "${notask_pss[nestcache]}" "-" "$(ratio "${notask_pss[nestcache]}" "${notask_pss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "no-task shim Anonymous (KiB)" "${notask_anon[runc]}" "${notask_anon[nestcache]}" "-" "$(ratio "${notask_anon[nestcache]}" "${notask_anon[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "shim binary MiB (as built)" "$(mib "$(stat -L -c %s "$runc_shim")")" "$(mib "$(stat -L -c %s "$nc_shim")")" "-" ""
printf '%-34s %14s %14s %16s %10s\n' "shim binary MiB (stripped)" "$(mib "$(stripped_size "$runc_shim")")" "$(mib "$(stripped_size "$nc_shim")")" "-" ""
printf '%-34s %14s %14s %16s %10s\n' "goal: idle VmRSS ratio <= 0.33" "" "" "" "$(ratio "${rss[nestcache]}" "${rss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "goal: no-task VmRSS ratio <= 0.33" "" "" "" "$(ratio "${notask_rss[nestcache]}" "${notask_rss[runc]}")"
printf '%-34s %14s %14s %16s %10s\n' "ctr run -d, median ms" "$d_runc_med" "$d_nc_med" "$d_st_med" "$(ratio "$d_nc_med" "$d_runc_med")"
printf '%-34s %14s %14s %16s %10s\n' "ctr run -d, mean ms" "$d_runc_mean" "$d_nc_mean" "$d_st_mean" "$(ratio "$d_nc_mean" "$d_runc_mean")"
printf '%-34s %14s %14s %16s %10s\n' "ctr run --rm /bin/true, median ms" "$c_runc_med" "$c_nc_med" "$c_st_med" "$(ratio "$c_nc_med" "$c_runc_med")"
printf '%-34s %14s %14s %16s %10s\n' "ctr run --rm /bin/true, mean ms" "$c_runc_mean" "$c_nc_mean" "$c_st_mean" "$(ratio "$c_nc_mean" "$c_runc_mean")"
