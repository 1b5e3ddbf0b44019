#!/usr/bin/env python3
"""Side-by-side image-staging benchmark (issue 8). Run through scripts/bench.sh.

In one run, on the same generated images, it times nestcache's staging and nested runs
next to what a user would otherwise use (ctr import + ctr run, skopeo copy, umoci unpack,
raw runc run) and next to the floors on the same bytes (sha256 at CPU speed, gzip/pigz -dc,
cat, write + fsync). Each figure is measured `--reps` times; the report gives min and
median and the ratios the goals are stated in. Absolute times on a shared machine are
noisy: read the ratios.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target")), "release")
NESTCACHE = os.path.join(REL, "nestcache")
MKIMAGE = os.path.join(REL, "nestcache-mkimage")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, env=None, cwd=None, stdin=subprocess.DEVNULL, check=True):
    """Runs cmd; returns (seconds, peak RSS in KiB of the child)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=stdin,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err.decode(errors='replace')[-2000:]}")
    return elapsed, usage.ru_maxrss


def sh(cmd, **kw):
    return run(["bash", "-c", cmd], **kw)


def flushed():
    """Writes back what earlier steps left dirty, so a timed stage or import (each ends in
    fsyncs or a syncfs) does not also pay for them; the disk floor does the same."""
    subprocess.run(["sync"], check=False)


def output(cmd, env=None):
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


class Figures:
    """Collected measurements: name -> list of seconds (and peak RSS)."""

    def __init__(self):
        self.times = {}
        self.rss = {}
        self.bytes = {}

    def add(self, image, name, secs, rss=None):
        self.times.setdefault((image, name), []).append(secs)
        if rss is not None:
            self.rss[(image, name)] = max(self.rss.get((image, name), 0), rss)

    def min(self, image, name):
        v = self.times.get((image, name))
        return min(v) if v else None

    def median(self, image, name):
        v = self.times.get((image, name))
        return statistics.median(v) if v else None


class Containerd:
    """A private containerd under its own directory (scripts/containerd.sh)."""

    def __init__(self, dirpath):
        self.dir = dirpath
        self.address = output([os.path.join(ROOT, "scripts", "containerd.sh"), "start", dirpath]).strip()

    def stop(self):
        subprocess.run([os.path.join(ROOT, "scripts", "containerd.sh"), "stop", self.dir], check=False)

    def ctr(self, *args):
        return ["ctr", "--address", self.address, "--namespace", "bench", *args]


def layer_blobs(layout_dir):
    """Layer blob paths of the single image in an OCI layout dir."""
    with open(os.path.join(layout_dir, "index.json")) as f:
        index = json.load(f)
    desc = index["manifests"][0]
    with open(blob_path(layout_dir, desc["digest"])) as f:
        manifest = json.load(f)
    if "layers" not in manifest:  # an index: take the first manifest
        with open(blob_path(layout_dir, manifest["manifests"][0]["digest"])) as f:
            manifest = json.load(f)
    return [(blob_path(layout_dir, l["digest"]), l["mediaType"], l["size"]) for l in manifest["layers"]]


def blob_path(layout_dir, digest):
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout_dir, "blobs", algo, hexd)


def openssl_sha256_mbps():
    out = output(["openssl", "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", "3"])
    m = re.search(r"^sha256\s+([\d.]+)k", out, re.M)
    return float(m.group(1)) * 1000 / 1e6 if m else None


def bench_floors(fig, image, layout, blobs, reps, tmp):
    files = " ".join(b[0] for b in blobs)
    gz = " ".join(b[0] for b in blobs if b[1].endswith("gzip"))
    for _ in range(reps):
        fig.add(image, "floor: cat", sh(f"cat {files} > /dev/null")[0])
        fig.add(image, "floor: sha256sum", sh(f"sha256sum {files} > /dev/null")[0])
        if gz:
            fig.add(image, "floor: gzip -dc", sh(f"for f in {gz}; do gzip -dc < $f; done > /dev/null")[0])
            fig.add(image, "floor: pigz -dc", sh(f"for f in {gz}; do pigz -dc < $f; done > /dev/null")[0])
        out = os.path.join(tmp, "fsync.out")
        fig.add(image, "floor: write+fsync", sh(f"cat {files} | dd of={out} bs=1M conv=fsync status=none")[0])
        os.unlink(out)


