#!/usr/bin/env python3
"""Interleaved A/B of a warm `nestcache run --rm --runtime shim IMAGE /bin/true` between two
builds (--a and --b: dirs each holding `nestcache` and `containerd-shim-nestcache-v2`, e.g.
copies of target/release from two commits), with raw `runc run` and `ctr run --rm` of the
same image in the same shuffled loop, on one private containerd (the shim is swapped by a
symlink on its PATH; each side has a cache of its own, so a lingering shim of one is never
joined by the other). Prints min/median ms per row, the ratios, and per-phase ms of each
side (the CLI's RUST_LOG phases, the shim's NESTCACHE_SHIM_TIMING lines).
  scripts/bench-warm-ab.py --a DIR --b DIR [--n 20] [--phases 10] [--extra ctrroot]"""
import argparse, os, re, random, statistics, subprocess, sys, time, json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MKIMAGE = next((p for p in (os.path.join(ROOT, "target", d, "nestcache-mkimage") for d in ("release", "debug"))
                if os.path.exists(p)), "nestcache-mkimage")
ap = argparse.ArgumentParser()
ap.add_argument("--a", required=True)
ap.add_argument("--b", required=True)
ap.add_argument("--n", type=int, default=12)
ap.add_argument("--phases", type=int, default=6)
ap.add_argument("--work", default="/tmp/nestcache-warm-ab")
ap.add_argument("--extra", default="", help="extra rows: comma list of ctrroot,cnull")
args = ap.parse_args()

work = args.work
os.makedirs(work, exist_ok=True)
bindir = os.path.join(work, "bin")
os.makedirs(bindir, exist_ok=True)
link = os.path.join(bindir, "containerd-shim-nestcache-v2")


def use(side):
    tmp = link + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join(side, "containerd-shim-nestcache-v2"), tmp)
    os.replace(tmp, link)


