//! mkimage's outputs checked by the tools users trust: skopeo, umoci and containerd's
//! `ctr images import`.

use std::fs;
use std::os::linux::fs::MetadataExt as _;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Command;

use mkimage::{preset, Compression, ImageSpec};
use sha2::{Digest as _, Sha256};

fn run(cmd: &mut Command) -> String {
    testkit::stdout(&testkit::run_ok(cmd))
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not json ({e}): {s}"))
}

fn file_sha(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

fn skopeo_inspect(args: &[&str]) -> serde_json::Value {
    json(&run(Command::new("skopeo").arg("inspect").args(args)))
}

#[test]
fn same_spec_gives_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for n in ["a", "b"] {
        let dir = t.path().join(n);
        let spec = preset("features").unwrap();
        let built = spec.write_layout(&dir.join("layout")).unwrap();
        mkimage::write_oci_archive(&built.layout, &dir.join("oci.tar")).unwrap();
        mkimage::write_docker_archive(&built, &dir.join("docker.tar")).unwrap();
        digests.push((
            built.top.digest.clone(),
            file_sha(&dir.join("oci.tar")),
            file_sha(&dir.join("docker.tar")),
        ));
    }
    assert_eq!(digests[0], digests[1]);
    // A different seed changes the generated layer.
    let mut spec = preset("features").unwrap();
    spec.seed = 2;
    let other = spec.write_layout(&t.path().join("c")).unwrap();
    assert_ne!(other.top.digest, digests[0].0);
}

#[test]
fn skopeo_reads_layout_and_archives_with_the_config() {
    testkit::require!(tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let mut spec = preset("features").unwrap();
    spec.ref_name = "v1".into();
    spec.repo_tag = "example/features:v1".into();
    spec.config.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
    spec.config.cmd = Some(vec!["id -u".into()]);
    spec.config.user = Some("app".into());
    spec.config.working_dir = Some("/home/app".into());
    spec.config.env.push("GREETING=hello".into());
    spec.config
        .labels
        .insert("org.example.k".into(), "v".into());
    let layout = t.path().join("layout");
    let built = spec.write_layout(&layout).unwrap();
    let oci = format!("oci:{}:v1", layout.display());

    let v = skopeo_inspect(&[&oci]);
    assert_eq!(v["Digest"], built.image.manifest.digest.as_str());
    let layers: Vec<&str> = built
        .image
        .layers
        .iter()
        .map(|l| l.desc.digest.as_str())
        .collect();
    assert_eq!(v["Layers"], serde_json::json!(layers));
    assert_eq!(v["Labels"]["org.example.k"], "v");

    let cfg = skopeo_inspect(&["--config", &oci]);
    assert_eq!(cfg["config"]["User"], "app");
    assert_eq!(cfg["config"]["WorkingDir"], "/home/app");
    assert_eq!(
        cfg["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c"])
    );
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["id -u"]));
    assert!(cfg["config"]["Env"].to_string().contains("GREETING=hello"));
    let diff_ids: Vec<&str> = built
        .image
        .layers
        .iter()
        .map(|l| l.diff_id.as_str())
        .collect();
    assert_eq!(cfg["rootfs"]["diff_ids"], serde_json::json!(diff_ids));

    let oci_tar = t.path().join("img.oci.tar");
    mkimage::write_oci_archive(&layout, &oci_tar).unwrap();
    let v = skopeo_inspect(&[&format!("oci-archive:{}:v1", oci_tar.display())]);
    assert_eq!(v["Digest"], built.image.manifest.digest.as_str());

    // docker-archive layers are the uncompressed tars: skopeo names them by diff_id.
    let docker_tar = t.path().join("img.docker.tar");
    mkimage::write_docker_archive(&built, &docker_tar).unwrap();
    let v = skopeo_inspect(&[&format!("docker-archive:{}", docker_tar.display())]);
    assert_eq!(v["Layers"], serde_json::json!(diff_ids));
    let mut ar = tar::Archive::new(fs::File::open(&docker_tar).unwrap());
    let mut manifest = None;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_str() == Some("manifest.json") {
            manifest = Some(serde_json::from_reader::<_, serde_json::Value>(e).unwrap());
        }
    }
    let manifest = manifest.expect("manifest.json in the docker-archive");
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["example/features:v1"])
    );
    assert_eq!(
        manifest[0]["Config"],
        format!("{}.json", built.image.config.hex())
    );
}

