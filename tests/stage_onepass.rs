//! One pass from source to store (`stage` without `--no-unpack`): each layer blob is read
//! once, hashed, written and extracted in the same pass. A blob and its layer dir are
//! published together only when both digests verify; any failure leaves neither, and no
//! temp file or work dir. A resumed partial ingest still extracts the whole layer;
//! concurrent stagers of one image (or of images sharing layers in another order) write
//! each blob once and never wait for each other in a cycle.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nestcache::digest::Digest;
use serde_json::Value;
use testkit::cmd::cargo_bin;
use testkit::images::*;
use testkit::layers::{gzip, LayerTar};
use testkit::leaks::{names_in, temp_leftovers};
use testkit::registry::proxy::{Faults, Proxy};
use testkit::registry::{nestcache, output, serve_image};

/// Big enough that the extractor has consumed many chunks before the blob ends.
const BIG: usize = 3 << 20;

/// Layer 0: a gzip layer with a file of noise (`BIG` bytes); layer 1: a small plain tar.
fn layers(seed: u64) -> (Vec<Blob>, Vec<Digest>, Vec<u8>) {
    let content = noise(seed, BIG);
    let tar0 = layer_tar(&[("big/noise", content.clone())]);
    let tar1 = layer_tar(&[(&format!("small/file{seed}"), b"small\n".to_vec())]);
    let diff_ids = vec![Digest::of(&tar0), Digest::of(&tar1)];
    let blobs = vec![
        Blob::new(OCI_LAYER_GZIP, gzip(&tar0)),
        Blob::new(OCI_LAYER, tar1),
    ];
    (blobs, diff_ids, content)
}

fn stage_args<'a>(source: &'a str, store: &'a str) -> Vec<&'a str> {
    vec!["stage", source, "--store", store, "--ref", "img"]
}

/// Neither the blob nor any layer dir was published, nothing temporary is left, no ref.
fn assert_nothing_published(store: &str, blob: &Digest) {
    let s = Path::new(store);
    assert!(
        !s.join("blobs/sha256").join(blob.hex()).exists(),
        "blob {blob} published"
    );
    assert_eq!(names_in(&s.join("layers/diff")), Vec::<String>::new());
    assert_eq!(names_in(&s.join("layers/chain")), Vec::<String>::new());
    assert_eq!(temp_leftovers(s), Vec::<String>::new());
    assert!(refs(store).is_empty());
}

/// Every layer of the image is published with its blob, holding the right bytes.
fn assert_staged(store: &str, blobs: &[Blob], diff_ids: &[Digest], content: &[u8]) {
    let s = Path::new(store);
    for b in blobs {
        assert!(s.join("blobs/sha256").join(b.digest().hex()).exists());
    }
    // The bottom layer by diff_id; the top one names a parent it never describes, so it
    // may be keyed by chain id.
    assert!(s.join("layers/diff").join(diff_ids[0].hex()).is_dir());
    let published =
        names_in(&s.join("layers/diff")).len() + names_in(&s.join("layers/chain")).len();
    assert!(published >= diff_ids.len(), "{published} layer dirs");
    let got = fs::read(
        s.join("layers/diff")
            .join(diff_ids[0].hex())
            .join("big/noise"),
    )
    .unwrap();
    assert!(got == content, "extracted file differs from the layer's");
    assert_eq!(temp_leftovers(s), Vec::<String>::new());
    assert_intact(store);
}

#[test]
fn a_blob_failing_its_digest_publishes_neither_blob_nor_layer() {
    let d = Dirs::new();
    let (blobs, diff_ids, _) = layers(1);
    // The manifest names layer 0 by a wrong digest, with the right size; the layout holds
    // the real bytes under that name. Its tar is sound: only the blob digest is wrong.
    let wrong = Digest::of(b"not this layer");
    let img = build(blobs.clone(), diff_ids, "amd64", |_, m| {
        m["layers"][0]["digest"] = Value::from(wrong.to_string());
    });
    let dir = d.path("oci");
    oci_dir(&dir, &[&img], &[("x", &img.manifest)]);
    fs::rename(
        dir.join("blobs/sha256").join(blobs[0].digest().hex()),
        dir.join("blobs/sha256").join(wrong.hex()),
    )
    .unwrap();
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    let err = fails(&stage_args(&source, &store));
    assert!(err.contains(&wrong.to_string()), "{err}");
    assert_nothing_published(&store, &wrong);
}

