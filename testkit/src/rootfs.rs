//! A busybox-static root laid out on disk, and a nestcache store holding it as a staged,
//! extracted one-layer image (built with umoci), for the shim's and run's tests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: apt-get install busybox-static (scripts/install-deps.sh does)")
}

/// Lays out a busybox-static root: /bin/busybox + applets, and the dirs runc mounts on.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs dir");
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "false", "ls", "ps", "id", "tty", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
}

/// A nestcache store holding `ref_name`: a one-layer busybox image (built with umoci),
/// staged and extracted. Returns the image's manifest digest.
pub fn store_with_busybox(work: &Path, store: &Path, ref_name: &str) -> String {
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("etc/nestcache-test"), format!("{ref_name}\n")).expect("marker");
    let layout = work.join("layout");
    let layer = work.join("layer.tar");
    let image = format!("{}:{ref_name}", layout.display());
    let sh = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps.sh installs it)", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&["umoci", "init", "--layout", layout.to_str().unwrap()]);
    sh(&["umoci", "new", "--image", &image]);
    sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap(),
        "-cf",
        layer.to_str().unwrap(),
        ".",
    ]);
    sh(&[
        "umoci",
        "raw",
        "add-layer",
        "--image",
        &image,
        layer.to_str().unwrap(),
    ]);
    sh(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]);
    let st = nestcache::store::Store::open(store).expect("open store");
    let source = nestcache::source::parse(&format!("oci:{image}")).expect("parse source");
    let report = nestcache::stage::stage(&st, &*source, &Default::default()).expect("stage");
    report.manifest_digest
}
