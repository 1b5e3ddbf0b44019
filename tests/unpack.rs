//! The layer applier on its own: semantics of every entry kind, whiteouts, and hostile
//! layers (each refused with an error naming the entry, and nothing left behind).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nestcache::digest::Digest;
use nestcache::unpack::{apply_layer, GuardTrip, Limits, Outcome, UnpackError};
use nestcache::Error;
use tar::EntryType;
use testkit::layers::*;

fn apply(blob: &[u8], media: &str, diff_id: &Digest, dest: &Path) -> nestcache::Result<Outcome> {
    apply_layer(blob, media, diff_id, dest, Some(&[]), &Limits::default())
}

fn apply_ok(tar: &[u8], dest: &Path) {
    match apply(&gzip(tar), GZIP, &Digest::of(tar), dest).unwrap() {
        Outcome::Done(_) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// Applies a hostile layer; returns the unpacker's error after checking nothing is left.
fn refused(tar: &[u8]) -> UnpackError {
    let (_t, dest) = scratch();
    let err = apply(&gzip(tar), GZIP, &Digest::of(tar), &dest).expect_err("hostile layer accepted");
    assert!(
        !dest.exists(),
        "partial tree left behind at {}",
        dest.display()
    );
    unpack_error(err)
}

fn unpack_error(err: Error) -> UnpackError {
    match err {
        Error::Unpack(e) => e,
        other => panic!("not an unpack error: {other:?}"),
    }
}

/// An unsafe-path refusal of `entry`; returns why.
fn unsafe_entry(e: UnpackError, want: &str) -> String {
    match e {
        UnpackError::UnsafeEntry { entry, why, .. } if entry == Path::new(want) => why,
        other => panic!("expected entry {want:?} refused as unsafe, got {other:?}"),
    }
}

#[test]
fn regular_files_dirs_links_devices_and_metadata() {
    let tar = LayerTar::new()
        .dir("./", 0o755)
        .dir("etc/", 0o755)
        .file_with("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0)
        .dir("tmp/", 0o1777)
        .file_with("bin/su", b"suid", 0o4755, 1000, 1001)
        .file_with("bin/sg", b"sgid", 0o2711, 0, 50)
        .symlink("bin/sh", "busybox")
        .symlink("etc/mtab", "/proc/mounts")
        .hardlink("etc/passwd-", "etc/passwd")
        .dir("usr/", 0o755)
        .dir("usr/share/", 0o755)
        .hardlink("usr/share/passwd", "etc/passwd")
        .node("dev/null", EntryType::Char, 1, 3)
        .node("dev/sda", EntryType::Block, 8, 0)
        .node("run/fifo", EntryType::Fifo, 0, 0)
        .file_xattrs("bin/ping", b"ping", &[("user.test", b"v1"), ("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")])
        .finish();
    let (_t, dest) = scratch();
    apply_ok(&tar, &dest);

    let m = std::fs::symlink_metadata(dest.join("bin/su")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(std::fs::read(dest.join("bin/su")).unwrap(), b"suid");
    assert_eq!(
        std::fs::symlink_metadata(dest.join("bin/sg"))
            .unwrap()
            .mode()
            & 0o7777,
        0o2711
    );
    let tmp = std::fs::symlink_metadata(dest.join("tmp")).unwrap();
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        tmp.mtime(),
        1_600_000_000,
        "directory mtime set after its contents"
    );
    assert_eq!(
        std::fs::symlink_metadata(dest.join("etc")).unwrap().mtime(),
        1_600_000_000
    );
    assert_eq!(
        std::fs::read_link(dest.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(dest.join("etc/mtab")).unwrap(),
        Path::new("/proc/mounts")
    );
    let a = std::fs::metadata(dest.join("etc/passwd")).unwrap();
    let b = std::fs::metadata(dest.join("etc/passwd-")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    let c = std::fs::metadata(dest.join("usr/share/passwd")).unwrap();
    assert_eq!(a.ino(), c.ino(), "hardlink across directories");
    assert_eq!(a.nlink(), 3);
    let null = std::fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(std::fs::symlink_metadata(dest.join("dev/sda"))
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(std::fs::symlink_metadata(dest.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        xattr::get(dest.join("bin/ping"), "user.test")
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    assert!(xattr::get(dest.join("bin/ping"), "security.capability")
        .unwrap()
        .is_some());
}

/// Most files skip chown/chmod (the kernel already gives them owner and mode); these are
/// the cases where it must not: setgid parents, modes the umask cuts, special bits, and
/// owners other than ours.
#[test]
fn owners_and_modes_are_exact_under_a_setgid_parent_and_any_umask() {
    testkit::require!(root);
    let tar = LayerTar::new()
        .dir("./", 0o755)
        .file_with("a644", b"x", 0o644, 0, 0)
        .file_with("a755", b"x", 0o755, 0, 0)
        .file_with("a666", b"x", 0o666, 0, 0)
        .file_with("a777", b"x", 0o777, 0, 0)
        .file_with("a600", b"x", 0o600, 0, 0)
        .file_with("a4755", b"x", 0o4755, 0, 0)
        .file_with("a2755", b"x", 0o2755, 0, 0)
        .dir("d/", 0o2775)
        .file_with("d/in-setgid-dir", b"x", 0o644, 0, 0)
        .file_with("u1000", b"x", 0o644, 1000, 0)
        .file_with("g1000", b"x", 0o644, 0, 1000)
        .finish();
    let want = [
        ("a644", 0o644, 0, 0),
        ("a755", 0o755, 0, 0),
        ("a666", 0o666, 0, 0),
        ("a777", 0o777, 0, 0),
        ("a600", 0o600, 0, 0),
        ("a4755", 0o4755, 0, 0),
        ("a2755", 0o2755, 0, 0),
        ("d/in-setgid-dir", 0o644, 0, 0),
        ("u1000", 0o644, 1000, 0),
        ("g1000", 0o644, 0, 1000),
    ];
    for setgid_parent in [false, true] {
        let (t, dest) = scratch();
        if setgid_parent {
            // A content dir that is setgid to some group: new files would take that group.
            std::os::unix::fs::chown(t.path(), None, Some(4321)).unwrap();
            std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o2775)).unwrap();
        }
        apply_ok(&tar, &dest);
        for (name, mode, uid, gid) in want {
            let m = std::fs::symlink_metadata(dest.join(name)).unwrap();
            assert_eq!(
                (m.mode() & 0o7777, m.uid(), m.gid()),
                (mode, uid, gid),
                "{name} (setgid parent: {setgid_parent})"
            );
        }
    }
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let tar = LayerTar::new()
        .dir("etc/", 0o755)
        .file("etc/.wh.gone", b"")
        .dir("var/cache/", 0o755)
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/new", b"n")
        .file("implicit/.wh..wh..opq", b"")
        .file(".wh..wh.plnk", b"")
        .finish();
    let (_t, dest) = scratch();
    apply_ok(&tar, &dest);
    let wh = std::fs::symlink_metadata(dest.join("etc/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0, "whiteout is a 0/0 character device");
    assert!(!dest.join("etc/.wh.gone").exists());
    assert_eq!(
        xattr::get(dest.join("var/cache"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(!dest.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(std::fs::read(dest.join("var/cache/new")).unwrap(), b"n");
    assert_eq!(
        xattr::get(dest.join("implicit"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert!(
        !dest.join(".wh..wh.plnk").exists(),
        "AUFS metadata is dropped"
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let tar = LayerTar::new()
        .dir("a/", 0o755)
        .file("a/inner", b"x")
        .file("a", b"now a file")
        .file("b", b"old")
        .file("b", b"new")
        .file("c", b"file")
        .dir("c/", 0o700)
        .finish();
    let (_t, dest) = scratch();
    apply_ok(&tar, &dest);
    assert_eq!(std::fs::read(dest.join("a")).unwrap(), b"now a file");
    assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"new");
    assert!(dest.join("c").is_dir());
}

#[test]
fn every_compression_gives_the_same_tree() {
    let tar = LayerTar::new()
        .dir("d/", 0o755)
        .file("d/f", &vec![7u8; 100_000])
        .finish();
    let id = Digest::of(&tar);
    for (blob, media) in [
        (tar.clone(), TAR),
        (gzip(&tar), GZIP),
        (zstd(&tar), ZSTD),
        (
            gzip(&tar),
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
        // docker-archive layers are plain tars labelled gzip: the magic bytes decide.
        (
            tar.clone(),
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        ),
    ] {
        let (_t, dest) = scratch();
        match apply(&blob, media, &id, &dest).unwrap() {
            Outcome::Done(s) => {
                assert_eq!(s.tar_bytes, tar.len() as u64);
                assert_eq!(s.entries, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read(dest.join("d/f")).unwrap().len(),
            100_000,
            "{media}"
        );
    }
}

#[test]
fn unknown_media_type_is_refused() {
    let tar = LayerTar::new().file("f", b"x").finish();
    let (_t, dest) = scratch();
    let err = apply(
        &tar,
        "application/vnd.oci.image.config.v1+json",
        &Digest::of(&tar),
        &dest,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("application/vnd.oci.image.config.v1+json"),
        "{err}"
    );
    assert!(!dest.exists());
}

#[test]
fn dot_dot_is_refused() {
    let e = refused(
        &LayerTar::new()
            .file("ok", b"x")
            .file("../escape", b"x")
            .finish(),
    );
    assert!(unsafe_entry(e, "../escape").contains(".."));
    let e = refused(&LayerTar::new().file("a/../../escape", b"x").finish());
    assert!(unsafe_entry(e, "a/../../escape").contains(".."));
}

#[test]
fn absolute_path_is_refused() {
    let e = refused(&LayerTar::new().file("/etc/nc-unpack-test", b"x").finish());
    assert!(unsafe_entry(e, "/etc/nc-unpack-test").contains("absolute"));
    assert!(!Path::new("/etc/nc-unpack-test").exists());
}

#[test]
fn write_through_symlinked_parent_is_refused() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let e = refused(
        &LayerTar::new()
            .symlink("evil", &target)
            .file("evil/pwned", b"x")
            .finish(),
    );
    assert!(unsafe_entry(e, "evil/pwned").contains("symlink"));
    assert!(!outside.path().join("pwned").exists());
    // Relative symlinks climbing out are caught the same way.
    let e = refused(
        &LayerTar::new()
            .dir("d/", 0o755)
            .symlink("d/up", "../../../../..")
            .file("d/up/tmp/pwned", b"x")
            .finish(),
    );
    assert!(unsafe_entry(e, "d/up/tmp/pwned").contains("symlink"));
}

#[test]
fn symlink_loop_is_refused() {
    let e = refused(
        &LayerTar::new()
            .symlink("a", "b")
            .symlink("b", "a")
            .file("a/x", b"x")
            .finish(),
    );
    assert!(unsafe_entry(e, "a/x").contains("symlink"));
}

#[test]
fn hardlink_escapes_are_refused() {
    let e = refused(
        &LayerTar::new()
            .hardlink("passwd", "../../../../etc/passwd")
            .finish(),
    );
    assert!(unsafe_entry(e, "passwd").contains(".."));
    let e = refused(&LayerTar::new().hardlink("passwd", "/etc/passwd").finish());
    assert!(unsafe_entry(e, "passwd").contains("absolute"));
    let e = refused(
        &LayerTar::new()
            .symlink("etc", "/etc")
            .hardlink("passwd", "etc/passwd")
            .finish(),
    );
    assert!(unsafe_entry(e, "passwd").contains("symlink"));
    let e = refused(&LayerTar::new().dir("d/", 0o755).hardlink("l", "d").finish());
    assert!(unsafe_entry(e, "l").contains("directory"));
}

#[test]
fn hardlink_to_an_outward_symlink_stays_a_symlink() {
    // linkat without AT_SYMLINK_FOLLOW: the link is a second symlink, nothing is written
    // through it (containerd and GNU tar behave the same).
    let tar = LayerTar::new()
        .symlink("s", "/etc/passwd")
        .hardlink("l", "s")
        .finish();
    let (_t, dest) = scratch();
    apply_ok(&tar, &dest);
    let m = std::fs::symlink_metadata(dest.join("l")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(dest.join("l")).unwrap(),
        PathBuf::from("/etc/passwd")
    );
}

#[test]
fn gzip_bomb_is_refused() {
    // 256 MiB of zeros in one entry, as a multi-member gzip stream (one member compressed
    // once and repeated, so building the bomb is cheap): about 1000:1.
    let chunk = 1usize << 20;
    let members = 256;
    let size = (chunk * members) as u64;
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut blob = gzip(h.as_bytes());
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut enc, &vec![0u8; chunk]).unwrap();
    let zeros = enc.finish().unwrap();
    for _ in 0..members {
        blob.extend_from_slice(&zeros);
    }
    blob.extend_from_slice(&gzip(&[0u8; 1024]));
    assert!(
        size / blob.len() as u64 >= 900,
        "bomb ratio {}",
        size / blob.len() as u64
    );
    let (_t, dest) = scratch();
    let fake = Digest::of(b"unknown");
    // The default ratio guard trips after 64 MiB; a smaller grace keeps the debug-build
    // test quick and exercises the same check.
    let limits = Limits {
        ratio_grace_bytes: 8 << 20,
        ..Limits::default()
    };
    let err = apply_layer(&blob[..], GZIP, &fake, &dest, Some(&[]), &limits).unwrap_err();
    match unpack_error(err) {
        UnpackError::Guard {
            layer,
            entry,
            tripped: GuardTrip::Ratio { limit, .. },
        } => {
            assert_eq!(layer, fake);
            assert_eq!(entry.as_deref(), Some(Path::new("zeros")));
            assert_eq!(limit, Limits::default().max_ratio);
        }
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists());
    // The total-size limit works on its own too.
    let limits = Limits {
        max_layer_bytes: 1 << 20,
        ..Limits::default()
    };
    let err = apply_layer(&blob[..], GZIP, &fake, &dest, Some(&[]), &limits).unwrap_err();
    assert!(
        matches!(
            unpack_error(err),
            UnpackError::Guard {
                tripped: GuardTrip::LayerBytes { limit: 1048576 },
                ..
            }
        ),
        "max_layer_bytes"
    );
    assert!(!dest.exists());
}

#[test]
fn entry_count_limit() {
    let tar = LayerTar::new()
        .file("a", b"")
        .file("b", b"")
        .file("c", b"")
        .finish();
    let (_t, dest) = scratch();
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let err = apply_layer(&tar[..], TAR, &Digest::of(&tar), &dest, Some(&[]), &limits).unwrap_err();
    match unpack_error(err) {
        UnpackError::TooManyEntries { entry, limit, .. } => {
            assert_eq!((entry.as_path(), limit), (Path::new("c"), 2));
        }
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists());
}

#[test]
fn tar_ending_mid_entry_is_refused() {
    let tar = LayerTar::new()
        .file("first", b"ok")
        .file("big", &vec![1u8; 10_000])
        .finish();
    let cut = &tar[..512 * 2 + 512 + 4096];
    let (_t, dest) = scratch();
    let err = unpack_error(apply(cut, TAR, &Digest::of(&tar), &dest).unwrap_err());
    assert!(
        matches!(&err, UnpackError::ShortEntry { entry, expected: 10_000, .. } if entry == Path::new("big")),
        "{err:?}"
    );
    assert!(!dest.exists());
    // The same, truncated inside the gzip stream.
    let gz = gzip(&tar);
    let err = unpack_error(apply(&gz[..gz.len() / 2], GZIP, &Digest::of(&tar), &dest).unwrap_err());
    assert!(
        matches!(
            &err,
            UnpackError::Stream { .. } | UnpackError::ShortEntry { .. }
        ),
        "{err:?}"
    );
    assert!(!dest.exists());
}

#[test]
fn wrong_diff_id_is_refused() {
    let tar = LayerTar::new().file("f", b"x").finish();
    let wrong = Digest::of(b"something else");
    let (_t, dest) = scratch();
    match unpack_error(apply(&gzip(&tar), GZIP, &wrong, &dest).unwrap_err()) {
        UnpackError::DiffIdMismatch {
            layer,
            actual,
            bytes,
        } => assert_eq!(
            (layer, actual, bytes),
            (wrong, Digest::of(&tar), tar.len() as u64)
        ),
        other => panic!("{other:?}"),
    }
    assert!(!dest.exists());
}

#[test]
fn cross_layer_hardlink_needs_lowers_and_copies_up() {
    let lower_tar = LayerTar::new()
        .dir("bin/", 0o755)
        .file_with("bin/tool", b"tool", 0o4750, 7, 8)
        .finish();
    let (t, lower) = scratch();
    apply_ok(&lower_tar, &lower);
    let upper_tar = LayerTar::new().hardlink("bin/alias", "bin/tool").finish();
    let id = Digest::of(&upper_tar);
    let upper = t.path().join("upper");
    let out = apply_layer(&upper_tar[..], TAR, &id, &upper, None, &Limits::default()).unwrap();
    assert!(matches!(out, Outcome::NeedsLowers { .. }), "{out:?}");
    assert!(!upper.exists());
    let lowers = vec![lower.clone()];
    match apply_layer(
        &upper_tar[..],
        TAR,
        &id,
        &upper,
        Some(&lowers),
        &Limits::default(),
    )
    .unwrap()
    {
        Outcome::Done(s) => assert!(s.depends_on_lowers),
        other => panic!("{other:?}"),
    }
    let a = std::fs::symlink_metadata(upper.join("bin/tool")).unwrap();
    let b = std::fs::symlink_metadata(upper.join("bin/alias")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!((a.mode() & 0o7777, a.uid(), a.gid()), (0o4750, 7, 8));
    assert_eq!(std::fs::read(upper.join("bin/alias")).unwrap(), b"tool");
    assert_eq!(
        std::fs::symlink_metadata(upper.join("bin")).unwrap().mode() & 0o7777,
        0o755
    );
    // A target that is nowhere is an error naming it.
    let bad = LayerTar::new().hardlink("x", "nowhere").finish();
    let err = apply_layer(
        &bad[..],
        TAR,
        &Digest::of(&bad),
        &t.path().join("bad"),
        Some(&lowers),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(unpack_error(err), UnpackError::LinkTargetMissing { entry, target, .. }
            if entry == Path::new("x") && target == Path::new("nowhere"))
    );
    assert!(!t.path().join("bad").exists());
}

#[test]
fn whiteout_forms() {
    // A whiteout replaces what the same layer wrote earlier at that name, even a tree.
    let tar = LayerTar::new()
        .dir("d/", 0o755)
        .file("d/x", b"x")
        .file(".wh.d", b"")
        .symlink("s", "target")
        .file(".wh.s", b"")
        .finish();
    let (_t, dest) = scratch();
    apply_ok(&tar, &dest);
    for name in ["d", "s"] {
        let m = std::fs::symlink_metadata(dest.join(name)).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{name}");
    }
    // A whiteout that names nothing is refused.
    for bad in [".wh.", "dir/.wh..."] {
        let e = refused(&LayerTar::new().file(bad, b"").finish());
        assert!(unsafe_entry(e, bad).contains("whiteout"), "{bad}");
    }
    // An opaque marker under a symlink cannot mark anything outside.
    let outside = tempfile::tempdir().unwrap();
    let e = refused(
        &LayerTar::new()
            .symlink("o", outside.path().to_str().unwrap())
            .file("o/.wh..wh..opq", b"")
            .finish(),
    );
    assert!(unsafe_entry(e, "o/.wh..wh..opq").contains("symlink"));
    assert!(xattr::get(outside.path(), "trusted.overlay.opaque")
        .unwrap()
        .is_none());
}
