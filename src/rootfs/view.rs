//! Reading one file of an image from its extracted layers without mounting them: the
//! union view overlayfs would give, resolved top-down (whiteouts, opaque dirs, symlinks
//! resolved inside the image, never on the host). Used to read the image's /etc/passwd and
//! /etc/group.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Symlinks followed before giving up, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

/// Extracted layer dirs, bottom → top.
#[derive(Debug, Clone)]
pub struct LayerStack {
    layers: Vec<PathBuf>,
}

/// What a path is in the union view.
enum Entry {
    /// Found in a layer: its host path and metadata (not followed).
    Found(PathBuf, std::fs::Metadata),
    /// Absent, whited out, or hidden by an opaque dir or a non-dir above it.
    Absent,
}

impl LayerStack {
    pub fn new(layers_bottom_to_top: Vec<PathBuf>) -> Self {
        LayerStack {
            layers: layers_bottom_to_top,
        }
    }

    /// The content of the regular file at `path` (absolute, inside the image), `None`
    /// when the image has no such file. Larger than `limit` bytes is an error.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(host) = self.resolve(path)? else {
            return Ok(None);
        };
        let f = std::fs::File::open(&host).ctx(|| format!("open {}", host.display()))?;
        let mut buf = Vec::new();
        f.take(limit + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("read {}", host.display()))?;
        if buf.len() as u64 > limit {
            return Err(Error::Invalid(format!(
                "{path} in the image ({}) is larger than {limit} bytes",
                host.display()
            )));
        }
        Ok(Some(buf))
    }

    /// The host path of the regular file at `path` in the union view, following symlinks
    /// inside the image; `None` if absent or not a regular file.
    pub fn resolve(&self, path: &str) -> Result<Option<PathBuf>> {
        let mut pending: VecDeque<OsString> = components(Path::new(path));
        let mut current: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(c) = pending.pop_front() {
            if c == ".." {
                current.pop();
                continue;
            }
            current.push(c);
            let (host, meta) = match self.entry(&current)? {
                Entry::Absent => return Ok(None),
                Entry::Found(h, m) => (h, m),
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::Invalid(format!(
                        "{path} in the image: too many levels of symbolic links"
                    )));
                }
                let target =
                    std::fs::read_link(&host).ctx(|| format!("readlink {}", host.display()))?;
                current.pop();
                if target.is_absolute() {
                    current.clear();
                }
                let mut rest = components(&target);
                rest.extend(pending);
                pending = rest;
            } else if pending.is_empty() {
                return Ok(ft.is_file().then_some(host));
            } else if !ft.is_dir() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The top-most layer's entry for `path` (components from the root), not followed.
    fn entry(&self, path: &[OsString]) -> Result<Entry> {
        for layer in self.layers.iter().rev() {
            let mut dir = layer.clone();
            for (i, name) in path.iter().enumerate() {
                if is_file_whiteout(&dir, name) {
                    return Ok(Entry::Absent);
                }
                let p = dir.join(name);
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if is_whiteout_device(&m) => return Ok(Entry::Absent),
                    Ok(m) if i + 1 == path.len() => return Ok(Entry::Found(p, m)),
                    // A non-directory here hides whatever lower layers have beneath.
                    Ok(m) if !m.is_dir() => return Ok(Entry::Absent),
                    Ok(_) => dir = p,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // Not in this layer; an opaque dir on the way hides the lower ones.
                        if i > 0 && is_opaque(&dir) {
                            return Ok(Entry::Absent);
                        }
                        break;
                    }
                    Err(e) => return Err(Error::io(format!("stat {}", p.display()), e)),
                }
            }
        }
        Ok(Entry::Absent)
    }
}

