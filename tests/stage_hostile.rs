//! Hostile and broken input: each case ends in one clear error line, a non-zero exit, and
//! a store that `store check` calls consistent, with no ref to the broken image and
//! nothing left in `ingest/`.

use std::fs;
use std::process::Command;

use serde_json::json;
use testkit::images::*;

/// A store that already holds one good image, so "intact" means it survived too.
fn store_with_good_image(d: &Dirs) -> String {
    let good = image(100, 2, "amd64", 0);
    oci_dir(&d.path("good"), &[&good], &[("good", &good.manifest)]);
    let store = d.s("store");
    ok(&[
        "stage",
        &format!("oci:{}", d.s("good")),
        "--store",
        &store,
        "--no-unpack",
    ]);
    store
}

fn assert_refused(d: &Dirs, store: &str, source: &str, needle: &str) -> String {
    let err = fails(&["stage", source, "--store", store, "--ref", "bad"]);
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_intact(store);
    assert_eq!(refs(store), ["good"], "{err}");
    let _ = d;
    err
}

#[test]
fn wrong_digest_wrong_size_and_missing_blobs() {
    let d = Dirs::new();
    let store = store_with_good_image(&d);

    // A layer whose bytes differ from its digest.
    let img = image(101, 2, "amd64", 0);
    oci_dir(&d.path("corrupt"), &[&img], &[("x", &img.manifest)]);
    let layer = d
        .path("corrupt/blobs/sha256")
        .join(img.layers[1].digest().hex());
    let mut data = fs::read(&layer).unwrap();
    data[600] ^= 0xff;
    fs::write(&layer, data).unwrap();
    let err = assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("corrupt")),
        "digest mismatch",
    );
    assert!(err.contains(&img.layers[1].digest().to_string()), "{err}");
    assert!(!d
        .path("store/blobs/sha256")
        .join(img.layers[1].digest().hex())
        .exists());

    // A descriptor that declares one byte less than the blob has.
    let mut layers = img.layers.clone();
    layers[0].data.push(0);
    let short = build(layers.clone(), img.diff_ids.clone(), "amd64", |_, m| {
        m["layers"][0]["size"] = json!(layers[0].data.len() - 1);
    });
    oci_dir(&d.path("size"), &[&short], &[("x", &short.manifest)]);
    assert_refused(&d, &store, &format!("oci:{}", d.s("size")), "more than the");

    // A missing layer blob (of a fresh image: the good layers above may be in the store
    // already, verified, and would rightly be reused).
    let fresh = image(111, 2, "amd64", 0);
    oci_dir(&d.path("missing"), &[&fresh], &[("x", &fresh.manifest)]);
    fs::remove_file(
        d.path("missing/blobs/sha256")
            .join(fresh.layers[1].digest().hex()),
    )
    .unwrap();
    assert_refused(&d, &store, &format!("oci:{}", d.s("missing")), "missing");
}

#[test]
fn huge_declared_size_is_refused_before_reading() {
    let d = Dirs::new();
    let store = store_with_good_image(&d);
    let img = image(102, 1, "amd64", 0);
    let huge = build(img.layers.clone(), img.diff_ids.clone(), "amd64", |_, m| {
        m["layers"][0]["size"] = json!(1u64 << 60);
    });
    oci_dir(&d.path("huge"), &[&huge], &[("x", &huge.manifest)]);
    let src = format!("oci:{}", d.s("huge"));
    // Above the layer size limit (default 32 GiB)...
    let err = assert_refused(&d, &store, &src, "is above the limit of 34359738368 bytes");
    assert!(err.contains(&(1u64 << 60).to_string()), "{err}");
    // ...and, with the limit raised, more than the disk has: refused before writing.
    let err = fails(&[
        "stage",
        &src,
        "--store",
        &store,
        "--ref",
        "bad",
        "--max-layer-size",
        "1048576TiB",
    ]);
    assert!(
        err.contains("bytes free") && err.contains(&(1u64 << 60).to_string()),
        "{err}"
    );
    assert_intact(&store);
    assert_eq!(refs(&store), ["good"]);

    // A manifest declaring a huge size is refused before being read.
    let mut entry = huge.manifest.clone();
    entry.data = b"{}".to_vec();
    oci_dir(&d.path("hugeman"), &[], &[]);
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": huge.manifest.digest().to_string(), "size": 1u64 << 40,
        "annotations": {"org.opencontainers.image.ref.name": "x"}}]});
    write_blob(&d.path("hugeman"), &huge.manifest);
    fs::write(d.path("hugeman/index.json"), index.to_string()).unwrap();
    assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("hugeman")),
        "more than the",
    );
}

