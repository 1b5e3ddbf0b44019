//! Round trips: each source format staged into a store, read back by nestcache, skopeo
//! and umoci; platform choice from an index; re-staging reuses every blob.

use std::process::Command;

use testkit::images::*;

fn layer_digests(img: &Image) -> Vec<String> {
    img.layers.iter().map(|l| l.digest().to_string()).collect()
}

#[test]
fn oci_dir_round_trip_and_dedupe() {
    testkit::require!(tool "skopeo", tool "umoci");
    let d = Dirs::new();
    let img = image(1, 3, "amd64", 0);
    oci_dir(&d.path("src"), &[&img], &[("app:1", &img.manifest)]);
    let store = d.s("store");

    let report = json(&[
        "stage",
        &format!("oci:{}:app:1", d.s("src")),
        "--store",
        &store,
        "--json",
    ]);
    assert_eq!(report["reference"], "app:1");
    assert_eq!(report["manifest_digest"], img.manifest.digest().to_string());
    assert_eq!(report["unpacked"], true);
    let staged: Vec<String> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(staged, layer_digests(&img));
    assert!(report["bytes_written"].as_u64().unwrap() > 0);
    assert_intact(&store);
    // The layers were extracted by the stage: unpack finds them all, bottom to top.
    let unpacked = json(&["store", "unpack", "app:1", "--store", &store, "--json"]);
    let dirs = unpacked["layers"].as_array().unwrap();
    assert_eq!(dirs.len(), 3);
    for (i, dir) in dirs.iter().enumerate() {
        let dir = std::path::Path::new(dir.as_str().unwrap());
        assert!(
            dir.join(format!("l{i}/file1")).is_file(),
            "layer {i} not extracted"
        );
    }

    // Again: nothing written, everything reused.
    let again = json(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--store",
        &store,
        "--ref",
        "app:2",
        "--json",
    ]);
    assert_eq!(again["bytes_written"], 0);
    assert!(again["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["reused"] == true));
    // --verify-existing re-hashes and still writes nothing.
    let verified = json(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--store",
        &store,
        "--ref",
        "app:2",
        "--verify-existing",
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(verified["bytes_written"], 0);
    assert_eq!(refs(&store), ["app:1", "app:2"]);

    let ls = json(&["images", "ls", "--store", &store, "--json"]);
    assert_eq!(ls[0]["layers"], 3);
    assert_eq!(ls[0]["platform"], "linux/amd64");
    assert_eq!(ls[0]["digest"], img.manifest.digest().to_string());

    // skopeo and umoci read the store.
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{store}:app:1")])
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inspect["Digest"], img.manifest.digest().to_string());
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 3);
    let bundle = d.path("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image", &format!("{store}:app:1")])
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bundle.join("rootfs/l2/file1").is_file());
}

