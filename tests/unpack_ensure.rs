//! `ensure_layers`: parallel extraction, publishing by diff id or chain id, cheap lookup of
//! what is already extracted, and cleanup of interrupted extractions.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nestcache::digest::chain_ids;
use nestcache::layout::ContentLayout;
use nestcache::unpack::{ensure_layers, Limits, UnpackError};
use nestcache::Error;
use testkit::layers::*;

#[test]
fn extracts_publishes_and_finds_again_without_blobs() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let base = LayerTar::new()
        .dir("bin/", 0o755)
        .file_with("bin/tool", b"tool", 0o755, 0, 0)
        .dir("tmp/", 0o1777)
        .finish();
    // Hardlinks into the base: must be chain-keyed.
    let linker = LayerTar::new()
        .dir("bin/", 0o755)
        .hardlink("bin/alias", "bin/tool")
        .finish();
    // Independent.
    let plain = LayerTar::new()
        .dir("etc/", 0o755)
        .file("etc/hostname", b"nested\n")
        .finish();
    // Names tmp/ only as a parent: takes the 1777 mode from below, so chain-keyed.
    let implicit = LayerTar::new().file("tmp/x", b"x").finish();
    let layers = vec![
        put_layer(store.path(), &base, true),
        put_layer(store.path(), &linker, true),
        put_layer(store.path(), &plain, false),
        put_layer(store.path(), &implicit, true),
    ];
    let dirs = ensure_layers(&layout, &layers, &Limits::default()).unwrap();
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let chains = chain_ids(&diff_ids);
    assert_eq!(dirs[0], layout.layer_by_diff_id(&diff_ids[0]));
    assert_eq!(dirs[1], layout.layer_by_chain_id(&chains[1]));
    assert_eq!(dirs[2], layout.layer_by_diff_id(&diff_ids[2]));
    assert_eq!(dirs[3], layout.layer_by_chain_id(&chains[3]));
    let tool = std::fs::metadata(dirs[1].join("bin/tool")).unwrap();
    assert_eq!(
        tool.ino(),
        std::fs::metadata(dirs[1].join("bin/alias")).unwrap().ino()
    );
    assert_eq!(std::fs::read(dirs[1].join("bin/alias")).unwrap(), b"tool");
    assert_eq!(
        std::fs::metadata(dirs[3].join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        std::fs::read_dir(layout.layers_tmp_dir()).unwrap().count(),
        0,
        "no work dir left"
    );

    // A second call finds everything without reading a blob.
    std::fs::remove_dir_all(layout.blobs_dir()).unwrap();
    let again = ensure_layers(&layout, &layers, &Limits::default()).unwrap();
    assert_eq!(again, dirs);
}

#[test]
fn a_bad_layer_fails_the_image_and_leaves_nothing() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let good = LayerTar::new().file("ok", b"ok").finish();
    let bad = LayerTar::new().file("../escape", b"x").finish();
    let mut layers = vec![
        put_layer(store.path(), &good, true),
        put_layer(store.path(), &bad, true),
    ];
    let err = ensure_layers(&layout, &layers, &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Unpack(UnpackError::UnsafeEntry { layer, entry, .. })
            if *layer == layers[1].diff_id && entry == Path::new("../escape")),
        "{err:?}"
    );
    assert!(!layout.layer_by_diff_id(&layers[1].diff_id).exists());
    assert_eq!(
        std::fs::read_dir(layout.layers_tmp_dir()).unwrap().count(),
        0
    );

    // A missing blob names itself.
    std::fs::remove_file(layout.blob(&layers[1].digest)).unwrap();
    layers[1].diff_id = nestcache::digest::Digest::of(b"other");
    let err = ensure_layers(&layout, &layers, &Limits::default()).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(
        matches!(&err, Error::Unpack(UnpackError::BlobMissing { blob, layer, .. })
            if *blob == layers[1].digest && *layer == layers[1].diff_id),
        "{err:?}"
    );
}

#[test]
fn stale_work_dirs_are_removed() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let stale = layout.layers_tmp_dir().join("unpack-dead");
    std::fs::create_dir_all(stale.join("tree/half")).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let layers = vec![put_layer(
        store.path(),
        &LayerTar::new().file("f", b"f").finish(),
        true,
    )];
    ensure_layers(&layout, &layers, &Limits::default()).unwrap();
    assert!(!stale.exists(), "stale extraction left in place");
}

#[test]
fn repeated_layers_extract_once() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let empty = LayerTar::new().finish();
    let l = put_layer(store.path(), &empty, true);
    let other = put_layer(
        store.path(),
        &LayerTar::new().file("f", b"f").finish(),
        true,
    );
    let dirs = ensure_layers(&layout, &[l.clone(), other, l.clone()], &Limits::default()).unwrap();
    assert_eq!(dirs[0], dirs[2]);
    assert_eq!(dirs[0], layout.layer_by_diff_id(&l.diff_id));
}

#[test]
fn ensure_unpacked_from_a_resolved_image() {
    let store_dir = tempfile::tempdir().unwrap();
    let layers = write_oci_image(
        store_dir.path(),
        "img",
        &[
            LayerTar::new().dir("a/", 0o755).file("a/1", b"1").finish(),
            LayerTar::new()
                .dir("a/", 0o755)
                .file("a/.wh.1", b"")
                .finish(),
        ],
    );
    let store = nestcache::store::Store::open(store_dir.path()).unwrap();
    let img = store.resolve("img", None).unwrap();
    let dirs = nestcache::unpack::ensure_unpacked(&store, &img, &Limits::default()).unwrap();
    let layout = store.layout();
    assert_eq!(
        dirs,
        layers
            .iter()
            .map(|l| layout.layer_by_diff_id(&l.diff_id))
            .collect::<Vec<_>>()
    );
}

#[test]
fn concurrent_extractions_of_one_image_agree() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let layers: Vec<_> = (0..3)
        .map(|i| {
            let tar = LayerTar::new()
                .dir(&format!("l{i}/"), 0o755)
                .file(&format!("l{i}/f"), &vec![i as u8; 300_000])
                .finish();
            put_layer(store.path(), &tar, true)
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| ensure_layers(&layout, &layers, &Limits::default())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    for (d, i) in results[0].iter().zip(0u8..) {
        assert_eq!(
            std::fs::read(d.join(format!("l{i}/f"))).unwrap(),
            vec![i; 300_000]
        );
    }
    assert_eq!(
        std::fs::read_dir(layout.layers_tmp_dir()).unwrap().count(),
        0
    );
}

#[test]
fn an_image_of_130_layers() {
    let store = tempfile::tempdir().unwrap();
    let layout = ContentLayout::new(store.path());
    let layers: Vec<_> = (0..130)
        .map(|i| {
            let tar = LayerTar::new()
                .dir("data/", 0o755)
                .file(&format!("data/{i}"), format!("{i}").as_bytes())
                .finish();
            put_layer(store.path(), &tar, i % 2 == 0)
        })
        .collect();
    let dirs = ensure_layers(&layout, &layers, &Limits::default()).unwrap();
    assert_eq!(dirs.len(), 130);
    for (i, d) in dirs.iter().enumerate() {
        assert_eq!(
            std::fs::read_to_string(d.join(format!("data/{i}"))).unwrap(),
            i.to_string()
        );
    }
}
