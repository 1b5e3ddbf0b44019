//! Verified ingest into the store, next to its floors on the same bytes: a plain write +
//! fsync (the disk), and sha256 in memory (the CPU). `store check`'s re-hash too.
//! Run: `cargo bench --bench ingest` (`NESTCACHE_BENCH_INGEST_MB`, default 64).

use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use nestcache::digest::{Digest, Hasher};
use nestcache::store::Store;

/// Deterministic, incompressible-ish bytes (xorshift).
fn data(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nc-bench-ingest-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mb: usize = std::env::var("NESTCACHE_BENCH_INGEST_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let bytes = data(mb << 20);
    let digest = Digest::of(&bytes);
    let size = bytes.len() as u64;

    let mut g = c.benchmark_group("ingest");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(size));
    g.bench_function("floor: sha256 in memory", |b| {
        b.iter(|| {
            let mut h = Hasher::new();
            h.update(&bytes);
            h.finish()
        })
    });
    g.bench_function("floor: write + fsync", |b| {
        b.iter_batched(
            scratch,
            |t| {
                let mut f = std::fs::File::create(t.path().join("blob")).unwrap();
                f.write_all(&bytes).unwrap();
                f.sync_all().unwrap();
                t
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("Store::ingest (hash + write + fsync + rename)", |b| {
        b.iter_batched(
            || {
                let t = scratch();
                let store = Store::open(t.path().join("store")).unwrap();
                (t, store)
            },
            |(t, store)| {
                store
                    .ingest("layer", &digest, size, &mut &bytes[..], &mut |_| {})
                    .unwrap();
                t
            },
            BatchSize::PerIteration,
        )
    });
    let t = scratch();
    let store = Store::open(t.path().join("store")).unwrap();
    store
        .ingest("layer", &digest, size, &mut &bytes[..], &mut |_| {})
        .unwrap();
    g.bench_function("Store::verify_blob (re-hash from the page cache)", |b| {
        b.iter(|| assert!(store.verify_blob(&digest, size).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