def bench_peers(fig, image, layout, archive, ref, reps, warm, tmp):
    """Outputs stay until the image is done: see settle() for why nothing is deleted between reps."""
    for i in range(reps):
        ctd = Containerd(os.path.join(tmp, f"ctd-{i}"))
        try:
            flushed()
            secs, _ = run(ctd.ctr("images", "import", "--no-unpack=false", archive))
            fig.add(image, "ctr images import", secs)
            name = output(ctd.ctr("images", "ls", "-q")).split()[0]
            secs, _ = run(ctd.ctr("run", "--rm", name, f"first-{i}", "/bin/true"))
            fig.add(image, "ctr run --rm (first)", secs)
            for w in range(warm):
                secs, _ = run(ctd.ctr("run", "--rm", name, f"warm-{i}-{w}", "/bin/true"))
                fig.add(image, "ctr run --rm (warm)", secs)
        finally:
            ctd.stop()
        dest = os.path.join(tmp, f"skopeo-{i}")
        fig.add(image, "skopeo copy", run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}", f"oci:{dest}:{ref}"])[0])
        bundle = os.path.join(tmp, f"umoci-{i}")
        fig.add(image, "umoci unpack", run(["umoci", "unpack", "--image", f"{layout}:{ref}", bundle])[0])
        prepare_runc_bundle(bundle)
        for w in range(warm):
            fig.add(image, "runc run (raw)", run(["runc", "run", "--bundle", bundle, f"raw-{os.getpid()}-{i}-{w}"])[0])
        # What any containerd task costs in runc alone: three runc processes, not one.
        for w in range(warm):
            cid = f"split-{os.getpid()}-{i}-{w}"
            fig.add(image, "floor: runc create+start+delete",
                    sh(f"runc create --bundle {bundle} {cid} && runc start {cid} && runc delete --force {cid}")[0])


def prepare_runc_bundle(bundle):
    """umoci's config asks for a terminal and the image's command; runc alone gets /bin/true."""
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/true"]
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "user"]
    spec["linux"].pop("uidMappings", None)
    spec["linux"].pop("gidMappings", None)
    with open(path, "w") as f:
        json.dump(spec, f)


def bench_nestcache(fig, image, archive, ref, reps, warm, tmp, env):
    for i in range(reps):
        blobs = os.path.join(tmp, f"store-blobs-{i}")
        flushed()
        secs, rss = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", blobs, "--ref", ref, "--no-unpack"], env=env)
        fig.add(image, "nestcache stage (blobs only)", secs, rss)
        # Extraction alone, from the blobs just staged: what the extraction goal is about.
        secs, rss = run([NESTCACHE, "store", "unpack", ref, "--store", blobs], env=env)
        fig.add(image, "nestcache store unpack (extraction only)", secs, rss)
        store = os.path.join(tmp, f"store-{i}")
        flushed()
        secs, rss = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", store, "--ref", ref], env=env)
        fig.add(image, "nestcache stage (cold)", secs, rss)
        bench_disk_floor(fig, image, store, os.path.join(tmp, f"disk-floor-{i}"))
        secs, _ = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", store, "--ref", ref], env=env)
        fig.add(image, "nestcache stage (re-stage)", secs)
        secs, _ = run([NESTCACHE, "store", "check", "--store", store], env=env)
        fig.add(image, "nestcache store check (hash)", secs)
        cache = f"bench-{os.getpid()}-{i}"
        run([NESTCACHE, "cache", "create", cache, "--path", "/cache", "--content-dir", store], env=env)
        try:
            nested = [NESTCACHE, "run", "--rm", "--net", "none", "--cache", cache, ref, "--", "/bin/true"]
            secs, _ = run(nested, env=env)
            fig.add(image, "nestcache run --rm (first)", secs)
            for _ in range(warm):
                fig.add(image, "nestcache run --rm (warm)", run(nested, env=env)[0])
            shim = nested[:2] + ["--runtime", "shim"] + nested[2:]
            for _ in range(warm):
                fig.add(image, "nestcache run --rm (warm, shim)", run(shim, env=env)[0])
            bench_warm_phases(fig, image, shim, warm, env)
            bench_raw_runc_same_spec(fig, image, cache, ref, warm, i, tmp, env)
            # The network's cost: the cache's bridge through CNI (ADD on start, DEL on
            # removal), made by the first of these runs and removed with the cache.
            bridge = [a if a != "none" else "bridge" for a in nested]
            run(bridge, env=env)
            for _ in range(warm):
                fig.add(image, "nestcache run --rm (warm, --net bridge)", run(bridge, env=env)[0])
        finally:
            run([NESTCACHE, "cache", "rm", cache, "--keep-content"], env=env, check=False)


