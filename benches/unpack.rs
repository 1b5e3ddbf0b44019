//! Layer extraction throughput, side by side with the usual tools on the same blobs:
//!
//! - `gzip -dc > /dev/null`: the floor (one core, inflate only, no disk);
//! - `tar -xzf`: one layer at a time, as a shell script would;
//! - `umoci unpack`: a reference OCI applier on the whole image;
//! - nestcache `ensure_layers` (all layers, parallel, verified, synced) and `apply_layer`.
//!
//! The image is generated (deterministic, text-like content that compresses ~3:1, files
//! from 512 B to 4 MiB). `NESTCACHE_BENCH_LAYERS` and `NESTCACHE_BENCH_LAYER_MB` size it
//! (default 4 layers of 64 MiB). Run: `cargo bench --bench unpack`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nestcache::digest::Digest;
use nestcache::layout::ContentLayout;
use nestcache::unpack::{apply_layer, ensure_layers, LayerBlob, Limits, Outcome};

struct Image {
    _dir: tempfile::TempDir,
    root: PathBuf,
    layers: Vec<LayerBlob>,
    tar_bytes: u64,
}

/// A small deterministic generator (xorshift) so every run measures the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "container",
    "layer",
    "overlay",
    "digest",
    "manifest",
    "runtime",
    "namespace",
    "cgroup",
    "mount",
    "snapshot",
    "0x7f3a",
    "ELF",
    "libc.so.6",
    "/usr/lib",
    "fn",
    "return",
    "struct",
    "{",
    "}",
    "\n",
    "    ",
    "#include",
    "int",
    "0",
    "error",
    "warning",
    "proc",
    "sys",
    "dev",
    "etc",
    "var",
    "tmp",
    "bin",
    "sbin",
    "lib64",
    "x86_64",
];

fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        let r = rng.next();
        if r % 5 == 0 {
            // Some incompressible bytes, like the code sections of binaries.
            v.extend_from_slice(&r.to_le_bytes());
        } else {
            v.extend_from_slice(WORDS[(r >> 8) as usize % WORDS.len()].as_bytes());
            v.push(b' ');
        }
    }
    v.truncate(len);
    v
}

fn generate() -> Image {
    let n_layers: usize = std::env::var("NESTCACHE_BENCH_LAYERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let layer_mb: usize = std::env::var("NESTCACHE_BENCH_LAYER_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::Builder::new()
        .prefix("nc-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("blobs/sha256")).unwrap();
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut layers = Vec::new();
    let mut tar_bytes = 0;
    for l in 0..n_layers {
        let mut b = tar::Builder::new(Vec::new());
        let mut total = 0;
        let mut i = 0;
        while total < layer_mb << 20 {
            let size = match rng.next() % 100 {
                0..=59 => 512 + (rng.next() % 8192) as usize,
                60..=94 => 16 << 10 | (rng.next() % (256 << 10)) as usize,
                _ => (1 << 20) + (rng.next() % (3 << 20)) as usize,
            };
            if i % 50 == 0 {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(1_600_000_000);
                b.append_data(&mut h, format!("l{l}/d{}/", i / 50), &[][..])
                    .unwrap();
            }
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(size as u64);
            h.set_mtime(1_600_000_000);
            b.append_data(
                &mut h,
                format!("l{l}/d{}/f{i}", i / 50),
                &text(&mut rng, size)[..],
            )
            .unwrap();
            total += size;
            i += 1;
        }
        let tar = b.into_inner().unwrap();
        tar_bytes += tar.len() as u64;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let digest = Digest::of(&blob);
        std::fs::write(root.join("blobs/sha256").join(digest.hex()), &blob).unwrap();
        layers.push(LayerBlob {
            digest,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            diff_id: Digest::of(&tar),
        });
    }
    write_oci_index(&root, &layers);
    Image {
        _dir: dir,
        root,
        layers,
        tar_bytes,
    }
}

/// Enough of an OCI layout for umoci: config, manifest, index.json with a ref name.
fn write_oci_index(root: &Path, layers: &[LayerBlob]) {
    let put = |data: Vec<u8>| {
        let d = Digest::of(&data);
        std::fs::write(root.join("blobs/sha256").join(d.hex()), &data).unwrap();
        (d, data.len())
    };
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()}});
    let (cd, cs) = put(serde_json::to_vec(&config).unwrap());
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let size = std::fs::metadata(root.join("blobs/sha256").join(l.digest.hex())).unwrap().len();
            serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": size})
        })
        .collect();
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
        "layers": descs});
    let (md, ms) = put(serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.to_string(), "size": ms, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]});
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

