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
REL = os.path.join(ROOT, "target", "release")
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


def bench_peers(fig, image, layout, archive, ref, reps, tmp):
    for i in range(reps):
        ctd = Containerd(tempfile.mkdtemp(prefix="ctd-", dir=tmp))
        try:
            secs, _ = run(ctd.ctr("images", "import", "--no-unpack=false", archive))
            fig.add(image, "ctr images import", secs)
            name = output(ctd.ctr("images", "ls", "-q")).split()[0]
            secs, _ = run(ctd.ctr("run", "--rm", name, f"first-{i}", "/bin/true"))
            fig.add(image, "ctr run --rm (first)", secs)
            secs, _ = run(ctd.ctr("run", "--rm", name, f"warm-{i}", "/bin/true"))
            fig.add(image, "ctr run --rm (warm)", secs)
        finally:
            ctd.stop()
            shutil.rmtree(ctd.dir, ignore_errors=True)
        dest = os.path.join(tmp, f"skopeo-{i}")
        fig.add(image, "skopeo copy", run(["skopeo", "copy", "--quiet", f"oci-archive:{archive}", f"oci:{dest}:{ref}"])[0])
        shutil.rmtree(dest, ignore_errors=True)
        bundle = os.path.join(tmp, f"umoci-{i}")
        fig.add(image, "umoci unpack", run(["umoci", "unpack", "--image", f"{layout}:{ref}", bundle])[0])
        prepare_runc_bundle(bundle)
        fig.add(image, "runc run (raw)", run(["runc", "run", "--bundle", bundle, f"raw-{os.getpid()}-{i}"])[0])
        shutil.rmtree(bundle, ignore_errors=True)


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


def bench_nestcache(fig, image, archive, ref, reps, tmp, env):
    for i in range(reps):
        store = os.path.join(tmp, f"store-{i}")
        secs, rss = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", store, "--ref", ref, "--no-unpack"], env=env)
        fig.add(image, "nestcache stage (blobs only)", secs, rss)
        shutil.rmtree(store)
        secs, rss = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", store, "--ref", ref], env=env)
        fig.add(image, "nestcache stage (cold)", secs, rss)
        secs, _ = run([NESTCACHE, "stage", f"oci-archive:{archive}", "--store", store, "--ref", ref], env=env)
        fig.add(image, "nestcache stage (re-stage)", secs)
        secs, _ = run([NESTCACHE, "store", "check", "--store", store], env=env)
        fig.add(image, "nestcache store check (hash)", secs)
        cache = f"bench-{os.getpid()}-{i}"
        run([NESTCACHE, "cache", "create", cache, "--path", "/cache", "--content-dir", store], env=env)
        try:
            secs, _ = run([NESTCACHE, "run", "--rm", "--cache", cache, ref, "--", "/bin/true"], env=env)
            fig.add(image, "nestcache run --rm (first)", secs)
            secs, _ = run([NESTCACHE, "run", "--rm", "--cache", cache, ref, "--", "/bin/true"], env=env)
            fig.add(image, "nestcache run --rm (warm)", secs)
            secs, _ = run([NESTCACHE, "run", "--rm", "--runtime", "shim", "--cache", cache, ref, "--", "/bin/true"], env=env, check=False)
            fig.add(image, "nestcache run --rm (warm, shim)", secs)
        finally:
            run([NESTCACHE, "cache", "rm", cache, "--keep-content"], env=env, check=False)
            shutil.rmtree(store, ignore_errors=True)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


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
        g = lambda n: fig.min(image, n)  # noqa: E731
        comp, uncomp = sizes[image]
        cold_first = None if g("nestcache stage (cold)") is None or g("nestcache run --rm (first)") is None else g("nestcache stage (cold)") + g("nestcache run --rm (first)")
        ctr_first = None if g("ctr images import") is None or g("ctr run --rm (first)") is None else g("ctr images import") + g("ctr run --rm (first)")
        hash_mbps = comp / g("nestcache store check (hash)") / 1e6 if g("nestcache store check (hash)") else None
        goals += [
            (image, "cold stage + first run / (ctr import + first ctr run)", ratio(cold_first, ctr_first), "<= 0.5"),
            (image, "blobs-only staging throughput / write+fsync throughput", ratio(g("floor: write+fsync"), g("nestcache stage (blobs only)")), ">= 0.8"),
            (image, "hashing (store check) / openssl sha256", ratio(hash_mbps, sha_mbps), ">= 0.8"),
            (image, "extraction throughput / one gzip -dc", ratio(g("floor: gzip -dc"), None if g("nestcache stage (cold)") is None or g("nestcache stage (blobs only)") is None else g("nestcache stage (cold)") - g("nestcache stage (blobs only)")), ">= 1.5"),
            (image, "warm nested run / raw runc run", ratio(g("nestcache run --rm (warm)"), g("runc run (raw)")), "<= 1.2"),
            (image, "warm nested run / warm ctr run", ratio(g("nestcache run --rm (warm)"), g("ctr run --rm (warm)")), "<= 0.7"),
            (image, "re-stage / cold stage", ratio(g("nestcache stage (re-stage)"), g("nestcache stage (cold)")), "<= 0.05"),
            (image, "peak RSS of staging (MiB)", (fig.rss.get((image, "nestcache stage (cold)")) or 0) / 1024 or None, "<= 64"),
        ]
    if as_json:
        print(json.dumps({"sha256_openssl_MBps": sha_mbps, "sizes": sizes, "rows": rows,
                          "goals": [dict(image=i, goal=n, value=v, target=t) for i, n, v, t in goals]}, indent=2))
        return
    print(f"openssl speed -evp sha256: {sha_mbps:.0f} MB/s\n" if sha_mbps else "")
    print("| image | what | min s | median s | reps | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        rss = f"{r['peak_rss_kib'] / 1024:.1f}" if r["peak_rss_kib"] else ""
        print(f"| {r['image']} | {r['what']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {r['reps']} | {rss} |")
    print("\n| image | ratio (from min times) | value | goal |")
    print("|---|---|---:|---|")
    for i, n, v, t in goals:
        print(f"| {i} | {n} | {'n/a' if v is None else f'{v:.3f}'} | {t} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", default="small,medium,large,many-small")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of: peers,floors,nestcache")
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
                bench_peers(fig, image, layout, archive, ref, args.reps, tmp)
            if "nestcache" not in skip:
                log(f"{image}: nestcache")
                bench_nestcache(fig, image, archive, ref, args.reps, tmp, env)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    report(fig, images, sizes, sha_mbps, args.json)


if __name__ == "__main__":
    main()
