//! What goes into each kind of layer. Every function returns the entries sorted by path
//! (a directory sorts before its children, a hardlink after its in-layer target).

use std::path::Path;

use crate::entry::Entry;
use crate::rng::Rng;

/// Busybox applets linked in `/bin` of the base layer.
pub const APPLETS: &[&str] = &[
    "[",
    "awk",
    "basename",
    "cat",
    "chmod",
    "chown",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "dirname",
    "du",
    "echo",
    "env",
    "false",
    "find",
    "grep",
    "head",
    "hostname",
    "id",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mount",
    "mv",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "rm",
    "sed",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "tail",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "uniq",
    "wc",
    "whoami",
    "xargs",
];

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:app:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";

pub const GROUP: &str = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n";

/// The kinds of layer an image is made of, bottom to top.
#[derive(Clone, Debug)]
pub enum LayerSpec {
    /// The busybox-static root: `/bin/busybox` + applet symlinks, `/etc/passwd`,
    /// `/etc/group`, `/tmp` (1777), `/root`, `/home/app`, and the `/opt/lower` files the
    /// features layer whites out or hardlinks to.
    Base,
    /// `files` seeded files of about `bytes` in total under `/data/L<index>/`, plus a
    /// symlink and a hardlink, and a whiteout of a file of the layer below when that is a
    /// generated layer too.
    Generated { files: u64, bytes: u64 },
    /// Whiteouts, an opaque dir, a hardlink, symlinks, a fifo, a
    /// char device, xattrs, setuid/sticky modes and several owners. Expects `Base` below.
    Features,
    /// The overlay trap alone: `/opt/upper/lower-hardlink.txt`, a hardlink to the base
    /// layer's `/opt/lower/keep.txt`. Expects `Base` (and `Features`) below. containerd's
    /// overlay snapshotter refuses such a layer (`ctr images import` fails), so presets
    /// other than `lower-hardlink` leave it out.
    LowerHardlink,
    /// One small file `/layers/<index>.txt` (for many-layer images).
    Tiny,
    /// Entries given by the caller, written as given (sort them yourself).
    Custom(Vec<Entry>),
}

/// Sorted by path bytes: "a" < "a-b" < "a/b", so parents always come first.
pub fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
    v.sort_by(|a, b| a.path.cmp(&b.path));
    v
}

pub fn base(busybox: &Path) -> Vec<Entry> {
    let mut v = vec![
        Entry::dir("bin", 0o755),
        Entry::host("bin/busybox", 0o755, busybox),
        Entry::dir("dev", 0o755),
        Entry::dir("etc", 0o755),
        Entry::file("etc/group", 0o644, GROUP),
        Entry::file("etc/hostname", 0o644, "mkimage\n"),
        Entry::file("etc/passwd", 0o644, PASSWD),
        Entry::dir("home", 0o755),
        Entry::dir("home/app", 0o755).owner(1000, 1000),
        Entry::dir("opt", 0o755),
        Entry::dir("opt/lower", 0o755),
        Entry::dir("opt/lower/gone-dir", 0o755),
        Entry::file(
            "opt/lower/gone-dir/x.txt",
            0o644,
            "in a dir the upper layer removes\n",
        ),
        Entry::file("opt/lower/gone.txt", 0o644, "whited out above\n"),
        Entry::file(
            "opt/lower/keep.txt",
            0o644,
            "lower layer file, hardlinked from above\n",
        ),
        Entry::dir("opt/lower/opaque", 0o755),
        Entry::file(
            "opt/lower/opaque/old1.txt",
            0o644,
            "hidden by an opaque dir\n",
        ),
        Entry::file(
            "opt/lower/opaque/old2.txt",
            0o644,
            "hidden by an opaque dir\n",
        ),
        Entry::dir("proc", 0o555),
        Entry::dir("root", 0o700),
        Entry::dir("sys", 0o555),
        Entry::dir("tmp", 0o1777),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::symlink("usr/bin/env", "/bin/busybox"),
        Entry::dir("var", 0o755),
    ];
    for a in APPLETS {
        v.push(Entry::symlink(&format!("bin/{a}"), "busybox"));
    }
    sorted(v)
}

/// Directory of generated layer `index`.
pub fn generated_dir(index: usize) -> String {
    format!("data/L{index:03}")
}

/// Path of file `n` of generated layer `index` (100 files per directory).
pub fn generated_file(index: usize, n: u64) -> String {
    format!("{}/d{:04}/f{n:06}.bin", generated_dir(index), n / 100)
}