fn blob(img: &Image, l: &LayerBlob) -> PathBuf {
    img.root.join("blobs/sha256").join(l.digest.hex())
}

fn run(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(st.success(), "{cmd:?} failed");
}

/// A fresh content dir sharing the blobs (hardlinked), with nothing extracted yet.
fn fresh_store(img: &Image) -> (tempfile::TempDir, ContentLayout) {
    let t = tempfile::Builder::new()
        .prefix("nc-bench-run-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let blobs = t.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for e in std::fs::read_dir(img.root.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::hard_link(e.path(), blobs.join(e.file_name())).unwrap();
    }
    let layout = ContentLayout::new(t.path());
    (t, layout)
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nc-bench-out-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let img = generate();
    eprintln!(
        "bench image: {} layers, {} MiB uncompressed, {} MiB gzip",
        img.layers.len(),
        img.tar_bytes >> 20,
        img.layers
            .iter()
            .map(|l| std::fs::metadata(blob(&img, l)).unwrap().len())
            .sum::<u64>()
            >> 20
    );
    let mut g = c.benchmark_group("image");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(img.tar_bytes));
    g.bench_function("gzip -dc >/dev/null (floor, sequential)", |b| {
        b.iter(|| {
            for l in &img.layers {
                run(Command::new("gzip").arg("-dc").arg(blob(&img, l)));
            }
        })
    });
    g.bench_function("tar -xzf (sequential)", |b| {
        b.iter_batched(
            scratch,
            |out| {
                for l in &img.layers {
                    run(Command::new("tar")
                        .arg("-xzf")
                        .arg(blob(&img, l))
                        .arg("-C")
                        .arg(out.path()));
                }
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("umoci unpack", |b| {
        b.iter_batched(
            scratch,
            |out| {
                run(Command::new("umoci")
                    .arg("unpack")
                    .arg("--image")
                    .arg(format!("{}:bench", img.root.display()))
                    .arg(out.path().join("bundle")));
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("nestcache ensure_layers (parallel, synced)", |b| {
        b.iter_batched(
            || fresh_store(&img),
            |(t, layout)| {
                ensure_layers(&layout, &img.layers, &Limits::default()).unwrap();
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let first = &img.layers[0];
    let mut g = c.benchmark_group("one layer");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    let bytes: u64 = {
        let mut d = flate2::read::GzDecoder::new(std::fs::File::open(blob(&img, first)).unwrap());
        std::io::copy(&mut d, &mut std::io::sink()).unwrap()
    };
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("gzip -dc >/dev/null", |b| {
        b.iter(|| run(Command::new("gzip").arg("-dc").arg(blob(&img, first))))
    });
    g.bench_function("tar -xzf", |b| {
        b.iter_batched(
            scratch,
            |out| {
                run(Command::new("tar")
                    .arg("-xzf")
                    .arg(blob(&img, first))
                    .arg("-C")
                    .arg(out.path()));
                out
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("nestcache apply_layer", |b| {
        b.iter_batched(
            scratch,
            |out| apply_into(out, &blob(&img, first), &first.media_type, &first.diff_id),
            BatchSize::PerIteration,
        )
    });
    g.finish();
    by_media_type(c, &img, first);
}

/// Extracts the layer blob at `path` into a fresh dir in `out`, as a bottom layer.
fn apply_into(
    out: tempfile::TempDir,
    path: &Path,
    media_type: &str,
    diff_id: &Digest,
) -> tempfile::TempDir {
    let f = std::fs::File::open(path).unwrap();
    let r = apply_layer(
        f,
        media_type,
        diff_id,
        &out.path().join("l"),
        Some(&[]),
        &Limits::default(),
    )
    .unwrap();
    assert!(matches!(r, Outcome::Done(_)));
    out
}

/// One layer as plain tar, gzip and zstd, through `apply_layer`: what the decompressor
/// costs on top of hashing and writing the same tree.
fn by_media_type(c: &mut Criterion, img: &Image, layer: &LayerBlob) {
    let dir = scratch();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(blob(img, layer)).unwrap())
        .read_to_end(&mut tar)
        .unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let variants = [
        ("tar", "application/vnd.oci.image.layer.v1.tar", tar.clone()),
        (
            "tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            std::fs::read(blob(img, layer)).unwrap(),
        ),
        (
            "tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            zst,
        ),
    ];
    let mut g = c.benchmark_group("one layer by media type");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(tar.len() as u64));
    for (name, media_type, bytes) in variants {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        g.bench_function(
            format!("apply_layer {name} ({} MiB)", bytes.len() >> 20),
            |b| {
                b.iter_batched(
                    scratch,
                    |out| apply_into(out, &path, media_type, &layer.diff_id),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