#[test]
fn a_wrong_diff_id_publishes_neither_blob_nor_layer() {
    let d = Dirs::new();
    let (blobs, mut diff_ids, _) = layers(2);
    diff_ids[0] = Digest::of(b"some other tar");
    let img = build(blobs.clone(), diff_ids.clone(), "amd64", |_, _| {});
    oci_dir(&d.path("oci"), &[&img], &[("x", &img.manifest)]);
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    let err = fails(&stage_args(&source, &store));
    assert!(err.contains(&diff_ids[0].to_string()), "{err}");
    assert_nothing_published(&store, &blobs[0].digest());
}

#[test]
fn a_truncated_blob_publishes_neither_blob_nor_layer() {
    let d = Dirs::new();
    let (blobs, diff_ids, _) = layers(3);
    let img = build(blobs.clone(), diff_ids, "amd64", |_, _| {});
    let dir = d.path("oci");
    oci_dir(&dir, &[&img], &[("x", &img.manifest)]);
    let path = dir.join("blobs/sha256").join(blobs[0].digest().hex());
    fs::write(&path, &blobs[0].data[..blobs[0].data.len() / 2]).unwrap();
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    let err = fails(&stage_args(&source, &store));
    assert!(err.contains(&blobs[0].digest().to_string()), "{err}");
    assert_nothing_published(&store, &blobs[0].digest());
}

/// A dead stager's partial ingest of `blob`: `data` under `ingest/<hex>.tmp`, unlocked.
fn plant_partial(store: &str, blob: &Blob, data: &[u8]) {
    nestcache::store::Store::open(store).unwrap();
    fs::write(
        Path::new(store)
            .join("ingest")
            .join(format!("{}.tmp", blob.digest().hex())),
        data,
    )
    .unwrap();
}

#[test]
fn a_resumed_partial_ingest_still_extracts_the_whole_layer() {
    let d = Dirs::new();
    let (blobs, diff_ids, content) = layers(4);
    let img = build(blobs.clone(), diff_ids.clone(), "amd64", |_, _| {});
    oci_dir(&d.path("oci"), &[&img], &[("x", &img.manifest)]);
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    let cut = blobs[0].data.len() / 2 + 17;
    plant_partial(&store, &blobs[0], &blobs[0].data[..cut]);
    let mut args = stage_args(&source, &store);
    args.push("--json");
    let report = json(&args);
    assert_eq!(report["layers"][0]["resumed_from"], cut as u64, "{report}");
    assert_staged(&store, &blobs, &diff_ids, &content);

    // A partial ingest that does not verify: the extraction starts over with the blob.
    let d = Dirs::new();
    oci_dir(&d.path("oci"), &[&img], &[("x", &img.manifest)]);
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    let mut bad = blobs[0].data[..cut].to_vec();
    bad[cut / 2] ^= 0x55;
    plant_partial(&store, &blobs[0], &bad);
    ok(&stage_args(&source, &store));
    assert_staged(&store, &blobs, &diff_ids, &content);
}

#[test]
fn a_layer_hardlinking_into_its_lowers_is_extracted_again_from_its_verified_blob() {
    // The upper layer's first entry hardlinks to a lower file: its first extraction (lowers
    // unknown) stops there while the blob still streams in; the layer is extracted again
    // from the verified blob once the lower is published, and both are published.
    let d = Dirs::new();
    let lower = LayerTar::new()
        .dir("bin/", 0o755)
        .file("bin/tool", b"the tool\n")
        .finish();
    let content = noise(7, BIG);
    let upper = LayerTar::new()
        .hardlink("bin/alias", "bin/tool")
        .file("big", &content)
        .finish();
    let diff_ids = vec![Digest::of(&lower), Digest::of(&upper)];
    let blobs = vec![
        Blob::new(OCI_LAYER, lower),
        Blob::new(OCI_LAYER_GZIP, gzip(&upper)),
    ];
    let img = build(blobs.clone(), diff_ids.clone(), "amd64", |_, _| {});
    oci_dir(&d.path("oci"), &[&img], &[("x", &img.manifest)]);
    let (source, store) = (format!("oci:{}", d.s("oci")), d.s("store"));
    ok(&stage_args(&source, &store));
    let s = Path::new(&store);
    for b in &blobs {
        assert!(s.join("blobs/sha256").join(b.digest().hex()).exists());
    }
    let chain = names_in(&s.join("layers/chain"));
    assert_eq!(chain.len(), 1, "{chain:?}");
    let top = s.join("layers/chain").join(&chain[0]);
    assert_eq!(fs::read(top.join("bin/alias")).unwrap(), b"the tool\n");
    assert!(fs::read(top.join("big")).unwrap() == content);
    assert_eq!(temp_leftovers(s), Vec::<String>::new());
    assert_intact(&store);
}