#[test]
fn umoci_unpacks_every_feature() {
    testkit::require!(tool "umoci", tool "python3");
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    preset("lower-hardlink")
        .unwrap()
        .write_layout(&layout)
        .unwrap();
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:lower-hardlink", layout.display()))
        .arg(&bundle));
    let r = bundle.join("rootfs");
    let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // busybox root
    assert_eq!(
        fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        meta("bin/busybox").len(),
        fs::metadata("/bin/busybox").unwrap().len()
    );
    assert!(fs::read_to_string(r.join("etc/passwd"))
        .unwrap()
        .contains("app:x:1000:1000:"));
    assert_eq!(meta("tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(meta("home/app").st_uid(), 1000);
    // whiteouts and the opaque dir
    assert!(!r.join("opt/lower/gone.txt").exists());
    assert!(!r.join("opt/lower/gone-dir").exists());
    assert!(r.join("opt/lower/keep.txt").exists());
    let opaque: Vec<_> = fs::read_dir(r.join("opt/lower/opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opaque, vec!["new.txt"]);
    // generated layers: second file of L001 stays (nothing generated above it here)
    assert!(r.join("data/L001/d0000/f000001.bin").exists());
    assert_eq!(
        meta("data/L001/hardlink.bin").st_ino(),
        meta("data/L001/d0000/f000000.bin").st_ino()
    );
    // links, special files, modes, owners, xattrs
    let up = |p: &str| format!("opt/upper/{p}");
    assert_eq!(
        meta(&up("hardlink.txt")).st_ino(),
        meta(&up("file.txt")).st_ino()
    );
    assert_eq!(
        fs::read(r.join(up("lower-hardlink.txt"))).unwrap(),
        fs::read(r.join("opt/lower/keep.txt")).unwrap()
    );
    assert_eq!(
        fs::read_link(r.join(up("symlink"))).unwrap(),
        Path::new("file.txt")
    );
    assert!(meta(&up("fifo")).file_type().is_fifo());
    assert!(meta(&up("null")).file_type().is_char_device());
    assert_eq!(meta(&up("null")).st_rdev(), libc_makedev(1, 3));
    assert_eq!(meta(&up("setuid")).permissions().mode() & 0o7777, 0o4755);
    assert_eq!(meta(&up("setgid")).permissions().mode() & 0o7777, 0o2755);
    assert_eq!(meta(&up("sticky")).permissions().mode() & 0o7777, 0o1777);
    assert_eq!(
        (
            meta(&up("owned-app.txt")).st_uid(),
            meta(&up("owned-app.txt")).st_gid()
        ),
        (1000, 1000)
    );
    assert_eq!(meta(&up("owned-nobody.txt")).st_uid(), 65534);
    let xattr = Command::new("python3")
        .arg("-c")
        .arg("import os,sys; print(os.getxattr(sys.argv[1], 'user.mkimage.note').decode())")
        .arg(r.join(up("xattr.txt")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&xattr.stdout).trim(), "hello xattr");
    assert_eq!(
        fs::read_to_string(r.join("etc/mkimage-release")).unwrap(),
        "name=lower-hardlink\n"
    );
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

#[test]
fn compressions_and_platforms() {
    testkit::require!(tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    for (c, mt) in [
        (Compression::None, "application/vnd.oci.image.layer.v1.tar"),
        (
            Compression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ] {
        let mut spec = preset("features").unwrap();
        spec.compression = c;
        let layout = t.path().join(mt.rsplit('.').next().unwrap());
        let built = spec.write_layout(&layout).unwrap();
        let raw = json(&run(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:features", layout.display()))));
        for l in raw["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], mt);
        }
        if c == Compression::None {
            for l in &built.image.layers {
                assert_eq!(l.desc.digest, l.diff_id);
            }
        }
    }

    let mut spec: ImageSpec = preset("small").unwrap();
    spec.multi_platform = true;
    spec.platform = mkimage::Platform::parse("linux/amd64").unwrap();
    let layout = t.path().join("multi");
    let built = spec.write_layout(&layout).unwrap();
    let oci = format!("oci:{}:small", layout.display());
    let raw = json(&run(Command::new("skopeo").args(["inspect", "--raw", &oci])));
    assert_eq!(raw["mediaType"], mkimage::MT_INDEX);
    let plats: Vec<String> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(plats, ["linux/amd64", "linux/arm64"]);
    let arm = skopeo_inspect(&["--override-arch", "arm64", &oci]);
    assert_eq!(arm["Architecture"], "arm64");
    let other = built.other.as_ref().unwrap();
    assert_eq!(arm["Layers"][0], other.layers[0].desc.digest.as_str());
    let amd = skopeo_inspect(&["--override-arch", "amd64", &oci]);
    assert_eq!(amd["Architecture"], "amd64");
    assert_eq!(amd["Layers"][0], built.image.layers[0].desc.digest.as_str());

    let many = preset("many-layers")
        .unwrap()
        .write_layout(&t.path().join("many"))
        .unwrap();
    assert_eq!(many.image.layers.len(), 120);
}

/// containerd must accept the archives as they are (the benchmark's peer imports them).
#[test]
fn ctr_imports_the_archives() {
    testkit::require!(containerd, tool "ctr");
    let address = testkit::containerd_address();
    let t = tempfile::tempdir().unwrap();
    let ns = testkit::unique("mkimage-test");
    let mut spec = preset("features").unwrap();
    spec.ref_name = format!("docker.io/mkimage/{ns}:oci");
    spec.repo_tag = format!("docker.io/mkimage/{ns}:docker");
    spec.multi_platform = true;
    let built = spec.write_layout(&t.path().join("layout")).unwrap();
    let oci_tar = t.path().join("oci.tar");
    let docker_tar = t.path().join("docker.tar");
    mkimage::write_oci_archive(&built.layout, &oci_tar).unwrap();
    mkimage::write_docker_archive(&built, &docker_tar).unwrap();
    let ctr = || {
        let mut c = Command::new("ctr");
        c.args(["--address", &address, "-n", &ns]);
        c
    };
    run(ctr().args(["images", "import"]).arg(&oci_tar));
    run(ctr().args(["images", "import"]).arg(&docker_tar));
    let list = run(ctr().args(["images", "ls", "-q"]));
    for r in [&spec.ref_name, &spec.repo_tag] {
        assert!(list.lines().any(|l| l == r.as_str()), "{r} not in {list}");
    }
    let check = run(ctr().args(["images", "check"]));
    assert!(check.contains("complete"), "{check}");
    run(ctr().args(["images", "rm", &spec.ref_name, &spec.repo_tag]));
}