def sh(cmd, env=None, check=True, capture=False):
    return subprocess.run(cmd, shell=isinstance(cmd, str), env=env, check=check,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def timed(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} -> {p.returncode}: {p.stderr[-1500:]}")
    return dt * 1e3, p.stderr


env = dict(os.environ)
env["PATH"] = bindir + ":" + env["PATH"]
env["NESTCACHE_SHIM_TIMING"] = "1"
use(args.b)
ctd = os.path.join(work, "ctd")
address = sh([f"{ROOT}/scripts/containerd.sh", "start", ctd], env=env, capture=True).stdout.strip()
env["CONTAINERD_ADDRESS"] = address
env["CONTAINERD_NAMESPACE"] = "ab"
env["NESTCACHE_STATE_DIR"] = os.path.join(work, "state")
env["NESTCACHE_NET"] = "none"
env.pop("NESTCACHE_SHIM_LINGER_MS", None)
log_path = os.path.join(ctd, "containerd.log")
try:
    img = os.path.join(work, "img")
    if not os.path.exists(img):
        sh([MKIMAGE, "--preset", "small", "--layout", img,
            "--oci-archive", img + ".tar"])
    store = os.path.join(work, "store")
    nc = {s: os.path.join(d, "nestcache") for s, d in (("A", args.a), ("B", args.b))}
    sh([nc["B"], "stage", f"oci:{img}:small", "--store", store, "--ref", "small"], env=env)
    for s in "AB":
        sh([nc[s], "cache", "rm", f"ab-{s}", "--keep-content"], env=env, check=False)
        sh([nc[s], "cache", "create", f"ab-{s}", "--path", "/cache", "--content-dir", store], env=env)
    bundle = os.path.join(work, "bundle")
    if not os.path.exists(bundle):
        sh(["umoci", "unpack", "--image", f"{img}:small", bundle])
        cfg = os.path.join(bundle, "config.json")
        spec = json.load(open(cfg))
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/true"]
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "user"]
        spec["linux"].pop("uidMappings", None)
        spec["linux"].pop("gidMappings", None)
        json.dump(spec, open(cfg, "w"))
    ctr = ["ctr", "--address", address, "--namespace", "ab"]
    sh(ctr + ["images", "import", img + ".tar"], env=env)
    name = sh(ctr + ["images", "ls", "-q"], env=env, capture=True).stdout.split()[0]
    rows = {}

    def add(k, v):
        rows.setdefault(k, []).append(v)

    def nested(s):
        use(args.a if s == "A" else args.b)
        return [nc[s], "run", "--rm", "--runtime", "shim", "--cache", f"ab-{s}", "small", "--", "/bin/true"]

    # Warm-up: each side's first run (and B's shim start).
    for s in "AB":
        timed(nested(s), env)
    timed(ctr + ["run", "--rm", name, "warmup", "/bin/true"], env)
    kinds = ["A", "B", "runc", "ctr"]
    extra = [x for x in args.extra.split(",") if x]
    kinds += extra
    for i in range(args.n):
        random.shuffle(kinds)
        for k in kinds:
            if k in "AB":
                add(f"nestcache run --rm --runtime shim ({k})", timed(nested(k), env)[0])
            elif k == "runc":
                add("runc run (raw)", timed(["runc", "run", "--bundle", bundle, f"raw-{os.getpid()}-{i}"])[0])
            elif k == "ctr":
                add("ctr run --rm (runc shim)", timed(ctr + ["run", "--rm", name, f"w-{i}", "/bin/true"], env)[0])
            elif k == "ctrroot":
                add("ctr run --rm --rootfs (runc shim, no snapshot)",
                    timed(ctr + ["run", "--rm", "--rootfs", os.path.join(bundle, "rootfs"), f"r-{i}", "/bin/true"], env)[0])
    print(f"load: {open('/proc/loadavg').read().split()[:3]}  n={args.n}")
    print("| row | min ms | median ms |\n|---|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {min(v):.1f} | {statistics.median(v):.1f} |")
    runc = statistics.median(rows["runc run (raw)"])
    runc_min = min(rows["runc run (raw)"])
    ctrm = statistics.median(rows["ctr run --rm (runc shim)"])
    ctr_min = min(rows["ctr run --rm (runc shim)"])
    for s in "AB":
        v = rows[f"nestcache run --rm --runtime shim ({s})"]
        print(f"{s}: / runc run = {min(v)/runc_min:.2f} (min) {statistics.median(v)/runc:.2f} (median);"
              f" / ctr run --rm = {min(v)/ctr_min:.2f} (min) {statistics.median(v)/ctrm:.2f} (median)")

    # Phases (RUST_LOG debug on the CLI, the shim's timing lines in containerd's log).
    cli_re = re.compile(r'phase="([^"]+)" ms="([\d.]+)"')
    shim_re = re.compile(r"phase=([\w-]+) id=\S+ ms=([\d.]+)")
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    ph = {}
    penv = dict(env, RUST_LOG="nestcache=debug")
    for i in range(args.phases):
        for s in "AB":
            off = os.path.getsize(log_path)
            total, err = timed(nested(s), penv)
            time.sleep(0.1)
            with open(log_path, errors="replace") as f:
                f.seek(off)
                shim_lines = f.read()
            acc = {}
            for n, ms in cli_re.findall(ansi.sub("", err)):
                acc["cli: " + n] = acc.get("cli: " + n, 0) + float(ms)
            for n, ms in shim_re.findall(shim_lines):
                acc["shim: " + n] = acc.get("shim: " + n, 0) + float(ms)
            acc["total (wall)"] = total
            cps = ["create container", "create task, CNI ADD", "start task", "remove task, container, dirs"]
            own = sum(acc.get("cli: " + n, 0) for n in cps) - sum(acc.get("shim: " + n, 0) for n in ["rpc-create", "rpc-start", "rpc-delete"])
            acc["containerd's own cost of a task (derived, as bench.py)"] = own
            acc["cli: remove minus shim rpc-delete"] = acc.get("cli: remove task, container, dirs", 0) - acc.get("shim: rpc-delete", 0)
            acc["cli: create task minus shim rpc-create"] = acc.get("cli: create task, CNI ADD", 0) - acc.get("shim: rpc-create", 0)
            for k, v in acc.items():
                ph.setdefault((k, s), []).append(v)
    names = []
    for (k, s) in ph:
        if k not in names:
            names.append(k)
    print("\n| phase | A min | A median | B min | B median |\n|---|---:|---:|---:|---:|")
    for k in names:
        cells = []
        for s in "AB":
            v = ph.get((k, s))
            cells += [f"{min(v):.1f}", f"{statistics.median(v):.1f}"] if v else ["-", "-"]
        print(f"| {k} | " + " | ".join(cells) + " |")
finally:
    for s in "AB":
        sh([os.path.join(args.a if s == "A" else args.b, "nestcache"), "cache", "rm", f"ab-{s}", "--keep-content"], env=env, check=False)
    sh([f"{ROOT}/scripts/containerd.sh", "stop", ctd], env=env, check=False)
