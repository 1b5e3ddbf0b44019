//! `nestcache stage` extracts what it stages, `nestcache store unpack` extracts an image
//! already present, and a hostile layer fails the command with one line naming the entry.
//! Plain `--store` directories: no containerd needed.

use std::process::{Command, Output};

use nestcache::layout::ContentLayout;
use testkit::layers::*;

fn nestcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nestcache"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn nestcache")
}

fn image() -> Vec<Vec<u8>> {
    vec![
        LayerTar::new()
            .dir("bin/", 0o755)
            .file_with("bin/sh", b"#!", 0o755, 0, 0)
            .finish(),
        LayerTar::new()
            .dir("etc/", 0o755)
            .file("etc/motd", b"hi\n")
            .dir("bin/", 0o755)
            .file("bin/.wh.sh", b"")
            .finish(),
    ]
}

#[test]
fn stage_extracts_and_store_unpack_finds_them() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let store = t.path().join("store");
    std::fs::create_dir(&src).unwrap();
    let layers = write_oci_image(&src, "app", &image());
    let spec = format!("oci:{}:app", src.display());
    let out = nestcache(&[
        "stage",
        &spec,
        "--store",
        store.to_str().unwrap(),
        "--ref",
        "app",
    ]);
    assert!(
        out.status.success(),
        "stage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let layout = ContentLayout::new(&store);
    for l in &layers {
        assert!(
            layout.layer_by_diff_id(&l.diff_id).is_dir(),
            "layer {} not extracted",
            l.diff_id
        );
    }
    assert_eq!(
        std::fs::read(layout.layer_by_diff_id(&layers[1].diff_id).join("etc/motd")).unwrap(),
        b"hi\n"
    );

    let out = nestcache(&[
        "store",
        "unpack",
        "app",
        "--store",
        store.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "store unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dirs: Vec<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = layers
        .iter()
        .map(|l| layout.layer_by_diff_id(&l.diff_id).display().to_string())
        .collect();
    assert_eq!(dirs, want);
}

#[test]
fn hostile_layer_fails_stage_with_one_line() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let store = t.path().join("store");
    std::fs::create_dir(&src).unwrap();
    let mut layers = image();
    layers.push(
        LayerTar::new()
            .symlink("lib", "/")
            .file("lib/nc-escape", b"x")
            .finish(),
    );
    let blobs = write_oci_image(&src, "bad", &layers);
    let spec = format!("oci:{}:bad", src.display());
    let out = nestcache(&[
        "stage",
        &spec,
        "--store",
        store.to_str().unwrap(),
        "--ref",
        "bad",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("lib/nc-escape") && err.contains("symlink"),
        "{err}"
    );
    assert!(!std::path::Path::new("/nc-escape").exists());
    let layout = ContentLayout::new(&store);
    assert!(!layout.layer_by_diff_id(&blobs[2].diff_id).exists());
    assert_eq!(
        std::fs::read_dir(layout.layers_tmp_dir()).unwrap().count(),
        0,
        "work dir left behind"
    );
}
