//! Staging one image from an OCI layout dir: the one pass (each layer blob read once,
//! hashed, written and extracted in the same read) next to the two passes it replaced
//! (blobs only, then extraction from the store's blobs), on the same generated image.
//! Run: `cargo bench --bench stage` (`NESTCACHE_BENCH_STAGE_PRESET`: an mkimage preset,
//! default `features`; `medium` for ~300 MB).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nestcache::source::{self, Source};
use nestcache::stage::{stage, StageOptions};
use nestcache::store::Store;
use nestcache::unpack::{ensure_unpacked, Limits};

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nc-bench-stage-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn options(no_unpack: bool) -> StageOptions {
    StageOptions {
        reference: Some("bench".into()),
        no_unpack,
        ..Default::default()
    }
}

/// The two passes: every blob into the store, then every layer extracted from them.
fn two_passes(store: &Store, src: &dyn Source) {
    stage(store, src, &options(true)).unwrap();
    let img = store.resolve("bench", None).unwrap();
    ensure_unpacked(store, &img, &Limits::default()).unwrap();
}

fn bench(c: &mut Criterion) {
    let preset = std::env::var("NESTCACHE_BENCH_STAGE_PRESET").unwrap_or("features".into());
    let dir = scratch();
    let built = mkimage::preset(&preset)
        .unwrap()
        .write_layout(&dir.path().join("layout"))
        .unwrap();
    let src = source::parse(&format!("oci:{}", built.layout.display())).unwrap();

    let mut g = c.benchmark_group(format!("stage {preset}"));
    g.sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(built.compressed_size()));
    g.bench_function("one pass: stage (blobs + layers)", |b| {
        b.iter_batched(
            scratch,
            |t| {
                let store = Store::open(t.path().join("store")).unwrap();
                stage(&store, src.as_ref(), &options(false)).unwrap();
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("two passes: stage --no-unpack, then extract", |b| {
        b.iter_batched(
            scratch,
            |t| {
                let store = Store::open(t.path().join("store")).unwrap();
                two_passes(&store, src.as_ref());
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