/// Normal components of a path; `..` is kept (resolved against the image's root, which it
/// cannot leave), `.` and the root are dropped.
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// overlayfs's whiteout: a character device 0:0.
fn is_whiteout_device(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// An OCI `.wh.<name>` whiteout left as a file (an unpacker that keeps the tar form).
fn is_file_whiteout(dir: &Path, name: &OsStr) -> bool {
    let mut wh = OsString::from(".wh.");
    wh.push(name);
    dir.join(wh).symlink_metadata().is_ok()
}

/// An opaque dir: overlayfs's xattr, or the OCI `.wh..wh..opq` marker.
fn is_opaque(dir: &Path) -> bool {
    if dir.join(".wh..wh..opq").symlink_metadata().is_ok() {
        return true;
    }
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 2];
    // SAFETY: both pointers are valid NUL-terminated strings and the buffer is as long as
    // the size passed.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    n == 1 && value[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn whiteout(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
    }

    fn read(s: &LayerStack, p: &str) -> Option<String> {
        s.read_file(p, 1 << 20)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn top_layer_wins_and_lower_shows_through() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("0"), t.path().join("1"));
        write(&l0.join("etc/passwd"), "lower");
        write(&l0.join("etc/group"), "lower-group");
        write(&l1.join("etc/passwd"), "upper");
        let s = LayerStack::new(vec![l0, l1]);
        assert_eq!(read(&s, "/etc/passwd").as_deref(), Some("upper"));
        assert_eq!(read(&s, "/etc/group").as_deref(), Some("lower-group"));
        assert_eq!(read(&s, "/etc/shadow"), None);
        assert_eq!(read(&s, "/etc"), None, "a directory is not a file");
    }

    #[test]
    fn whiteouts_hide_lower_files_and_dirs() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1, l2) = (t.path().join("0"), t.path().join("1"), t.path().join("2"));
        write(&l0.join("etc/passwd"), "lower");
        write(&l0.join("etc/group"), "lower");
        write(&l0.join("opt/x/file"), "x");
        whiteout(&l1.join("etc/passwd"));
        write(&l1.join(".wh.opt"), "");
        let s = LayerStack::new(vec![l0.clone(), l1.clone()]);
        assert_eq!(read(&s, "/etc/passwd"), None);
        assert_eq!(read(&s, "/etc/group").as_deref(), Some("lower"));
        assert_eq!(read(&s, "/opt/x/file"), None);
        // A later layer re-creating it wins over the whiteout.
        write(&l2.join("etc/passwd"), "again");
        let s = LayerStack::new(vec![l0, l1, l2]);
        assert_eq!(read(&s, "/etc/passwd").as_deref(), Some("again"));
    }

    #[test]
    fn opaque_dir_hides_lower_contents() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("0"), t.path().join("1"));
        write(&l0.join("etc/passwd"), "lower");
        write(&l0.join("etc/group"), "lower");
        write(&l1.join("etc/group"), "upper");
        write(&l1.join("etc/.wh..wh..opq"), "");
        let s = LayerStack::new(vec![l0.clone(), l1.clone()]);
        assert_eq!(read(&s, "/etc/passwd"), None);
        assert_eq!(read(&s, "/etc/group").as_deref(), Some("upper"));
        // The xattr form, as overlayfs itself marks it (needs root; skipped otherwise).
        std::fs::remove_file(l1.join("etc/.wh..wh..opq")).unwrap();
        let c = std::ffi::CString::new(l1.join("etc").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings and buffer.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                c"trusted.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        if rc == 0 {
            assert_eq!(read(&s, "/etc/passwd"), None);
        }
    }

    #[test]
    fn a_file_above_hides_a_lower_dir() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("0"), t.path().join("1"));
        write(&l0.join("etc/passwd"), "lower");
        write(&l1.join("etc"), "now a file");
        let s = LayerStack::new(vec![l0, l1]);
        assert_eq!(read(&s, "/etc/passwd"), None);
    }

    #[test]
    fn symlinks_resolve_inside_the_image_never_the_host() {
        let t = tempfile::tempdir().unwrap();
        let (l0, l1) = (t.path().join("0"), t.path().join("1"));
        write(&l0.join("data/passwd.real"), "image");
        std::fs::create_dir_all(l1.join("etc")).unwrap();
        symlink("../data/passwd.real", l1.join("etc/passwd")).unwrap();
        // Absolute links and `..` past the root stay inside the image.
        symlink("/../../../../data/passwd.real", l1.join("etc/group")).unwrap();
        // A link to a host file the image lacks must not read the host's.
        symlink("/etc/hostname", l1.join("etc/hosts")).unwrap();
        symlink("loop", l1.join("etc/loop")).unwrap();
        let s = LayerStack::new(vec![l0, l1]);
        assert_eq!(read(&s, "/etc/passwd").as_deref(), Some("image"));
        assert_eq!(read(&s, "/etc/group").as_deref(), Some("image"));
        assert_eq!(read(&s, "/etc/hosts"), None);
        assert!(s.read_file("/etc/loop", 100).is_err());
    }

    #[test]
    fn dir_symlink_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        let l0 = t.path().join("0");
        write(&l0.join("private/etc/passwd"), "p");
        symlink("private/etc", l0.join("etc")).unwrap();
        let s = LayerStack::new(vec![l0]);
        assert_eq!(read(&s, "/etc/passwd").as_deref(), Some("p"));
    }

    #[test]
    fn size_limit() {
        let t = tempfile::tempdir().unwrap();
        let l0 = t.path().join("0");
        write(&l0.join("etc/passwd"), &"x".repeat(100));
        let s = LayerStack::new(vec![l0]);
        let e = s.read_file("/etc/passwd", 10).unwrap_err().to_string();
        assert!(e.contains("larger than 10 bytes"), "{e}");
    }
}