def bench_raw_runc_same_spec(fig, image, cache, ref, warm, rep, tmp, env):
    """Raw `runc run` of the very spec nestcache's shim runs (containerd's seccomp profile,
    masked paths, cgroup), on umoci's rootfs of the same image: the baseline that differs
    from a nested run only by containerd and nestcache. umoci's own config has no seccomp."""
    rootfs = os.path.realpath(os.path.join(tmp, f"umoci-{rep}", "rootfs"))
    if not os.path.isdir(rootfs):
        return
    bundle = os.path.join(tmp, f"nc-spec-{rep}")
    os.makedirs(bundle, exist_ok=True)
    cid = output([NESTCACHE, "run", "-d", "-q", "--runtime", "shim", "--net", "none", "--cache", cache,
                  ref, "--", "sleep", "60"], env=env).split()[-1]
    try:
        info = json.loads(output(["ctr", "--address", env["CONTAINERD_ADDRESS"], "--namespace", "nestcache",
                                  "containers", "info", cid]))
        spec = info["Spec"]
        for m in spec.get("mounts", []):
            # Bind sources in the nested container's dir go with it: keep copies.
            src = m.get("source", "")
            if "bind" in m.get("options", []) + [m.get("type")] or "rbind" in m.get("options", []):
                if os.path.isfile(src):
                    m["source"] = shutil.copy(src, os.path.join(bundle, os.path.basename(src)))
    finally:
        run([NESTCACHE, "rm", "-f", cid], env=env, check=False)
    spec["root"] = {"path": rootfs, "readonly": False}
    spec["process"]["args"], spec["process"]["terminal"] = ["/bin/true"], False
    spec.pop("hooks", None)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    for w in range(warm):
        fig.add(image, "runc run (raw, nestcache's spec)",
                run(["runc", "run", "--bundle", bundle, f"rawspec-{os.getpid()}-{rep}-{w}"])[0])


# --- Warm start, phase by phase (issue 17 item 3) -------------------------------------
# The CLI logs each phase of `run` under RUST_LOG=nestcache=debug; the shim logs each RPC,
# runc command and rootfs step (`phase=NAME id=ID ms=N`) into containerd's log, which
# bench.sh names in NESTCACHE_BENCH_CONTAINERD_LOG (and starts with NESTCACHE_SHIM_TIMING=1).
CLI_PHASE = re.compile(r'phase="([^"]+)" ms="([\d.]+)"')
SHIM_PHASE = re.compile(r"phase=([\w-]+) id=\S+ ms=([\d.]+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# CLI phases that are containerd round trips, and the shim RPCs inside them: what is
# left of the first after the second is containerd's own cost (plus the shim's `start`
# process and ttrpc), the floor any runtime pays here.
CONTAINERD_PHASES = ["create container", "create task, CNI ADD", "start task", "remove task, container, dirs"]
SHIM_RPCS = ["rpc-create", "rpc-start", "rpc-delete"]


def bench_warm_phases(fig, image, cmd, warm, env):
    log_path = os.environ.get("NESTCACHE_BENCH_CONTAINERD_LOG")
    env = dict(env, RUST_LOG="nestcache=debug")
    for _ in range(warm):
        offset = os.path.getsize(log_path) if log_path else 0
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, check=True)
        cli = sum_phases(CLI_PHASE.findall(ANSI.sub("", p.stderr)))
        shim = {}
        if log_path:
            time.sleep(0.05)  # containerd copies the shim's log asynchronously
            with open(log_path, errors="replace") as f:
                f.seek(offset)
                shim = sum_phases(SHIM_PHASE.findall(f.read()))
        for name, ms in cli.items():
            fig.add(image, f"warm phase, cli: {name}", ms / 1e3)
        for name, ms in shim.items():
            fig.add(image, f"warm phase, shim: {name}", ms / 1e3)
        if shim:
            own = sum(cli.get(n, 0) for n in CONTAINERD_PHASES) - sum(shim.get(n, 0) for n in SHIM_RPCS)
            fig.add(image, "containerd's own cost of a task (derived)", own / 1e3)


