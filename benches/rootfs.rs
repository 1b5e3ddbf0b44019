//! What a nested run does on the host before containerd gets the task: the overlay's
//! per-container dir (short lower links, upper, work) for 5 and 120 layers, mounting and
//! unmounting it (root only; `volatile` as `run --rm` mounts it), and the runtime spec
//! from an image config. Run: `cargo bench --bench rootfs`.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nestcache::nested::spec::{self, CacheMount, SpecOptions};
use nestcache::rootfs::{unmount, Overlay};
use nestcache::user::UserDb;
use oci_spec::image::ConfigBuilder;

/// `n` layer dirs with a file each, under a long path (as a real state dir would be).
fn layers(root: &std::path::Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let d = root.join("store/layers/diff").join(format!("{i:064x}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("f{i}")), b"x").unwrap();
            d
        })
        .collect()
}

fn overlay(c: &mut Criterion) {
    let t = tempfile::Builder::new()
        .prefix("nc-bench-rootfs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut g = c.benchmark_group("rootfs");
    g.measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for n in [5, 120] {
        let l = layers(&t.path().join(format!("img{n}")), n);
        let mut k = 0u64;
        g.bench_function(format!("Overlay::prepare + remove, {n} layers"), |b| {
            b.iter(|| {
                k += 1;
                let o = Overlay::prepare(&t.path().join(format!("c{n}-{k}")), &l).unwrap();
                o.remove().unwrap();
            })
        });
        if !nix::unistd::geteuid().is_root() {
            eprintln!("mount benches skipped: mounting overlayfs needs root");
            continue;
        }
        g.bench_function(
            format!("overlay mount + unmount (volatile), {n} layers"),
            |b| {
                b.iter_batched(
                    || {
                        k += 1;
                        let dir = t.path().join(format!("m{n}-{k}"));
                        let o = Overlay::prepare(&dir, &l).unwrap().volatile(true);
                        let target = dir.join("rootfs");
                        std::fs::create_dir(&target).unwrap();
                        (o, target)
                    },
                    |(o, target)| {
                        o.mount(&target).unwrap();
                        unmount(&target).unwrap();
                        o
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
}

fn spec_generation(c: &mut Criterion) {
    let config = ConfigBuilder::default()
        .entrypoint(vec!["/usr/bin/app".to_string()])
        .cmd(vec!["--serve".to_string(), "--port=8080".to_string()])
        .env(
            (0..20)
                .map(|i| format!("VAR_{i}=value-{i}"))
                .chain(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()])
                .collect::<Vec<_>>(),
        )
        .working_dir("/srv/app".to_string())
        .user("app".to_string())
        .build()
        .unwrap();
    let users = UserDb {
        passwd: Some(
            (0..200)
                .map(|i| {
                    format!(
                        "user{i}:x:{}:{}::/home/user{i}:/bin/sh\n",
                        2000 + i,
                        2000 + i
                    )
                })
                .chain([
                    "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/srv/app:/bin/sh\n".into(),
                ])
                .collect(),
        ),
        group: Some("root:x:0:\napp:x:1000:\nstaff:x:50:app\n".into()),
    };
    let mut opts = SpecOptions::new("nested-0123456789ab", "nestcache");
    opts.env = vec!["EXTRA=1".into(), "CI=true".into()];
    opts.volumes = [
        "/var/tmp:/scratch",
        "/etc/hosts:/etc/hosts:ro",
        "/tmp:/data:rw",
    ]
    .iter()
    .map(|v| v.parse().unwrap())
    .collect();
    opts.cache_mount = Some(CacheMount {
        content_dir: "/var/lib/nestcache/caches/ci".into(),
        target: "/cache".into(),
        read_write: false,
    });
    opts.annotations
        .insert("io.containerd.runc.v2.group".into(), "nc-cache-ci".into());
    let mut g = c.benchmark_group("spec");
    g.bench_function(
        "spec::build (image config, named user, volumes, cache)",
        |b| b.iter(|| spec::build(Some(&config), &users, &opts).unwrap()),
    );
    g.bench_function(
        "spec::build + serialize to JSON (what containerd receives)",
        |b| {
            b.iter(|| {
                serde_json::to_vec(&spec::build(Some(&config), &users, &opts).unwrap()).unwrap()
            })
        },
    );
    g.finish();
}

criterion_group!(benches, overlay, spec_generation);
criterion_main!(benches);