#[test]
fn oci_archive_index_with_two_platforms() {
    let d = Dirs::new();
    let amd = image(2, 2, "amd64", 0);
    let arm = image(3, 2, "arm64", 0);
    let index = index_of(&[&amd, &arm]);
    oci_dir(&d.path("src"), &[&amd, &arm], &[("multi", &index)]);
    tar_dir(&d.path("src"), &d.path("multi.tar"));
    let store = d.s("store");
    let src = format!("oci-archive:{}", d.s("multi.tar"));

    let r = json(&[
        "stage",
        &src,
        "--store",
        &store,
        "--platform",
        "linux/arm64",
        "--ref",
        "m:arm",
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(r["manifest_digest"], arm.manifest.digest().to_string());
    assert_eq!(r["platform"], "linux/arm64");
    let r = json(&[
        "stage",
        &src,
        "--store",
        &store,
        "--platform",
        "linux/amd64",
        "--ref",
        "m:amd",
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(r["manifest_digest"], amd.manifest.digest().to_string());

    let err = fails(&[
        "stage",
        &src,
        "--store",
        &store,
        "--platform",
        "linux/s390x",
        "--ref",
        "m:s390x",
    ]);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64") && err.contains("linux/s390x"),
        "{err}"
    );
    assert_eq!(refs(&store), ["m:arm", "m:amd"]);
    assert_intact(&store);
    // The bare path is recognised as an OCI archive, and its own ref name is the default.
    let r = json(&[
        "stage",
        &d.s("multi.tar"),
        "--store",
        &store,
        "--platform",
        "linux/amd64",
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(r["reference"], "multi");
    assert_eq!(r["bytes_written"], 0);
}

#[test]
fn docker_archive_becomes_an_oci_image() {
    testkit::require!(tool "skopeo");
    let d = Dirs::new();
    let img = image(4, 3, "amd64", 0);
    docker_archive(&d.path("d.tar"), &img, &["example.com/app:7", "app:latest"]);
    let store = d.s("store");
    let r = json(&[
        "stage",
        &format!("docker-archive:{}:app:latest", d.s("d.tar")),
        "--store",
        &store,
        "--json",
    ]);
    assert_eq!(r["reference"], "app:latest");
    // docker save layers are uncompressed: the layer digest is the diff_id.
    for (l, diff_id) in r["layers"].as_array().unwrap().iter().zip(&img.diff_ids) {
        assert_eq!(l["digest"], diff_id.to_string());
        assert_eq!(l["diff_id"], diff_id.to_string());
        assert_eq!(l["media_type"], OCI_LAYER);
    }
    // The config is kept byte for byte.
    assert_eq!(r["config_digest"], img.config.digest().to_string());
    assert_intact(&store);
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{store}:app:latest")])
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bare path, tag taken from RepoTags; unknown tags are refused with the list.
    let r = json(&[
        "stage",
        &d.s("d.tar"),
        "--store",
        &store,
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(r["reference"], "example.com/app:7");
    assert_eq!(r["bytes_written"], 0);
    let err = fails(&[
        "stage",
        &format!("docker-archive:{}:nope:1", d.s("d.tar")),
        "--store",
        &store,
    ]);
    assert!(err.contains("app:latest"), "{err}");
}

#[test]
fn images_rm_and_gc_keep_what_refs_reach() {
    let d = Dirs::new();
    let a = image(5, 2, "amd64", 0);
    let b = image(6, 2, "amd64", 0);
    oci_dir(
        &d.path("src"),
        &[&a, &b],
        &[("a", &a.manifest), ("b", &b.manifest)],
    );
    let store = d.s("store");
    ok(&["stage", &format!("oci:{}:a", d.s("src")), "--store", &store]);
    ok(&["stage", &format!("oci:{}:b", d.s("src")), "--store", &store]);
    ok(&["images", "rm", "a", "--store", &store]);
    let err = fails(&["images", "rm", "a", "--store", &store]);
    assert!(err.contains("\"a\""), "{err}");
    let gc = json(&["store", "gc", "--store", &store, "--json"]);
    assert_eq!(gc["blobs_removed"], 4, "{gc}"); // a's 2 layers, config, manifest
    assert_eq!(gc["layers_removed"], 2, "{gc}");
    assert_eq!(refs(&store), ["b"]);
    assert_intact(&store);
    for diff_id in &a.diff_ids {
        assert!(!d.path("store/layers/diff").join(diff_id.hex()).exists());
    }
    // The remaining image unpacks again from its blobs.
    ok(&["store", "unpack", "b", "--store", &store]);
}

#[test]
fn docker_archive_with_compressed_layers_keeps_their_digests() {
    let d = Dirs::new();
    let img = image(8, 3, "amd64", 0);
    for (i, style) in [DockerStyle::Blobs, DockerStyle::LegacyCompressed]
        .into_iter()
        .enumerate()
    {
        let archive = d.path(&format!("d{i}.tar"));
        docker_archive_styled(&archive, &img, &["app:1"], style);
        let store = d.s(&format!("store{i}"));
        let r = json(&[
            "stage",
            archive.to_str().unwrap(),
            "--store",
            &store,
            "--json",
        ]);
        // Compression is read from the bytes; digests are the blobs' own, so the result
        // is the very same OCI layers (layer 1 is uncompressed, the others gzip).
        for (j, l) in r["layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(l["digest"], img.layers[j].digest().to_string());
            assert_eq!(l["media_type"], img.layers[j].media_type);
            assert_eq!(l["diff_id"], img.diff_ids[j].to_string());
        }
        assert_intact(&store);
    }
}
