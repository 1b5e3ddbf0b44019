//! Mount verification: proof, taken from the host, that a nested container sees its
//! cache's content at the target path. nestcache looks through `/proc/<pid>/root` (the
//! container's root as its init process sees it) and checks that the directory there is
//! the content dir itself (same device and inode: a bind mount of it) and that its top
//! level entries have the same names, kinds and sizes.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// Listings can differ for a moment while something writes into the cache (a stage in
/// progress); a mismatch is only final after this many looks.
const ATTEMPTS: usize = 3;
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// What verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub pid: u32,
    /// The target path inside the container.
    pub target: PathBuf,
    /// The host content dir it must show.
    pub content_dir: PathBuf,
    /// Top level entries in the content dir.
    pub entries: usize,
    /// The directory at the target is the content dir (same device and inode).
    pub same_directory: bool,
    pub ok: bool,
    /// Why not, one item per difference.
    pub problems: Vec<String>,
}

impl Verification {
    /// One line for the user.
    pub fn summary(&self) -> String {
        if self.ok {
            format!(
                "verified: the nested container sees the cache's content dir {} at {} ({} top-level entries match)",
                self.content_dir.display(),
                self.target.display(),
                self.entries
            )
        } else {
            format!(
                "mount verification failed: {} in the nested container does not show the cache's content dir {}: {}",
                self.target.display(),
                self.content_dir.display(),
                self.problems.join("; ")
            )
        }
    }

    /// Ok when verified, else the failure as an error.
    pub fn into_result(self) -> Result<Verification> {
        if self.ok {
            Ok(self)
        } else {
            Err(Error::Invalid(self.summary()))
        }
    }
}

/// Entry kind and size: what "names and sizes" compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EntryInfo {
    kind: &'static str,
    size: u64,
}

/// Checks what process `pid` sees at `target` against `content_dir`.
pub async fn verify_mount(pid: u32, target: &Path, content_dir: &Path) -> Result<Verification> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let v = verify_once(pid, target, content_dir)?;
        if v.ok || attempt >= ATTEMPTS || !v.same_directory {
            return Ok(v);
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

fn verify_once(pid: u32, target: &Path, content_dir: &Path) -> Result<Verification> {
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    if let Err(e) = std::fs::symlink_metadata(&proc_root) {
        return Err(Error::Other(format!(
            "cannot look into the nested container through {}: {e} (nestcache must run in the same pid namespace as containerd's tasks)",
            proc_root.display()
        )));
    }
    let inside = proc_root.join(target.strip_prefix("/").unwrap_or(target));
    let mut v = Verification {
        pid,
        target: target.to_path_buf(),
        content_dir: content_dir.to_path_buf(),
        entries: 0,
        same_directory: false,
        ok: false,
        problems: Vec::new(),
    };
    let host_meta = std::fs::metadata(content_dir).map_err(|e| {
        Error::io(
            format!("stat the cache's content dir {}", content_dir.display()),
            e,
        )
    })?;
    let expected = listing(content_dir)
        .map_err(|e| Error::io(format!("list {}", content_dir.display()), e))?;
    v.entries = expected.len();
    let inside_meta = match std::fs::metadata(&inside) {
        Ok(m) => m,
        Err(e) => {
            v.problems
                .push(format!("{} is not there ({e})", target.display()));
            return Ok(v);
        }
    };
    v.same_directory = inside_meta.dev() == host_meta.dev() && inside_meta.ino() == host_meta.ino();
    if !v.same_directory {
        v.problems.push(format!(
            "it is another directory (device:inode {}:{}, expected {}:{})",
            inside_meta.dev(),
            inside_meta.ino(),
            host_meta.dev(),
            host_meta.ino()
        ));
    }
    let actual = match listing(&inside) {
        Ok(l) => l,
        Err(e) => {
            v.problems.push(format!("cannot list it ({e})"));
            return Ok(v);
        }
    };
    v.problems.extend(compare(&expected, &actual));
    v.ok = v.problems.is_empty();
    Ok(v)
}

fn listing(dir: &Path) -> std::io::Result<BTreeMap<String, EntryInfo>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "directory"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else {
            "device"
        };
        // A directory's size is file-system bookkeeping, not content.
        let size = if ft.is_file() || ft.is_symlink() {
            meta.len()
        } else {
            0
        };
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            EntryInfo { kind, size },
        );
    }
    Ok(out)
}

/// Differences, at most a few named, then a count.
fn compare(
    expected: &BTreeMap<String, EntryInfo>,
    actual: &BTreeMap<String, EntryInfo>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let missing: Vec<&str> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .map(String::as_str)
        .collect();
    let extra: Vec<&str> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .map(String::as_str)
        .collect();
    let differ: Vec<String> = expected
        .iter()
        .filter_map(|(k, e)| {
            let a = actual.get(k)?;
            (a != e).then(|| {
                format!(
                    "{k} ({} {} bytes, expected {} {} bytes)",
                    a.kind, a.size, e.kind, e.size
                )
            })
        })
        .collect();
    let few = |v: &[&str]| {
        let mut s = v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        if v.len() > 5 {
            s.push_str(&format!(" and {} more", v.len() - 5));
        }
        s
    };
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} entries missing: {}",
            missing.len(),
            expected.len(),
            few(&missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!("unexpected entries: {}", few(&extra)));
    }
    if !differ.is_empty() {
        let d: Vec<&str> = differ.iter().map(String::as_str).collect();
        problems.push(format!("entries differ: {}", few(&d)));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn own_process_sees_a_dir_through_proc_root() {
        // This process's /proc/self/root is the host root: the dir is there, the same.
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("index.json"), "{}").unwrap();
        std::fs::create_dir(t.path().join("blobs")).unwrap();
        let v = verify_mount(std::process::id(), t.path(), t.path())
            .await
            .unwrap();
        assert!(v.ok, "{:?}", v.problems);
        assert!(v.same_directory);
        assert_eq!(v.entries, 2);
        assert!(v.summary().starts_with("verified"), "{}", v.summary());
    }

    #[tokio::test]
    async fn another_directory_or_none_fails_with_reasons() {
        let t = tempfile::tempdir().unwrap();
        let (content, other) = (t.path().join("content"), t.path().join("other"));
        std::fs::create_dir_all(content.join("blobs")).unwrap();
        std::fs::write(content.join("index.json"), "{}").unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("index.json"), "{\"x\":1}").unwrap();
        std::fs::write(other.join("stray"), "").unwrap();
        let v = verify_mount(std::process::id(), &other, &content)
            .await
            .unwrap();
        assert!(!v.ok && !v.same_directory);
        let s = v.summary();
        assert!(s.contains("another directory"), "{s}");
        assert!(s.contains("missing: blobs"), "{s}");
        assert!(s.contains("unexpected entries: stray"), "{s}");
        assert!(
            s.contains("index.json (file 7 bytes, expected file 2 bytes)"),
            "{s}"
        );
        assert!(v.clone().into_result().is_err());

        let v = verify_mount(std::process::id(), &t.path().join("absent"), &content)
            .await
            .unwrap();
        assert!(!v.ok);
        assert!(v.summary().contains("is not there"), "{}", v.summary());
    }

    #[tokio::test]
    async fn a_dead_pid_is_a_clear_error() {
        let e = verify_mount(u32::MAX - 1, Path::new("/cache"), Path::new("/"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("/proc/"), "{e}");
    }
}
