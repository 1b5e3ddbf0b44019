//! Staging memory stays flat as the image grows. Its own test binary: a child's peak RSS
//! (from wait4) includes whatever its parent held when it was spawned, so no other test
//! may hold big buffers in this process meanwhile.

use std::fs;
use std::process::{Command, Stdio};

use testkit::images::*;

#[test]
fn staging_memory_stays_flat() {
    let d = Dirs::new();
    // One 256 MiB uncompressed layer, written straight to disk (the test itself stays
    // small): if staging buffered it, the child's peak RSS would show it.
    let src = d.path("src");
    fs::create_dir_all(src.join("blobs/sha256")).unwrap();
    let tmp = src.join("layer.tmp");
    let mut w = nestcache::digest::HashingWriter::new(fs::File::create(&tmp).unwrap());
    {
        let mut b = tar::Builder::new(&mut w);
        let mut h = tar::Header::new_ustar();
        let size = 256u64 << 20;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(
            &mut h,
            "big",
            std::io::Read::take(std::io::repeat(0x5a), size),
        )
        .unwrap();
        b.finish().unwrap();
    }
    let (_, digest, size) = w.into_parts();
    fs::rename(&tmp, src.join("blobs/sha256").join(digest.hex())).unwrap();
    let layer =
        serde_json::json!({"mediaType": OCI_LAYER, "digest": digest.to_string(), "size": size});
    let config = Blob::new(
        OCI_CONFIG,
        serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest.to_string()]}}))
        .unwrap(),
    );
    let manifest = Blob::new(
        OCI_MANIFEST,
        serde_json::to_vec(
            &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config.descriptor(), "layers": [layer]}),
        )
        .unwrap(),
    );
    write_blob(&src, &config);
    oci_dir(&src, &[], &[("big", &manifest)]);

    // Blobs only, then the one pass (blob written and extracted in the same read).
    for (store, extra) in [
        (d.s("store"), &["--no-unpack"][..]),
        (d.s("one-pass"), &[][..]),
    ] {
        let peak_mib = stage_peak_rss_mib(&d.s("src"), &store, extra);
        assert!(
            peak_mib < 64,
            "staging a 256 MiB layer {extra:?} peaked at {peak_mib} MiB RSS"
        );
        assert_intact(&store);
    }
    assert!(d
        .path("one-pass/layers/diff")
        .join(digest.hex())
        .join("big")
        .exists());
}

/// Stages `oci:SRC` into `store` in a child; returns its peak RSS in MiB.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn stage_peak_rss_mib(src: &str, store: &str, extra: &[&str]) -> i64 {
    let child = Command::new(env!("CARGO_BIN_EXE_nestcache"))
        .args(["stage", &format!("oci:{src}"), "--store", store])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // wait4 gives this child's own peak RSS (KiB).
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "stage failed"
    );
    usage.ru_maxrss / 1024
}