/// Waits for a stager, killing it (and failing) if it hangs: a deadlock must fail the
/// test, not hang it. The bound is generous; what matters is that it is finite.
fn wait(mut child: Child) -> Value {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a stager is still running after 120 s (deadlocked?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn spawn_stage(source: &str, store: &str, reference: &str) -> Child {
    Command::new(cargo_bin("nestcache"))
        .args([
            "stage", source, "--store", store, "--ref", reference, "--json",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn concurrent_stagers_write_each_blob_once_and_never_deadlock() {
    let d = Dirs::new();
    let (blobs, diff_ids, content) = layers(5);
    let a = build(blobs.clone(), diff_ids.clone(), "amd64", |_, _| {});
    // The same two layers in the other order: their locks are wanted the other way round.
    let b = build(
        vec![blobs[1].clone(), blobs[0].clone()],
        vec![diff_ids[1].clone(), diff_ids[0].clone()],
        "amd64",
        |_, _| {},
    );
    oci_dir(&d.path("a"), &[&a], &[("a", &a.manifest)]);
    oci_dir(&d.path("b"), &[&b], &[("b", &b.manifest)]);
    let store = d.s("store");
    nestcache::store::Store::open(&store).unwrap();
    let (sa, sb) = (format!("oci:{}", d.s("a")), format!("oci:{}", d.s("b")));
    let children: Vec<Child> = (0..4)
        .map(|i| {
            let (src, r) = if i % 2 == 0 { (&sa, "a") } else { (&sb, "b") };
            spawn_stage(src, &store, r)
        })
        .collect();
    let reports: Vec<Value> = children.into_iter().map(wait).collect();
    let layer_bytes: u64 = reports
        .iter()
        .flat_map(|r| r["layers"].as_array().unwrap().clone())
        .filter(|l| l["reused"] == false)
        .map(|l| l["size"].as_u64().unwrap() - l["resumed_from"].as_u64().unwrap())
        .sum();
    let total: u64 = blobs.iter().map(|b| b.data.len() as u64).sum();
    assert_eq!(
        layer_bytes, total,
        "layer bytes written by the four stagers"
    );
    assert_staged(&store, &blobs, &diff_ids, &content);
    let mut names = refs(&store);
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

fn registry_stage(home: &Path, store: &str, proxy: &Proxy) -> (bool, String, String) {
    output(
        nestcache(home)
            .args([
                "stage",
                &format!("docker://{}/onepass/app:v1", proxy.addr),
                "--store",
                store,
                "--insecure",
                "--registry-timeout",
                "2s",
                "--registry-stall-window",
                "1s",
                "--registry-min-rate",
                "10000",
            ])
            .stdin(Stdio::null()),
    )
}

#[test]
fn a_registry_dropping_mid_blob_resumes_in_the_pass_or_publishes_nothing() {
    testkit::require!(tool "docker-registry", tool "skopeo");
    let d = Dirs::new();
    let (blobs, diff_ids, content) = layers(6);
    let img = build(blobs.clone(), diff_ids.clone(), "amd64", |_, _| {});
    let (reg, pushed) = serve_image(&d.path("reg"), &img, "onepass/app:v1");
    let big = pushed.big().0;

    // Cut once mid-blob: the download resumes by a Range request within the same pass,
    // and the extractor sees one unbroken stream.
    let cut = Proxy::start(
        &reg.addr,
        Faults {
            cut_blob_once: Some((big.clone(), BIG / 3)),
            ..Default::default()
        },
    );
    let store = d.s("store-cut");
    let (ok, _, err) = registry_stage(d.tmp.path(), &store, &cut);
    assert!(ok, "{err}");
    assert!(cut.blob_gets(&big) >= 2, "{:?}", cut.requests());
    let got = fs::read(
        Path::new(&store)
            .join("layers/diff")
            .join(diff_ids[0].hex())
            .join("big/noise"),
    )
    .unwrap();
    assert!(got == content, "extracted file differs from the layer's");
    assert_eq!(temp_leftovers(Path::new(&store)), Vec::<String>::new());

    // Stalled mid-blob on every attempt: the stage fails within its deadlines and
    // publishes neither the blob nor any layer.
    let stall = Proxy::start(
        &reg.addr,
        Faults {
            stall_blob: Some((big.clone(), 100_000)),
            ..Default::default()
        },
    );
    let store = d.s("store-stall");
    let (ok, _, err) = registry_stage(d.tmp.path(), &store, &stall);
    assert!(!ok, "stage succeeded through a stalled blob");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    let digest: Digest = big.parse().unwrap();
    assert_nothing_published(&store, &digest);
}