def sum_phases(pairs):
    out = {}
    for name, ms in pairs:
        out[name] = out.get(name, 0.0) + float(ms)
    return out


def report_warm_phases(fig, images):
    """Per-phase milliseconds of a warm shim run, min and median over the runs."""
    names = []
    for image, name in fig.times:
        if (name.startswith("warm phase") or name.startswith("containerd's own")) and name not in names:
            names.append(name)
    if not names:
        return
    print("\n| image | phase of a warm run (--runtime shim) | min ms | median ms |")
    print("|---|---|---:|---:|")
    for image in images:
        for name in names:
            if (image, name) in fig.times:
                print(f"| {image} | {name} | {fig.min(image, name) * 1e3:.1f} | {fig.median(image, name) * 1e3:.1f} |")


# Copies per cold stage: one syncfs also waits for whatever else on the machine left dirty
# pages on that filesystem (a build beside the benchmark), so a single copy swings 2x.
# Copies are kept until the image is done, so only as many as leave DISK_HEADROOM free
# for the rest of the run (peers, registry) and whoever else uses the disk.
DISK_FLOOR_COPIES = 3
DISK_HEADROOM = 30 << 30


def tree_bytes(paths):
    total = 0
    for top in paths:
        for root, _, files in os.walk(top):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total


def bench_disk_floor(fig, image, store, dest):
    """The disk floor of a cold stage: writing + fsyncing the bytes it must keep (blobs and
    extracted tree: the same files, sizes and count, just written by the stage and so read
    from the page cache) on the same disk, by cp -a and one syncfs. Each copy starts after
    a `sync`, so it waits for its own bytes only; copies are kept (see settle())."""
    dirs = [os.path.join(store, p) for p in ("blobs", "layers") if os.path.exists(os.path.join(store, p))]
    parts = " ".join(dirs)
    os.makedirs(dest)
    free = shutil.disk_usage(dest).free - DISK_HEADROOM
    copies = max(1, min(DISK_FLOOR_COPIES, free // max(1, tree_bytes(dirs))))
    for k in range(copies):
        copy = os.path.join(dest, str(k))
        os.makedirs(copy)
        subprocess.run(["sync"], check=False)
        fig.add(image, "floor: write+fsync of blobs + tree", sh(f"cp -a {parts} {copy}/ && sync -f {copy}")[0])


class LoopbackRegistry:
    """Debian's docker-registry on 127.0.0.1 (plain http, filesystem storage)."""

    def __init__(self, dirpath):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.addr = f"127.0.0.1:{port}"
        os.makedirs(dirpath, exist_ok=True)
        cfg = os.path.join(dirpath, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {dirpath}/data\nhttp:\n  addr: {self.addr}\n")
        self.log = open(os.path.join(dirpath, "registry.log"), "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=self.log, stderr=self.log)
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"docker-registry did not listen on {self.addr}")
                time.sleep(0.05)

    def push(self, layout, ref, repo):
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{ref}", f"docker://{self.addr}/{repo}"])
        return f"{self.addr}/{repo}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def nested_first_run(store, ref, env):
    """A cache over `store` and the first nested run of `ref` in it; returns its seconds."""
    cache = f"bench-reg-{os.getpid()}-{os.path.basename(store)}"
    run([NESTCACHE, "cache", "create", cache, "--path", "/cache", "--content-dir", store], env=env)
    try:
        return run([NESTCACHE, "run", "--rm", "--net", "none", "--cache", cache, ref, "--", "/bin/true"], env=env)[0]
    finally:
        run([NESTCACHE, "cache", "rm", cache, "--keep-content"], env=env, check=False)


def bench_registry(fig, image, layout, ref, reps, tmp, env):
    """Registry cold start: `stage docker://` + first run next to `ctr images pull` +
    first `ctr run`, both from the same loopback registry, each into a fresh store /
    a fresh containerd root."""
    reg = LoopbackRegistry(os.path.join(tmp, "registry"))
    try:
        remote = reg.push(layout, ref, f"bench/{image}:v1")
        for i in range(reps):
            store = os.path.join(tmp, f"reg-store-{i}")
            flushed()
            secs, rss = run([NESTCACHE, "stage", f"docker://{remote}", "--insecure", "--store", store,
                             "--ref", ref], env=env)
            fig.add(image, "nestcache stage docker:// (cold)", secs, rss)
            fig.add(image, "nestcache run --rm (first, after stage docker://)", nested_first_run(store, ref, env))
            ctd = Containerd(os.path.join(tmp, f"reg-ctd-{i}"))
            try:
                flushed()
                fig.add(image, "ctr images pull", run(ctd.ctr("images", "pull", "--plain-http", remote))[0])
                secs, _ = run(ctd.ctr("run", "--rm", remote, f"reg-first-{i}", "/bin/true"))
                fig.add(image, "ctr run --rm (first, after pull)", secs)
            finally:
                ctd.stop()
    finally:
        reg.stop()


def onepass_goals(g):
    """Goals of the one-pass stage (issue 17): against the peers and the disk floor."""

    def add(a, b):
        return None if a is None or b is None else a + b

    return [
        ("stage docker:// + first run / (ctr images pull + first ctr run)",
         ratio(add(g("nestcache stage docker:// (cold)"), g("nestcache run --rm (first, after stage docker://)")),
               add(g("ctr images pull"), g("ctr run --rm (first, after pull)"))), "<= 0.2"),
        ("cold stage / disk floor (write+fsync of blobs + tree)",
         ratio(g("nestcache stage (cold)"), g("floor: write+fsync of blobs + tree")), "<= 1.2"),
    ]


def settle(seconds):
    """On ext4 without a journal (this VM's root), a newly created inode may not reuse one
    deleted in the last minute: the allocator re-reads the inode table for every candidate,
    and creating files right after deleting tens of thousands costs ~1 ms each. Deleting
    one rep's output before the next rep would time that, not the tool, so outputs are
    kept until the image is done, deleted, synced, and the next image waits this long."""
    if seconds > 0:
        log(f"settling {seconds}s after deleting (ext4 inode reuse delay) ...")
        subprocess.run(["sync"], check=False)
        time.sleep(seconds)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def goal_values(g, size, sha_mbps):
    """The goal ratios, from one statistic g(name) of each figure."""
    comp, _ = size

    def add(a, b):
        return None if a is None or b is None else a + b

    hash_s = g("nestcache store check (hash)")
    hash_mbps = comp / hash_s / 1e6 if hash_s else None
    return [
        ("cold stage + first run / (ctr import + first ctr run)",
         ratio(add(g("nestcache stage (cold)"), g("nestcache run --rm (first)")),
               add(g("ctr images import"), g("ctr run --rm (first)"))), "<= 0.2"),
        ("blobs-only staging throughput / write+fsync throughput",
         ratio(g("floor: write+fsync"), g("nestcache stage (blobs only)")), ">= 0.8"),
        ("hashing (store check) / openssl sha256", ratio(hash_mbps, sha_mbps), ">= 0.8"),
        ("extraction throughput / one gzip -dc",
         ratio(g("floor: gzip -dc"), g("nestcache store unpack (extraction only)")), ">= 1.5"),
        ("warm nested run / raw runc run", ratio(g("nestcache run --rm (warm)"), g("runc run (raw)")), "<= 1.2"),
        ("warm nested run / warm ctr run", ratio(g("nestcache run --rm (warm)"), g("ctr run --rm (warm)")), "<= 0.7"),
        ("warm nested run, nestcache shim / raw runc run",
         ratio(g("nestcache run --rm (warm, shim)"), g("runc run (raw)")), "<= 1.5"),
        ("warm nested run, nestcache shim / raw runc run of the same spec",
         ratio(g("nestcache run --rm (warm, shim)"), g("runc run (raw, nestcache's spec)")), "<= 1.5"),
        ("raw runc run of nestcache's spec / raw runc run (umoci's config)",
         ratio(g("runc run (raw, nestcache's spec)"), g("runc run (raw)")), "spec cost"),
        ("containerd's own cost of a task (derived) / raw runc run",
         ratio(g("containerd's own cost of a task (derived)"), g("runc run (raw)")), "floor"),
        ("warm nested run, nestcache shim / warm ctr run",
         ratio(g("nestcache run --rm (warm, shim)"), g("ctr run --rm (warm)")), "<= 0.7"),
        ("re-stage / cold stage", ratio(g("nestcache stage (re-stage)"), g("nestcache stage (cold)")), "<= 0.05"),
    ] + onepass_goals(g)


# nestcache figure, what it is compared with (a peer doing the same job, or a floor on
# the same bytes). Ratios below 1 mean nestcache took less time.
COMPARISONS = [
    ("nestcache stage (blobs only)", "skopeo copy"),
    ("nestcache stage (blobs only)", "floor: write+fsync"),
    ("nestcache stage (blobs only)", "floor: cat"),
    ("nestcache store check (hash)", "floor: sha256sum"),
    ("nestcache store unpack (extraction only)", "umoci unpack"),
    ("nestcache store unpack (extraction only)", "floor: gzip -dc"),
    ("nestcache store unpack (extraction only)", "floor: pigz -dc"),
    ("nestcache stage (cold)", "ctr images import"),
    ("nestcache stage (cold)", "floor: write+fsync of blobs + tree"),
    ("nestcache stage docker:// (cold)", "ctr images pull"),
    ("nestcache run --rm (first)", "ctr run --rm (first)"),
    ("nestcache run --rm (warm)", "ctr run --rm (warm)"),
    ("nestcache run --rm (warm)", "runc run (raw)"),
    ("nestcache run --rm (warm, shim)", "ctr run --rm (warm)"),
    ("nestcache run --rm (warm, shim)", "runc run (raw)"),
    ("nestcache run --rm (warm, shim)", "runc run (raw, nestcache's spec)"),
    ("nestcache run --rm (warm)", "floor: runc create+start+delete"),
    ("nestcache run --rm (warm, --net bridge)", "nestcache run --rm (warm)"),
    ("nestcache run --rm (warm, shim)", "floor: runc create+start+delete"),
]


def report(fig, images, sizes, sha_mbps, as_json):
    rows, goals = [], []
    names = []
    for key in fig.times:
        if key[1] not in names:
            names.append(key[1])
    for image in images:
        for name in names:
            if (image, name) in fig.times:
                rows.append({"image": image, "what": name, "min_s": fig.min(image, name),
                             "median_s": fig.median(image, name), "reps": len(fig.times[(image, name)]),
                             "peak_rss_kib": fig.rss.get((image, name))})
        by_min = goal_values(lambda n: fig.min(image, n), sizes[image], sha_mbps)
        by_median = goal_values(lambda n: fig.median(image, n), sizes[image], sha_mbps)
        rss = fig.rss.get((image, "nestcache stage (cold)"))
        for (name, v_min, target), (_, v_med, _) in zip(by_min, by_median):
            goals.append((image, name, v_min, v_med, target))
        goals.append((image, "peak RSS of staging (MiB)", rss / 1024 if rss else None, None, "<= 64"))
    comps = [(image, a, b, ratio(fig.min(image, a), fig.min(image, b)), ratio(fig.median(image, a), fig.median(image, b)))
             for image in images for a, b in COMPARISONS
             if (image, a) in fig.times and (image, b) in fig.times]
    if as_json:
        print(json.dumps({"sha256_openssl_MBps": sha_mbps, "sizes": sizes, "rows": rows,
                          "comparisons": [dict(image=i, nestcache=a, versus=b, ratio_min=r, ratio_median=m)
                                          for i, a, b, r, m in comps],
                          "goals": [dict(image=i, goal=n, value_from_min=v, value_from_median=m, target=t)
                                    for i, n, v, m, t in goals]}, indent=2))
        return
    print(f"openssl speed -evp sha256: {sha_mbps:.0f} MB/s\n" if sha_mbps else "")
    print("| image | what | min s | median s | reps | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        rss = f"{r['peak_rss_kib'] / 1024:.1f}" if r["peak_rss_kib"] else ""
        print(f"| {r['image']} | {r['what']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['reps']} | {rss} |")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print("\n| image | nestcache | vs | time ratio (min) | time ratio (median) |")
    print("|---|---|---|---:|---:|")
    for i, a, b, r, m in comps:
        print(f"| {i} | {a} | {b} | {fmt(r)} | {fmt(m)} |")
    report_warm_phases(fig, images)
    print("\n| image | goal | from min times | from medians | target |")
    print("|---|---|---:|---:|---|")
    for i, n, v, m, t in goals:
        print(f"| {i} | {n} | {fmt(v)} | {fmt(m)} | {t} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="small,medium,large,many-small")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warm", type=int, default=5, help="warm runs per rep")
    ap.add_argument("--settle", type=int, default=65, help="seconds to wait between images after deleting")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of: peers,floors,nestcache,registry")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    work = args.workdir or tempfile.mkdtemp(prefix="nestcache-bench-", dir="/var/tmp")
    os.makedirs(work, exist_ok=True)
    images = args.images.split(",")
    fig, sizes = Figures(), {}
    sha_mbps = openssl_sha256_mbps()
    env = dict(os.environ)
    for image in images:
        imgdir = os.path.join(work, "images", image)
        layout, archive, ref = os.path.join(imgdir, "oci"), os.path.join(imgdir, "oci.tar"), image
        if not os.path.exists(archive):
            log(f"generating {image} ...")
            os.makedirs(imgdir, exist_ok=True)
            info = output([MKIMAGE, "--preset", image, "--ref", ref, "--layout", layout,
                           "--oci-archive", archive, "--json"])
            with open(os.path.join(imgdir, "info.json"), "w") as f:
                f.write(info)
        with open(os.path.join(imgdir, "info.json")) as f:
            info = json.load(f)
        blobs = layer_blobs(layout)
        comp, uncomp = info["compressedSize"], info["uncompressedSize"]
        sizes[image] = (comp, uncomp)
        tmp = tempfile.mkdtemp(prefix=f"{image}-", dir=work)
        try:
            if "floors" not in skip:
                log(f"{image}: floors")
                bench_floors(fig, image, layout, blobs, args.reps, tmp)
            if "peers" not in skip:
                log(f"{image}: peers")
                bench_peers(fig, image, layout, archive, ref, args.reps, args.warm, tmp)
            if "nestcache" not in skip:
                log(f"{image}: nestcache")
                bench_nestcache(fig, image, archive, ref, args.reps, args.warm, tmp, env)
            if "registry" not in skip:
                log(f"{image}: registry cold start")
                bench_registry(fig, image, layout, ref, args.reps, tmp, env)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if image != images[-1]:
            settle(args.settle)
    report(fig, images, sizes, sha_mbps, args.json)


if __name__ == "__main__":
    main()
