//! Small file-system helpers that several modules need with the same guarantees, written
//! once: durable atomic replacement of a small file, fsync of a directory, and random hex.
//! They return `io::Result` so that each caller wraps the failure in its own error.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

/// Replaces `path` with `data`, durably: a temp file in `tmp_dir` (on the same file
/// system as `path`) is written and fsynced, renamed over `path`, and `path`'s directory
/// is fsynced, so a crash leaves the old content or the new, never a mix, and the new
/// content survives once this returns. An existing file's permissions are kept.
pub fn write_atomic_via(tmp_dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)?;
    tmp.write_all(data)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`write_atomic_via`] with the temp file beside `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_via(path.parent().unwrap_or(Path::new(".")), path, data)
}

/// fsyncs a directory, so that a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `bytes` random bytes from the kernel, as 2×`bytes` lowercase hex digits.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_keeping_the_mode_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        assert!(write_atomic(&t.path().join("no/such/dir/f"), b"x").is_err());
    }

    #[test]
    fn random_hex_has_the_length_asked_and_differs() {
        let a = random_hex(6).unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(6).unwrap());
    }
}
