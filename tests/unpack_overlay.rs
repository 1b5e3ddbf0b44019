//! The check that extraction is right: the overlay of our extracted layers must show the
//! same tree as `umoci unpack` (a reference applier) of the same image — paths, types,
//! modes, owners, content hashes, link targets, device numbers, xattrs, hardlink groups.
//! Needs root, overlayfs and umoci (all present on the test machines).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nestcache::digest::Digest;
use nestcache::layout::ContentLayout;
use nestcache::unpack::{ensure_layers, LayerBlob, Limits};
use tar::EntryType;
use testkit::layers::*;

/// One line per path describing everything the comparison covers.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    // Hardlink groups, named by their first path (inode numbers differ between trees).
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            out.get_mut(p)
                .unwrap()
                .push_str(&format!(" linkgroup={}", group[0].display()));
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, String>,
    inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let mut d = format!("mode={:o} owner={}:{}", m.mode() & 0o7777, m.uid(), m.gid());
        if ft.is_dir() {
            d.insert_str(0, "dir ");
        } else if ft.is_file() {
            let data = std::fs::read(&path).unwrap();
            d.insert_str(0, &format!("file {} ", Digest::of(&data)));
            d.push_str(&format!(" mtime={}", m.mtime()));
            inodes.entry(m.ino()).or_default().push(rel.clone());
        } else if ft.is_symlink() {
            d = format!(
                "symlink -> {} owner={}:{}",
                std::fs::read_link(&path).unwrap().display(),
                m.uid(),
                m.gid()
            );
        } else if ft.is_char_device() || ft.is_block_device() {
            d.insert_str(
                0,
                &format!(
                    "dev {} rdev={} ",
                    if ft.is_char_device() { 'c' } else { 'b' },
                    m.rdev()
                ),
            );
        } else if ft.is_fifo() {
            d.insert_str(0, "fifo ");
        }
        if !ft.is_symlink() {
            let mut xs: Vec<String> = xattr::list(&path)
                .unwrap()
                .filter(|k| {
                    !k.to_string_lossy().starts_with("trusted.overlay.") && k != "security.selinux"
                })
                .map(|k| {
                    format!(
                        "{}={:?}",
                        k.to_string_lossy(),
                        xattr::get(&path, &k).unwrap().unwrap_or_default()
                    )
                })
                .collect();
            xs.sort();
            if !xs.is_empty() {
                d.push_str(&format!(" xattrs[{}]", xs.join(",")));
            }
        }
        out.insert(rel, d);
        if ft.is_dir() {
            walk(root, &path, out, inodes);
        }
    }
}

/// Unmounts on drop, so a failing assert does not leave a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn mount_overlay(layers: &[PathBuf], at: &Path) -> Mounted {
    std::fs::create_dir_all(at).unwrap();
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!("lowerdir={}", lower.join(":"));
    nix::mount::mount(
        Some("overlay"),
        at,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
    Mounted(at.to_path_buf())
}

