//! Staging against a faulty world: a signal while layers extract, a full disk on a small
//! loop-mounted ext4. Each case ends in one clear line, nothing half-written left behind,
//! and `store check` clean.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::cmd::cargo_bin;
use testkit::images::*;
use testkit::leaks::temp_leftovers;

/// A one-layer image whose layer is `len` zero bytes in one file: a tiny gzip blob that
/// takes `len` bytes (and a while) to extract.
fn zeros_image(seed: u64, len: usize) -> Image {
    let tar = layer_tar(&[(&format!("zeros{seed}"), vec![0u8; len])]);
    let diff_id = nestcache::digest::Digest::of(&tar);
    build(
        vec![Blob::new(OCI_LAYER_GZIP, gzip(&tar))],
        vec![diff_id],
        "amd64",
        |_, _| {},
    )
}

#[test]
fn sigterm_while_layers_extract_removes_the_work_dir() {
    testkit::require!(root);
    let d = Dirs::new();
    let img = zeros_image(800, 256 << 20);
    oci_dir(&d.path("src"), &[&img], &[("z", &img.manifest)]);
    let store = d.path("store");
    let child = Command::new(cargo_bin("nestcache"))
        .args(["stage", &format!("oci:{}", d.s("src")), "--store"])
        .arg(&store)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until an extraction dir exists (the signal then lands mid-extraction, or, if the
    // stage is quicker than this loop, after it: the checks below hold either way).
    let deadline = Instant::now() + Duration::from_secs(60);
    let tmp = store.join("layers/tmp");
    while fs::read_dir(&tmp).map_or(true, |mut d| d.next().is_none())
        && Instant::now() < deadline
        && !store
            .join("layers/diff")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        eprintln!("the stage finished before the signal; nothing to interrupt");
    } else {
        assert_eq!(out.status.code(), Some(143), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("interrupted by SIGTERM"), "{err}");
    }
    assert_eq!(temp_leftovers(&store), Vec::<String>::new());
    assert_intact(store.to_str().unwrap());
}

/// A small ext4 filesystem on a loop device of our own, detached (by its name) on drop.
struct SmallDisk {
    dev: String,
    mnt: PathBuf,
}

impl SmallDisk {
    fn new(d: &Dirs, mib: u64) -> SmallDisk {
        let img = d.path("disk.img");
        fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        let ok = |c: &mut Command| {
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
        let dev = ok(Command::new("losetup").args(["--find", "--show"]).arg(&img));
        let mnt = d.path("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let disk = SmallDisk { dev, mnt };
        ok(Command::new("mount").arg(&disk.dev).arg(&disk.mnt));
        disk
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn disk_full_on_a_small_ext4_is_one_line_and_nothing_half_written() {
    testkit::require!(root, tool "losetup", tool "mkfs.ext4");
    let d = Dirs::new();
    let disk = SmallDisk::new(&d, 16);
    let store = disk.mnt.join("store");
    let store_s = store.to_str().unwrap();
    let good = image(810, 1, "amd64", 0);
    oci_dir(&d.path("good"), &[&good], &[("good", &good.manifest)]);
    ok(&["stage", &format!("oci:{}", d.s("good")), "--store", store_s]);

    // Blobs larger than the disk: refused before anything is written.
    let big = image(811, 2, "amd64", 24 << 20);
    oci_dir(&d.path("big"), &[&big], &[("big", &big.manifest)]);
    let err = fails(&["stage", &format!("oci:{}", d.s("big")), "--store", store_s]);
    assert!(err.contains("bytes free") && err.contains(store_s), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Blobs that fit, a layer that does not once extracted: the disk fills mid-unpack.
    let zeros = zeros_image(812, 32 << 20);
    oci_dir(&d.path("zeros"), &[&zeros], &[("zeros", &zeros.manifest)]);
    let err = fails(&[
        "stage",
        &format!("oci:{}", d.s("zeros")),
        "--store",
        store_s,
    ]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    assert_eq!(temp_leftovers(&store), Vec::<String>::new());
    assert_intact(store_s);
    let mut names = refs(store_s);
    names.sort();
    // One pass: the layer's blob is published only with its tree, so the failed
    // extraction left neither (nor a ref).
    assert_eq!(names, ["good"]);
    assert!(!store
        .join("blobs/sha256")
        .join(zeros.layers[0].digest().hex())
        .exists());
    assert!(fs::read_dir(store.join("layers/diff"))
        .unwrap()
        .all(|e| e.unwrap().file_name() != zeros.diff_ids[0].hex()));
}

/// A layer with one character device whose major number field is `major` (raw bytes).
fn device_layer(major: &[u8]) -> (Blob, nestcache::digest::Digest) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_path("dev/evil").unwrap();
    h.set_mode(0o600);
    h.set_size(0);
    h.set_device_major(0).unwrap();
    h.set_device_minor(0).unwrap();
    let u = h.as_ustar_mut().unwrap();
    u.dev_major = [0; 8];
    u.dev_major[..major.len()].copy_from_slice(major);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, std::io::empty()).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = nestcache::digest::Digest::of(&tar);
    (Blob::new(OCI_LAYER, tar), diff_id)
}

#[test]
fn unparseable_device_numbers_are_refused() {
    testkit::require!(root);
    let d = Dirs::new();
    let store = d.s("store");
    for (i, major) in [&b"zz"[..], b"-1", b"\x7f\x7f\x7f"].into_iter().enumerate() {
        let (layer, diff_id) = device_layer(major);
        let img = build(vec![layer], vec![diff_id.clone()], "amd64", |_, _| {});
        let src = d.path(&format!("src{i}"));
        oci_dir(&src, &[&img], &[("dev", &img.manifest)]);
        let err = fails(&[
            "stage",
            &format!("oci:{}", src.display()),
            "--store",
            &store,
        ]);
        assert!(
            err.contains("unparseable device major number") && err.contains("dev/evil"),
            "{major:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // Nothing published: no 0/0 node (a whiteout to overlayfs) hides anything.
        assert!(!Path::new(&store)
            .join("layers/diff")
            .join(diff_id.hex())
            .exists());
        assert_eq!(temp_leftovers(Path::new(&store)), Vec::<String>::new());
        assert_intact(&store);
    }
}