#[test]
fn malformed_json_and_bad_documents() {
    let d = Dirs::new();
    let store = store_with_good_image(&d);
    let img = image(103, 2, "amd64", 0);

    oci_dir(&d.path("badindex"), &[&img], &[("x", &img.manifest)]);
    fs::write(
        d.path("badindex/index.json"),
        "{\"schemaVersion\": 2, \"manifests\": [",
    )
    .unwrap();
    assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("badindex")),
        "malformed JSON",
    );

    // A manifest that is not JSON, but matches its digest.
    let junk = Blob::new(OCI_MANIFEST, b"not json at all".to_vec());
    oci_dir(&d.path("badman"), &[], &[("x", &junk)]);
    assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("badman")),
        "malformed JSON",
    );

    // diff_ids count differs from the layer count.
    let bad = build(img.layers.clone(), img.diff_ids.clone(), "amd64", |c, _| {
        c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
    });
    oci_dir(&d.path("diffids"), &[&bad], &[("x", &bad.manifest)]);
    assert_refused(&d, &store, &format!("oci:{}", d.s("diffids")), "diff_ids");

    // An unknown layer media type is named.
    let odd = build(img.layers.clone(), img.diff_ids.clone(), "amd64", |_, m| {
        m["layers"][0]["mediaType"] = json!("application/x-strange");
    });
    oci_dir(&d.path("odd"), &[&odd], &[("x", &odd.manifest)]);
    assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("odd")),
        "application/x-strange",
    );
}

#[test]
fn symlinked_blob_and_self_referring_index() {
    let d = Dirs::new();
    let store = store_with_good_image(&d);
    let img = image(104, 1, "amd64", 0);

    oci_dir(&d.path("link"), &[&img], &[("x", &img.manifest)]);
    let layer = d
        .path("link/blobs/sha256")
        .join(img.layers[0].digest().hex());
    let elsewhere = d.path("elsewhere");
    fs::rename(&layer, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &layer).unwrap();
    assert_refused(&d, &store, &format!("oci:{}", d.s("link")), "symlink");

    // index.json → index blob X whose only entry is X itself (only a forged blob can do
    // that; it must be refused, not followed forever).
    oci_dir(&d.path("cycle"), &[], &[]);
    fs::create_dir_all(d.path("cycle/blobs/sha256")).unwrap();
    let fake = nestcache::digest::Digest::of(b"cycle");
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": fake.to_string(), "size": 10}]})
    .to_string();
    fs::write(d.path("cycle/blobs/sha256").join(fake.hex()), &body).unwrap();
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_INDEX, "digest": fake.to_string(), "size": body.len(),
        "annotations": {"org.opencontainers.image.ref.name": "x"}}]});
    fs::write(d.path("cycle/index.json"), index.to_string()).unwrap();
    assert_refused(
        &d,
        &store,
        &format!("oci:{}", d.s("cycle")),
        "refers to itself",
    );
}

#[test]
fn truncated_archive_and_dotdot_entries() {
    let d = Dirs::new();
    let store = store_with_good_image(&d);
    let img = image(105, 2, "amd64", 200_000);
    oci_dir(&d.path("src"), &[&img], &[("x", &img.manifest)]);
    tar_dir(&d.path("src"), &d.path("full.tar"));
    let full = fs::read(d.path("full.tar")).unwrap();
    fs::write(d.path("cut.tar"), &full[..full.len() / 2]).unwrap();
    assert_refused(
        &d,
        &store,
        &format!("oci-archive:{}", d.s("cut.tar")),
        "truncated",
    );

    docker_archive(&d.path("d.tar"), &img, &["x:1"]);
    let full = fs::read(d.path("d.tar")).unwrap();
    fs::write(d.path("dcut.tar"), &full[..full.len() - 3000]).unwrap();
    let err = fails(&[
        "stage",
        &format!("docker-archive:{}", d.s("dcut.tar")),
        "--store",
        &store,
    ]);
    assert!(
        err.contains("truncated") || err.contains("manifest.json"),
        "{err}"
    );
    assert_intact(&store);

    // An archive with a `..` entry is refused whole.
    let f = fs::File::create(d.path("dotdot.tar")).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", d.path("src")).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escape.txt");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    assert_refused(
        &d,
        &store,
        &format!("oci-archive:{}", d.s("dotdot.tar")),
        "..",
    );
}

#[test]
fn disk_full_mid_stage_leaves_the_store_intact() {
    testkit::require!(root);
    let d = Dirs::new();
    let mnt = d.path("small");
    fs::create_dir_all(&mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(status.success(), "mount a tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());

    let store = mnt.join("store").to_str().unwrap().to_string();
    let small = image(106, 1, "amd64", 0);
    oci_dir(
        &d.path("small-src"),
        &[&small],
        &[("good", &small.manifest)],
    );
    ok(&[
        "stage",
        &format!("oci:{}", d.s("small-src")),
        "--store",
        &store,
        "--no-unpack",
    ]);

    let big = image(107, 2, "amd64", 3 << 20);
    oci_dir(&d.path("big"), &[&big], &[("big", &big.manifest)]);
    let err = fails(&[
        "stage",
        &format!("oci:{}", d.s("big")),
        "--store",
        &store,
        "--no-unpack",
    ]);
    // Refused before anything is written: the layers declare more than the disk has.
    assert!(err.contains("bytes free"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_intact(&store);
    assert_eq!(refs(&store), ["good"]);
}