fn umoci_unpack(layout: &Path, reference: &str, bundle: &Path) -> PathBuf {
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{reference}", layout.display()))
        .arg(bundle)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

/// Three layers that exercise every rule an overlay-ready tree must get right.
fn generated_image() -> Vec<Vec<u8>> {
    let base = LayerTar::new()
        .dir("./", 0o755)
        .dir("bin/", 0o755)
        .file_with("bin/busybox", b"#!busybox\n", 0o755, 0, 0)
        .symlink("bin/sh", "busybox")
        .file_with("bin/tool", b"tool v1\n", 0o4755, 0, 0)
        .hardlink("bin/tool-hard", "bin/tool")
        .dir("etc/", 0o755)
        .file("etc/hostname", b"base\n")
        .file("etc/remove-me", b"gone soon\n")
        .file_with("etc/shadow", b"root:*:::::::\n", 0o640, 0, 42)
        .dir("tmp/", 0o1777)
        .dir("usr/", 0o755)
        .dir("usr/lib/", 0o755)
        .file("usr/lib/libc.so", b"libc")
        .symlink("lib", "usr/lib")
        .dir("var/", 0o755)
        .dir("var/cache/", 0o2775)
        .file("var/cache/old-1", b"1")
        .dir("var/cache/sub/", 0o755)
        .file("var/cache/sub/old-2", b"2")
        .dir("olddir/", 0o700)
        .file("olddir/inner", b"inner")
        .dir("dev/", 0o755)
        .node("dev/null", EntryType::Char, 1, 3)
        .node("dev/loop0", EntryType::Block, 7, 0)
        .node("dev/initctl", EntryType::Fifo, 0, 0)
        .file_xattrs("bin/ping", b"ping", &[("user.origin", b"base"), ("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")])
        .finish();
    let middle = LayerTar::new()
        .dir("etc/", 0o755)
        .file(".wh.olddir", b"")
        .file("etc/.wh.remove-me", b"")
        .file_with("etc/hostname", b"middle\n", 0o600, 1000, 1000)
        .dir("var/cache/", 0o2775)
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/fresh", b"fresh")
        .dir("bin/", 0o755)
        .hardlink("bin/tool-alias", "bin/tool")
        // Parent directories this layer never describes.
        .file("usr/lib/libnew.so", b"new")
        .finish();
    let top = LayerTar::new()
        .dir("bin/", 0o755)
        .symlink("bin/busybox", "/bin/sh-is-now-a-loop")
        .dir("etc/", 0o750)
        .file_xattrs("etc/motd", b"hello\n", &[("user.layer", b"top")])
        .file("etc/remove-me", b"back again\n")
        .dir("olddir/", 0o755)
        .file_with("home/user/.profile", b"PS1=$\n", 0o644, 1000, 1000)
        .finish();
    vec![base, middle, top]
}

#[test]
fn merged_overlay_matches_umoci_unpack() {
    testkit::require!(root, tool "umoci");
    let work = tempfile::Builder::new()
        .prefix("nc-overlay-")
        .tempdir()
        .unwrap();
    let store = work.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let layers = write_oci_image(&store, "test", &generated_image());

    let dirs = ensure_layers(&ContentLayout::new(&store), &layers, &Limits::default()).unwrap();
    let merged = work.path().join("merged");
    let _mount = mount_overlay(&dirs, &merged);
    let ours = snapshot(&merged);

    let theirs = snapshot(&umoci_unpack(&store, "test", &work.path().join("bundle")));

    // Copy-up breaks hardlinks in overlayfs (without index=on): the middle layer copies
    // bin/tool up to link bin/tool-alias to it, so the base's bin/tool-hard keeps the old
    // inode. containerd's overlay snapshotter shows the same; umoci's single tree does not.
    let split = |s: &str| s.replace(" linkgroup=bin/tool", "");
    let known_split = [Path::new("bin/tool-hard")];
    let theirs: BTreeMap<PathBuf, String> = theirs
        .into_iter()
        .map(|(p, d)| {
            let d = if known_split.contains(&p.as_path()) {
                split(&d)
            } else {
                d
            };
            (p, d)
        })
        .collect();
    assert_same(&ours, &theirs);
    // The fixture really exercises the rules (guards against a vacuous comparison).
    assert!(
        ours.contains_key(Path::new("var/cache/fresh"))
            && !ours.contains_key(Path::new("var/cache/old-1"))
    );
    assert!(!ours.contains_key(Path::new("olddir/inner")));
    assert!(ours[Path::new("bin/tool-alias")].contains("linkgroup"));
    assert!(ours[Path::new("etc/motd")].contains("user.layer"));
    assert!(ours[Path::new("dev/null")].starts_with("dev c"));
}

fn assert_same(ours: &BTreeMap<PathBuf, String>, theirs: &BTreeMap<PathBuf, String>) {
    let mut diffs = Vec::new();
    for (p, d) in theirs {
        match ours.get(p) {
            Some(o) if o == d => {}
            Some(o) => diffs.push(format!("{}: ours {o} | umoci {d}", p.display())),
            None => diffs.push(format!("{}: missing in ours (umoci {d})", p.display())),
        }
    }
    for (p, o) in ours {
        if !theirs.contains_key(p) {
            diffs.push(format!("{}: extra in ours ({o})", p.display()));
        }
    }
    assert!(
        diffs.is_empty(),
        "merged tree differs from umoci:\n{}",
        diffs.join("\n")
    );
}

/// The team's generated images (`mkimage`): busybox root, generated layers, the features
/// layer (whiteouts, opaque dir, hardlinks, symlinks, fifo, char device, xattrs) and a
/// layer hardlinking into the base (gzip, and uncompressed: umoci 0.4 has no zstd, which
/// `tests/unpack.rs` covers). Hardlink groups are left out here: copy-up splits
/// them in overlayfs (see above), and the handmade image checks them exactly.
#[test]
fn mkimage_images_match_umoci_unpack() {
    testkit::require!(root, tool "umoci");
    for (preset, compression) in [("lower-hardlink", "gzip"), ("features", "none")] {
        let work = tempfile::Builder::new()
            .prefix("nc-overlay-mk-")
            .tempdir()
            .unwrap();
        let mut spec = mkimage::preset(preset).unwrap();
        spec.compression = mkimage::Compression::parse(compression).unwrap();
        let built = spec.write_layout(&work.path().join("store")).unwrap();
        let layers: Vec<LayerBlob> = built
            .image
            .layers
            .iter()
            .map(|l| LayerBlob {
                digest: l.desc.digest.parse().unwrap(),
                media_type: l.desc.media_type.clone(),
                diff_id: l.diff_id.parse().unwrap(),
            })
            .collect();
        let dirs = ensure_layers(
            &ContentLayout::new(&built.layout),
            &layers,
            &Limits::default(),
        )
        .unwrap();
        let merged = work.path().join("merged");
        let _mount = mount_overlay(&dirs, &merged);
        let strip = |m: BTreeMap<PathBuf, String>| -> BTreeMap<PathBuf, String> {
            m.into_iter()
                .map(|(p, d)| {
                    (
                        p,
                        d.split(" linkgroup=")
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        };
        let ours = strip(snapshot(&merged));
        let theirs = strip(snapshot(&umoci_unpack(
            &built.layout,
            &built.ref_name,
            &work.path().join("bundle"),
        )));
        assert!(ours.len() > 10, "{preset}: suspiciously small tree");
        assert_same(&ours, &theirs);
    }
}
