//! Verified ingest: a blob streams from any `Read` through sha256 and a byte count into a
//! temp file in `ingest/`; only when digest and size match is it fsynced and renamed into
//! `blobs/sha256/<hex>`. The declared size is only ever an upper bound to stop at — never
//! preallocated or trusted — so a lying descriptor cannot make the store grow past it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{sync_dir, Store};
use crate::digest::{hash_reader, Digest, Hasher};
use crate::error::{Error, IoContext, Result};

/// Read/write chunk; big enough that syscalls don't dominate, small enough to stay flat.
const CHUNK: usize = 1 << 20;

/// Bytes written between two write-back kicks (see [`start_write_back`]).
const WRITE_BACK_EVERY: u64 = 8 << 20;

/// Asks the kernel to start writing `[from, to)` of `file` to disk now, without waiting:
/// the disk then works while the next chunks are read and hashed, and the fsync at the
/// end waits for the tail only instead of the whole blob (dpkg does the same). A failure
/// here is harmless; the fsync decides.
fn start_write_back(file: &File, from: u64, to: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain syscall on an fd we own; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// What one ingest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingested {
    pub bytes: u64,
}

impl Store {
    /// Streams `reader` into the store as blob `expected` of exactly `size` bytes. Refuses
    /// as soon as more than `size` bytes arrive; a short or wrong stream is refused at the
    /// end. On any failure the temp file is removed and nothing appears in `blobs/`.
    /// `progress` is called with the byte count of each chunk written.
    pub fn ingest(
        &self,
        what: &str,
        expected: &Digest,
        size: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Ingested> {
        let tmp_path = unique_temp_path(&self.layout().ingest_dir(), expected.hex());
        let mut tmp = TempFile::create(&tmp_path)?;
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut kicked = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read {what} {expected}"), e)),
            };
            if hasher.len() + n as u64 > size {
                return Err(Error::Invalid(format!(
                    "{what} {expected}: source sent more than the {size} bytes its descriptor declares"
                )));
            }
            hasher.update(&buf[..n]);
            tmp.file()
                .write_all(&buf[..n])
                .ctx(|| format!("write {} (ingesting {what} {expected})", tmp_path.display()))?;
            if hasher.len() - kicked >= WRITE_BACK_EVERY {
                start_write_back(tmp.file(), kicked, hasher.len());
                kicked = hasher.len();
            }
            progress(n as u64);
        }
        let (actual, actual_size) = hasher.finish();
        if actual != *expected || actual_size != size {
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                expected_size: size,
                actual: actual.to_string(),
                actual_size,
            });
        }
        tmp.file()
            .sync_all()
            .ctx(|| format!("fsync {} (ingesting {what} {expected})", tmp_path.display()))?;
        tmp.persist(&self.layout().blob(expected))?;
        sync_dir(&self.layout().blobs_dir())?;
        Ok(Ingested { bytes: size })
    }

    /// Ingests a document held in memory (manifest, config) whose digest is `expected`.
    pub fn ingest_bytes(&self, what: &str, expected: &Digest, data: &[u8]) -> Result<Ingested> {
        self.ingest(
            what,
            expected,
            data.len() as u64,
            &mut &data[..],
            &mut |_| {},
        )
    }

    /// Re-hashes a present blob; Ok(false) when it is missing, the wrong size or corrupt.
    pub fn verify_blob(&self, digest: &Digest, size: u64) -> Result<bool> {
        let mut file = match self.open_blob(digest) {
            Ok(f) => f,
            Err(Error::NotFound(_)) | Err(Error::Invalid(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let (actual, actual_size) = hash_reader(&mut file)
            .ctx(|| format!("read {}", self.layout().blob(digest).display()))?;
        Ok(actual == *digest && actual_size == size)
    }
}

/// A temp path unique across processes and threads: pid + a process-wide counter, and
/// `create_new` refuses any leftover of a dead process that had the same pid.
pub(crate) fn unique_temp_path(dir: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{}-{n}-{nanos}-{tag}.tmp", std::process::id()))
}

/// A temp file removed on drop unless persisted by rename.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    pub(crate) fn create(path: &Path) -> Result<TempFile> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .ctx(|| format!("create {}", path.display()))?;
        Ok(TempFile {
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file
            .as_mut()
            .unwrap_or_else(|| unreachable!("file taken only by persist, which consumes self"))
    }

    /// Renames over `dest` (atomic; an identical blob written concurrently is replaced by
    /// identical bytes).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        self.file.take();
        let res = fs::rename(&self.path, dest)
            .ctx(|| format!("rename {} to {}", self.path.display(), dest.display()));
        if res.is_ok() {
            self.path = PathBuf::new();
        }
        res
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        (tmp, s)
    }

    fn ingest_dir_is_empty(s: &Store) -> bool {
        fs::read_dir(s.layout().ingest_dir())
            .unwrap()
            .next()
            .is_none()
    }

    #[test]
    fn ingests_and_verifies() {
        let (_t, s) = store();
        let d = Digest::of(b"hello");
        s.ingest_bytes("blob", &d, b"hello").unwrap();
        assert!(s.has_blob(&d));
        assert!(s.verify_blob(&d, 5).unwrap());
        assert!(ingest_dir_is_empty(&s));
    }

    #[test]
    fn wrong_digest_wrong_size_and_overflow_leave_nothing() {
        let (_t, s) = store();
        let d = Digest::of(b"hello");
        let err = s
            .ingest_bytes("layer", &d, b"hellO")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected") && err.contains(&d.to_string()),
            "{err}"
        );
        let err = s
            .ingest("layer", &d, 4, &mut &b"hello"[..], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than the 4 bytes"), "{err}");
        let err = s
            .ingest("layer", &d, 6, &mut &b"hello"[..], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 bytes") && err.contains("5 bytes"), "{err}");
        // A huge declared size is only a bound: a short stream is refused, nothing allocated.
        let err = s
            .ingest("layer", &d, u64::MAX, &mut &b"hello"[..], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(!s.has_blob(&d));
        assert!(ingest_dir_is_empty(&s));
    }
}