pub fn generated(
    seed: u64,
    index: usize,
    files: u64,
    bytes: u64,
    below_generated: Option<usize>,
) -> Vec<Entry> {
    let mut rng = Rng::new(seed ^ 0x6e65_7374 ^ index as u64);
    let dir = generated_dir(index);
    let mean = (bytes / files.max(1)).max(1);
    let mut v = vec![Entry::dir("data", 0o755), Entry::dir(&dir, 0o755)];
    for n in 0..files {
        if n % 100 == 0 {
            v.push(Entry::dir(&format!("{dir}/d{:04}", n / 100), 0o755));
        }
        let len = mean / 2 + rng.below(mean + 1);
        v.push(Entry::generated(
            &generated_file(index, n),
            0o644,
            rng.next_u64(),
            len,
        ));
    }
    if files > 0 {
        let first = generated_file(index, 0);
        v.push(Entry::hardlink(&format!("{dir}/hardlink.bin"), &first));
        v.push(Entry::symlink(
            &format!("{dir}/latest"),
            "d0000/f000000.bin",
        ));
    }
    if let Some(lower) = below_generated {
        // Remove the second file of the generated layer below (if it had one).
        let ldir = generated_dir(lower);
        v.push(Entry::dir(&ldir, 0o755));
        v.push(Entry::dir(&format!("{ldir}/d0000"), 0o755));
        v.push(Entry::file(
            &format!("{ldir}/d0000/.wh.f000001.bin"),
            0o644,
            "",
        ));
    }
    sorted(v)
}

pub fn features(image_name: &str) -> Vec<Entry> {
    let v = vec![
        Entry::dir("etc", 0o755),
        Entry::file("etc/mkimage-release", 0o644, format!("name={image_name}\n")),
        Entry::dir("opt", 0o755),
        Entry::dir("opt/lower", 0o755),
        // Whiteouts: a file and a whole directory of the base layer.
        Entry::file("opt/lower/.wh.gone.txt", 0o644, ""),
        Entry::file("opt/lower/.wh.gone-dir", 0o644, ""),
        // Opaque: the base layer's opaque/old*.txt vanish, new.txt stays.
        Entry::dir("opt/lower/opaque", 0o755),
        Entry::file("opt/lower/opaque/.wh..wh..opq", 0o644, ""),
        Entry::file(
            "opt/lower/opaque/new.txt",
            0o644,
            "only file left in the opaque dir\n",
        ),
        Entry::dir("opt/upper", 0o755),
        Entry::symlink("opt/upper/abs-symlink", "/opt/lower/keep.txt"),
        Entry::file(
            "opt/upper/file.txt",
            0o644,
            "upper file, hardlinked in this layer\n",
        ),
        Entry::hardlink("opt/upper/hardlink.txt", "opt/upper/file.txt"),
        Entry::fifo("opt/upper/fifo", 0o644),
        Entry::char_device("opt/upper/null", 0o666, 1, 3),
        Entry::file("opt/upper/owned-app.txt", 0o640, "owned by app\n").owner(1000, 1000),
        Entry::file("opt/upper/owned-nobody.txt", 0o600, "owned by nobody\n").owner(65534, 65534),
        Entry::file("opt/upper/setuid", 0o4755, "#!/bin/sh\nid -u\n"),
        Entry::file("opt/upper/setgid", 0o2755, "#!/bin/sh\nid -g\n").owner(0, 1000),
        Entry::dir("opt/upper/sticky", 0o1777),
        Entry::symlink("opt/upper/symlink", "file.txt"),
        Entry::symlink("opt/upper/dangling", "does-not-exist"),
        Entry::file("opt/upper/xattr.txt", 0o644, "has user xattrs\n")
            .xattr("user.mkimage.note", b"hello xattr")
            .xattr("user.mkimage.empty", b""),
    ];
    sorted(v)
}

pub fn lower_hardlink() -> Vec<Entry> {
    vec![
        Entry::dir("opt", 0o755),
        Entry::dir("opt/upper", 0o755),
        Entry::hardlink("opt/upper/lower-hardlink.txt", "opt/lower/keep.txt"),
    ]
}

pub fn tiny(index: usize) -> Vec<Entry> {
    vec![
        Entry::dir("layers", 0o755),
        Entry::file(
            &format!("layers/{index:04}.txt"),
            0o644,
            format!("layer {index}\n"),
        ),
    ]
}

/// The only layer of the second platform's image in a two-platform index.
pub fn platform_stub(platform: &str) -> Vec<Entry> {
    vec![
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/mkimage-release",
            0o644,
            format!("platform={platform}\n"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Kind;

    fn check_order(v: &[Entry]) {
        for (i, e) in v.iter().enumerate() {
            if let Kind::Hardlink(t) = &e.kind {
                if let Some(j) = v.iter().position(|x| &x.path == t) {
                    assert!(j < i, "{} before its target {t}", e.path);
                }
            }
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                let p = v.iter().position(|x| x.path == parent);
                assert!(p.is_some_and(|p| p < i), "{} before its parent", e.path);
            }
        }
    }

    #[test]
    fn entries_are_ordered() {
        check_order(&base(Path::new("/bin/busybox")));
        check_order(&generated(1, 2, 250, 10_000, Some(1)));
        check_order(&features("x"));
        check_order(&tiny(3));
    }
}
