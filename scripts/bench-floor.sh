#!/usr/bin/env bash
# The floor of a containerd task on this machine (issue 17): `ctr run --rm --rootfs` of a
# trivial runtime (a shell `runc` whose `create` forks a process waiting on a FIFO that
# `start` writes: no namespaces, mounts or cgroups), through containerd's runc shim and
# nestcache's shim (its own shim, and a lingering `io.nestcache.group` one), beside the
# trivial runtime alone and ctr's own start-up. What is left of a row after those two is
# containerd's and the shim's own cost of a task. Interleaved; min and median ms.
#   scripts/bench-floor.sh [RUNS]    (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs=${1:-15}
nc_temp_dir dir nestcache-floor
nc_shim_on_path release "$dir"
mkdir -p "$dir/fake" "$dir/rootfs"
cat >"$dir/fake/runc" <<EOF
#!/bin/sh
pidfile= cmd= id=
while [ \$# -gt 0 ]; do
  case "\$1" in
    --root|--log|--log-format|--bundle|-b|--console-socket|--process|-p) shift 2 ;;
    --pid-file) pidfile=\$2; shift 2 ;;
    create|start|delete|kill|state) cmd=\$1; shift ;;
    -*) shift ;;
    *) [ -n "\$id" ] || id=\$1; shift ;;
  esac
done
d=$dir/state/\$id
case "\$cmd" in
  create) mkdir -p "\$d" && mkfifo "\$d/go" && { ( read _ < "\$d/go" ) & echo \$! > "\$d/pid"; }
          printf %s "\$(cat "\$d/pid")" > "\$pidfile" ;;
  start) echo > "\$d/go" ;;
  delete) rm -rf "\$d" ;;
  kill) kill -9 "\$(cat "\$d/pid" 2>/dev/null)" 2>/dev/null; true ;;
  state) printf '{"id":"%s","pid":%s,"status":"stopped"}' "\$id" "\$(cat "\$d/pid" 2>/dev/null || echo 0)" ;;
  *) exit 1 ;;
esac
EOF
chmod +x "$dir/fake/runc"
# Both shims find `runc` on containerd's PATH; nestcache's runs every step through it.
PATH="$dir/fake:$PATH" NESTCACHE_SHIM_EXECUTOR=runc nc_containerd_start "$dir/ctd"
FAKE=$dir/fake/runc ROOTFS=$dir/rootfs RUNS=$runs python3 - <<'EOF'
import os, random, statistics, subprocess, time
ctr = ["ctr", "--address", os.environ["CONTAINERD_ADDRESS"], "--namespace", "floor"]
fake, rootfs, runs = os.environ["FAKE"], os.environ["ROOTFS"], int(os.environ["RUNS"])
nc = ["--runtime", "io.containerd.nestcache.v2"]

def rows(i):
    return {
        "ctr version (ctr's start-up + 1 RPC)": ctr + ["version"],
        "trivial runtime alone (create, start, delete)":
            ["sh", "-c", f"{fake} create --pid-file /dev/null t{i} && {fake} start t{i} && {fake} delete t{i}"],
        "ctr run --rm, runc shim": ctr + ["run", "--rm", "--rootfs", rootfs, f"r{i}", "/bin/true"],
        "ctr run --rm, nestcache shim (its own)": ctr + ["run", "--rm", *nc, "--rootfs", rootfs, f"n{i}", "/bin/true"],
        "ctr run --rm, nestcache shim (lingering group)":
            ctr + ["run", "--rm", *nc, "--annotation", "io.nestcache.group=floor", "--rootfs", rootfs, f"g{i}", "/bin/true"],
    }

def timed(cmd):
    t = time.perf_counter()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr[-500:]}")
    return (time.perf_counter() - t) * 1e3

for cmd in rows(-1).values():
    timed(cmd)
got = {}
for i in range(runs):
    items = list(rows(i).items())
    random.shuffle(items)
    for name, cmd in items:
        got.setdefault(name, []).append(timed(cmd))
print(f"load {' '.join(open('/proc/loadavg').read().split()[:3])}, {runs} runs each, interleaved")
print("| floor of a containerd task (trivial runtime) | min ms | median ms |\n|---|---:|---:|")
for name in rows(0):
    v = got[name]
    print(f"| {name} | {min(v):.1f} | {statistics.median(v):.1f} |")
EOF
