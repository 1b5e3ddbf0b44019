//! Round trips with the project's generated images (mkimage): busybox root, whiteouts,
//! hardlinks, xattrs, zstd and gzip, a two-platform index, 120 layers — staged from each
//! source format, then read back by nestcache, skopeo and umoci.

use std::process::Command;

use testkit::images::*;

fn skopeo_digest(store: &str, reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{store}:{reference}")])
        .output()
        .expect("skopeo");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[test]
fn features_image_from_every_source_format() {
    testkit::require!(tool "skopeo", tool "umoci");
    let d = Dirs::new();
    for (i, compression) in [mkimage::Compression::Zstd, mkimage::Compression::Gzip]
        .into_iter()
        .enumerate()
    {
        let mut spec = mkimage::preset("features").unwrap();
        spec.compression = compression;
        spec.multi_platform = true;
        let built = spec.write_layout(&d.path(&format!("layout{i}"))).unwrap();
        let oci_tar = d.path(&format!("img{i}.oci.tar"));
        let docker_tar = d.path(&format!("img{i}.docker.tar"));
        mkimage::write_oci_archive(&built.layout, &oci_tar).unwrap();
        mkimage::write_docker_archive(&built, &docker_tar).unwrap();
        let host = built.image.platform.to_string();
        let store = d.s(&format!("store{i}"));

        // OCI layout dir and archive: the very manifest mkimage wrote.
        for (src, reference) in [
            (
                format!("oci:{}:{}", built.layout.display(), built.ref_name),
                "dir",
            ),
            (format!("oci-archive:{}", oci_tar.display()), "archive"),
        ] {
            let r = json(&[
                "stage",
                &src,
                "--store",
                &store,
                "--ref",
                reference,
                "--platform",
                &host,
                "--json",
            ]);
            assert_eq!(r["manifest_digest"], built.image.manifest.digest);
            assert_eq!(
                skopeo_digest(&store, reference),
                built.image.manifest.digest
            );
        }
        // The other platform of the index.
        let other = built.other.as_ref().expect("two-platform index");
        let r = json(&[
            "stage",
            &format!("oci-archive:{}", oci_tar.display()),
            "--store",
            &store,
            "--ref",
            "other",
            "--platform",
            &other.platform.to_string(),
            "--no-unpack",
            "--json",
        ]);
        assert_eq!(r["manifest_digest"], other.manifest.digest);

        // docker-archive: uncompressed layers whose digests are the diff_ids.
        let r = json(&[
            "stage",
            &format!("docker-archive:{}", docker_tar.display()),
            "--store",
            &store,
            "--ref",
            "docker",
            "--json",
        ]);
        let diff_ids: Vec<&str> = built
            .image
            .layers
            .iter()
            .map(|l| l.diff_id.as_str())
            .collect();
        let got: Vec<&str> = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(got, diff_ids);
        assert_eq!(r["config_digest"], built.image.config.digest);
        skopeo_digest(&store, "docker");

        assert_intact(&store);
        // umoci unpacks what nestcache staged.
        let bundle = d.path(&format!("bundle{i}"));
        let out = Command::new("umoci")
            .args(["unpack", "--image", &format!("{store}:docker")])
            .arg(&bundle)
            .output()
            .expect("umoci");
        assert!(
            out.status.success(),
            "umoci: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(bundle.join("rootfs/bin/busybox").is_file());
    }
}

#[test]
fn many_layers_image_stages_and_unpacks() {
    testkit::require!(tool "skopeo", tool "umoci");
    let d = Dirs::new();
    let built = mkimage::preset("many-layers")
        .unwrap()
        .write_layout(&d.path("layout"))
        .unwrap();
    let store = d.s("store");
    let r = json(&[
        "stage",
        &format!("oci:{}", built.layout.display()),
        "--store",
        &store,
        "--json",
    ]);
    assert_eq!(r["layers"].as_array().unwrap().len(), 120);
    let u = json(&[
        "store",
        "unpack",
        &built.ref_name,
        "--store",
        &store,
        "--json",
    ]);
    assert_eq!(u["layers"].as_array().unwrap().len(), 120);
    assert_intact(&store);
}
