//! Verified ingest: a blob streams from any `Read` through sha256 and a byte count into its
//! temp file `ingest/<hex>.tmp` (locked by its writer, see [`super::temp`]); only when
//! digest and size match is it fsynced and renamed into `blobs/sha256/<hex>`. The declared size is only ever an upper bound to stop at — never
//! preallocated or trusted — so a lying descriptor cannot make the store grow past it.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{sync_dir, temp, Store, StoreError};
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
    /// Bytes received from the source and written by this call.
    pub bytes: u64,
    /// Bytes of a dead stager's partial ingest that were re-hashed and kept.
    pub resumed_from: u64,
    /// Another stager wrote the blob while this one waited for it: nothing was written.
    pub by_other: bool,
}

/// What to do with a blob of the right size already in `blobs/` when the ingest starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Present {
    /// Trust it (it was verified when it was ingested): write nothing.
    Reuse,
    /// It failed verification: replace it.
    Replace,
}

/// Opens a blob's byte stream from an offset (0 for the whole blob).
pub type Opener<'a, 'r> = dyn FnMut(u64) -> Result<Box<dyn Read + 'r>> + 'a;

/// Refuses a declared size above `limit` before anything is read.
pub fn check_declared_size(what: &str, digest: &Digest, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(StoreError::BlobTooLarge {
            what: what.to_string(),
            digest: digest.clone(),
            size,
            limit,
        }
        .into());
    }
    Ok(())
}

impl Store {
    /// Streams `reader` into the store as blob `expected` of exactly `size` bytes (see
    /// [`Store::ingest_from`]; a partial ingest is resumed by skipping that many bytes
    /// of `reader`, which cannot be restarted).
    pub fn ingest(
        &self,
        what: &str,
        expected: &Digest,
        size: u64,
        reader: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Ingested> {
        let mut reader = Some(reader);
        self.ingest_from(
            what,
            expected,
            size,
            Present::Reuse,
            &mut |offset| {
                let r = reader.take().ok_or_else(|| {
                    Error::Other(format!("{what} {expected}: the stream cannot be restarted"))
                })?;
                let skipped = std::io::copy(&mut r.take(offset), &mut std::io::sink())
                    .map_err(|e| Error::io(format!("read {what} {expected}"), e))?;
                if skipped != offset {
                    return Err(Error::Other(format!(
                        "{what} {expected}: the stream ends at byte {skipped}, before the {offset} bytes already ingested"
                    )));
                }
                Ok(Box::new(r))
            },
            progress,
        )
    }

    /// Streams blob `expected` of exactly `size` bytes into the store: [`Store::claim`],
    /// then [`BlobClaim::write`] and [`BlobClaim::publish`]. One ingest per digest at a
    /// time; a second stager of the same blob waits and then reuses the blob the first one
    /// verified. On any failure the temp file is removed and nothing appears in `blobs/`.
    /// `progress` is called with the byte count of each chunk written.
    pub fn ingest_from(
        &self,
        what: &str,
        expected: &Digest,
        size: u64,
        present: Present,
        open: &mut Opener<'_, '_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Ingested> {
        let mut claim = self.claim(what, expected, size, present)?;
        if claim.by_other() {
            return Ok(Ingested {
                bytes: 0,
                resumed_from: 0,
                by_other: true,
            });
        }
        let got = claim.write(open, progress, &mut NoTee)?;
        claim.publish()?;
        Ok(got)
    }

    /// Takes blob `expected`'s ingest lock: its temp file `ingest/<hex>.tmp` is held by an
    /// flock until the claim is dropped, so a second stager of the same blob waits here,
    /// and then finds the blob the first one published ([`BlobClaim::by_other`]: any blob
    /// of the right size found once the lock is held is, unless `present` says it is
    /// known to be corrupt and must be replaced). Dropping a claim that was not published
    /// removes its temp file.
    pub fn claim(
        &self,
        what: &str,
        expected: &Digest,
        size: u64,
        present: Present,
    ) -> Result<BlobClaim> {
        let bad = match present {
            Present::Reuse => None,
            Present::Replace => self.blob_identity(expected),
        };
        let path = self.ingest_path(expected);
        let locked = temp::lock_file(&path, true, &mut || {
            tracing::info!("{what} {expected}: another stager is writing it; waiting for it");
        })?
        .ok_or_else(|| Error::Other(format!("lock {}", path.display())))?;
        // Recorded once ours (while we wait, the file is another stager's).
        let live = temp::Registered::new(&path, temp::Kind::File)?;
        let now = self.blob_identity(expected);
        // Written (and verified) by the stager we waited for, or one before it.
        let by_other = now.is_some() && now != bad && self.blob_size(expected) == Some(size);
        Ok(BlobClaim {
            tmp: RemoveOnDrop(Some(path.clone())),
            _live: live,
            locked,
            store: self.clone(),
            what: what.to_string(),
            expected: expected.clone(),
            size,
            path,
            state: if by_other {
                ClaimState::ByOther
            } else {
                ClaimState::Claimed
            },
        })
    }

    /// Bytes of a partial ingest of `digest` waiting to be resumed (0 when none).
    pub fn partial_len(&self, digest: &Digest) -> u64 {
        fs::metadata(self.ingest_path(digest)).map_or(0, |m| m.len())
    }

    /// The temp file of blob `digest`'s ingest (one per digest).
    fn ingest_path(&self, digest: &Digest) -> PathBuf {
        self.layout()
            .ingest_dir()
            .join(format!("{}{INGEST_SUFFIX}", digest.hex()))
    }

    /// Which file `blobs/sha256/<hex>` is now (device, inode), if any.
    fn blob_identity(&self, digest: &Digest) -> Option<(u64, u64)> {
        fs::symlink_metadata(self.layout().blob(digest))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    }

    /// Re-hashes what a dead stager left in the (locked) temp file; returns the hasher and
    /// the offset to continue at. A file longer than the blob, or unreadable, starts over.
    fn resume(
        &self,
        what: &str,
        expected: &Digest,
        size: u64,
        path: &Path,
        mut file: &File,
        tee: &mut dyn Tee,
    ) -> Result<(Hasher, u64)> {
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        let mut hasher = Hasher::new();
        if len == 0 {
            return Ok((hasher, 0));
        }
        if len <= size {
            file.seek(SeekFrom::Start(0))
                .ctx(|| format!("seek {}", path.display()))?;
            let mut buf = vec![0u8; CHUNK];
            let mut prefix = file.take(len);
            let read = loop {
                match prefix.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        hasher.update(&buf[..n]);
                        tee.write(&buf[..n])?;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            match read {
                Ok(()) if hasher.len() == len => return Ok((hasher, len)),
                Ok(()) => {}
                Err(e) => tracing::warn!("{what} {expected}: re-reading {}: {e}", path.display()),
            }
            tee.restart()?;
        }
        restart(file, path)?;
        Ok((Hasher::new(), 0))
    }

    /// Refuses to start writing `needed` more bytes into `ingest/` when its filesystem
    /// has fewer free (a declared size is exact, so this is what the blob will take).
    pub fn check_space(&self, what: &str, needed: u64) -> Result<()> {
        let dir = self.layout().ingest_dir();
        let st = nix::sys::statvfs::statvfs(&dir)
            .map_err(|e| Error::io(format!("statvfs {}", dir.display()), e.into()))?;
        #[allow(clippy::useless_conversion)] // u32 or u64 depending on the target
        let available =
            u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
        if needed > available {
            return Err(StoreError::NoSpace {
                what: what.to_string(),
                needed,
                available,
                dir,
            }
            .into());
        }
        Ok(())
    }

    /// Ingests a document held in memory (manifest, config) whose digest is `expected`.
    pub fn ingest_bytes(&self, what: &str, expected: &Digest, data: &[u8]) -> Result<Ingested> {
        let len = data.len() as u64;
        self.ingest_from(
            what,
            expected,
            len,
            Present::Reuse,
            &mut |offset| Ok(Box::new(&data[offset.min(len) as usize..])),
            &mut |_| {},
        )
    }

    /// Removes the temp files of dead writers in `ingest/` and `.nestcache/`, except
    /// partial ingests of the digests in `resume` (the caller is about to continue them).
    pub fn reclaim_temp(&self, resume: &[Digest]) -> Result<temp::Reclaimed> {
        let keep: Vec<String> = resume
            .iter()
            .map(|d| format!("{}{INGEST_SUFFIX}", d.hex()))
            .collect();
        let mut total = temp::Reclaimed::default();
        for dir in [self.layout().ingest_dir(), self.layout().meta_dir()] {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("read directory {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.ctx(|| format!("read directory {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.ends_with(INGEST_SUFFIX) || keep.contains(&name) {
                    continue;
                }
                if let Some(r) = temp::if_dead(&entry.path(), temp::remove_dead)? {
                    total.add(r);
                }
            }
        }
        Ok(total)
    }

    /// Re-hashes a present blob; Ok(false) when it is missing, the wrong size or corrupt.
    pub fn verify_blob(&self, digest: &Digest, size: u64) -> Result<bool> {
        let mut file = match self.open_blob(digest) {
            Ok(f) => f,
            Err(Error::Store(
                StoreError::BlobMissing { .. }
                | StoreError::BlobSymlink { .. }
                | StoreError::BlobNotRegular { .. },
            )) => return Ok(false),
            Err(e) => return Err(e),
        };
        let (actual, actual_size) = hash_reader(&mut file)
            .ctx(|| format!("read {}", self.layout().blob(digest).display()))?;
        Ok(actual == *digest && actual_size == size)
    }
}

/// Receives every byte of a blob being ingested, in order and from byte 0 (the prefix of
/// a resumed partial ingest too), in the same pass that hashes and writes it: how staging
/// extracts a layer while it arrives.
pub trait Tee {
    /// The next bytes of the blob. An error stops the ingest (nothing is published).
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// Forget every byte given so far: the ingest starts over from byte 0.
    fn restart(&mut self) -> Result<()>;
}

/// A [`Tee`] that drops everything (a plain ingest).
pub struct NoTee;

impl Tee for NoTee {
    fn write(&mut self, _: &[u8]) -> Result<()> {
        Ok(())
    }

    fn restart(&mut self) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    /// Ours to write.
    Claimed,
    /// Written, verified and fsynced in `ingest/`, not yet in `blobs/`.
    Verified,
    /// Renamed into `blobs/`.
    Published,
    /// Present when the lock was taken (another stager wrote it).
    ByOther,
}

/// The ingest lock of one blob ([`Store::claim`]) and its temp file. The lock is held
/// until drop (so a waiting stager finds whatever was published with it, a layer too);
/// the temp file is removed on drop unless published.
pub struct BlobClaim {
    // Field order is drop order: the file goes before its lock is released.
    tmp: RemoveOnDrop,
    _live: temp::Registered,
    locked: temp::LockedFile,
    store: Store,
    what: String,
    expected: Digest,
    size: u64,
    path: PathBuf,
    state: ClaimState,
}

impl BlobClaim {
    /// Whether the blob was already in the store once the lock was held: nothing to write.
    pub fn by_other(&self) -> bool {
        self.state == ClaimState::ByOther
    }

    /// Whether the blob is still to be written ([`BlobClaim::write`]).
    pub fn needs_write(&self) -> bool {
        self.state == ClaimState::Claimed
    }

    /// Where the blob's bytes are now: its temp file until published, then `blobs/`.
    pub fn path(&self) -> PathBuf {
        match self.state {
            ClaimState::Claimed | ClaimState::Verified => self.path.clone(),
            ClaimState::Published | ClaimState::ByOther => self.store.layout().blob(&self.expected),
        }
    }

    /// Streams the blob into its temp file, hashing it and handing every byte to `tee`;
    /// returns once digest and size match and the file is fsynced, without publishing it.
    /// A temp file left by a dead stager is resumed: its bytes are re-hashed (and given
    /// to `tee`) and only the rest is asked of `open(offset)` (once more from 0, after
    /// `tee.restart()`, if the whole does not verify). Refuses as soon as more than the
    /// declared size arrives, and before writing when the disk has less than the bytes
    /// still to come; a short or wrong stream is refused at the end.
    pub fn write(
        &mut self,
        open: &mut Opener<'_, '_>,
        progress: &mut dyn FnMut(u64),
        tee: &mut dyn Tee,
    ) -> Result<Ingested> {
        if self.state != ClaimState::Claimed {
            return Err(Error::Other(format!(
                "{} {}: ingest claim is {:?}, not writable",
                self.what, self.expected, self.state
            )));
        }
        let (what, expected, size, path) = (&self.what, &self.expected, self.size, &self.path);
        let mut file = self.locked.file();
        let (mut hasher, mut resumed_from) =
            self.store.resume(what, expected, size, path, file, tee)?;
        if resumed_from > 0 {
            tracing::info!("{what} {expected}: resuming at byte {resumed_from} of {size}");
            progress(resumed_from);
        }
        self.store
            .check_space(&format!("{what} {expected}"), size - resumed_from)?;
        let mut offset = resumed_from;
        let mut bytes = 0;
        loop {
            let mut reader = open(offset)?;
            let mut copy = Copy {
                what,
                expected,
                size,
                path,
            };
            bytes += copy.run(&mut *reader, &mut file, &mut hasher, progress, tee)?;
            let (actual, actual_size) = std::mem::replace(&mut hasher, Hasher::new()).finish();
            if actual == *expected && actual_size == size {
                break;
            }
            if offset > 0 {
                tracing::warn!(
                    "{what} {expected}: the resumed ingest does not verify; starting over"
                );
                restart(file, path)?;
                tee.restart()?;
                offset = 0;
                // Nothing of the partial ingest was kept after all.
                resumed_from = 0;
                bytes = 0;
                continue;
            }
            return Err(Error::DigestMismatch {
                what: what.to_string(),
                expected: expected.to_string(),
                expected_size: size,
                actual: actual.to_string(),
                actual_size,
            });
        }
        file.sync_all()
            .ctx(|| format!("fsync {} (ingesting {what} {expected})", path.display()))?;
        self.state = ClaimState::Verified;
        Ok(Ingested {
            bytes,
            resumed_from,
            by_other: false,
        })
    }

    /// Renames the verified blob into `blobs/` (still locked: a waiter then finds the
    /// path gone and the blob there). Does nothing for a blob already published.
    pub fn publish(&mut self) -> Result<()> {
        match self.state {
            ClaimState::Published | ClaimState::ByOther => return Ok(()),
            ClaimState::Claimed => {
                return Err(Error::Other(format!(
                    "{} {}: publishing a blob that was never verified",
                    self.what, self.expected
                )))
            }
            ClaimState::Verified => {}
        }
        let dest = self.store.layout().blob(&self.expected);
        fs::rename(&self.path, &dest)
            .ctx(|| format!("rename {} to {}", self.path.display(), dest.display()))?;
        self.tmp.0 = None;
        self.state = ClaimState::Published;
        sync_dir(&self.store.layout().blobs_dir())
    }
}

/// Suffix of every temp file the store writes (ingest/<hex>.tmp, .nestcache/*.tmp).
const INGEST_SUFFIX: &str = ".tmp";

/// Copies a blob's stream to the end of its temp file.
struct Copy<'a> {
    what: &'a str,
    expected: &'a Digest,
    size: u64,
    path: &'a Path,
}

impl Copy<'_> {
    /// Copies `reader` to the end of `file`, hashing and teeing; refuses more than `size`
    /// bytes in all. Returns the bytes copied.
    fn run(
        &mut self,
        reader: &mut dyn Read,
        file: &mut &File,
        hasher: &mut Hasher,
        progress: &mut dyn FnMut(u64),
        tee: &mut dyn Tee,
    ) -> Result<u64> {
        let (what, expected, path) = (self.what, self.expected, self.path);
        let start = hasher.len();
        file.seek(SeekFrom::Start(start))
            .ctx(|| format!("seek {}", path.display()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut kicked = start;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read {what} {expected}"), e)),
            };
            if hasher.len() + n as u64 > self.size {
                return Err(StoreError::BlobOverflow {
                    what: what.to_string(),
                    digest: expected.clone(),
                    size: self.size,
                }
                .into());
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .ctx(|| format!("write {} (ingesting {what} {expected})", path.display()))?;
            tee.write(&buf[..n])?;
            if hasher.len() - kicked >= WRITE_BACK_EVERY {
                start_write_back(file, kicked, hasher.len());
                kicked = hasher.len();
            }
            progress(n as u64);
        }
        Ok(hasher.len() - start)
    }
}

/// Empties a temp file to write it again from byte 0.
fn restart(file: &File, path: &Path) -> Result<()> {
    file.set_len(0)
        .ctx(|| format!("truncate {}", path.display()))
}

/// Removes a (still locked) temp file unless disarmed by setting it to `None`.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// A temp path unique across processes and threads.
pub(crate) fn unique_temp_path(dir: &Path, tag: &str) -> PathBuf {
    temp::unique_path(dir, "", &format!("-{tag}{INGEST_SUFFIX}"))
}

/// A temp file removed on drop unless persisted by rename; held by an flock meanwhile,
/// so [`Store::reclaim_temp`] can tell it from a dead process's.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<temp::LockedFile>,
    _live: temp::Registered,
}

impl TempFile {
    pub(crate) fn create(path: &Path) -> Result<TempFile> {
        let live = temp::Registered::new(path, temp::Kind::File)?;
        let file = temp::lock_file(path, false, &mut || {})?.ok_or_else(|| {
            Error::Other(format!("{} is in use by another process", path.display()))
        })?;
        Ok(TempFile {
            path: path.to_path_buf(),
            file: Some(file),
            _live: live,
        })
    }

    pub(crate) fn file(&mut self) -> &File {
        self.file
            .as_ref()
            .map(temp::LockedFile::file)
            .unwrap_or_else(|| unreachable!("file taken only by persist, which consumes self"))
    }

    /// Renames over `dest` (atomic; an identical file written concurrently is replaced by
    /// identical bytes).
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        let res = fs::rename(&self.path, dest)
            .ctx(|| format!("rename {} to {}", self.path.display(), dest.display()));
        if res.is_ok() {
            self.path = PathBuf::new();
        }
        self.file.take();
        res
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
        self.file.take();
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
        let err = check_declared_size("layer", &d, 33, 32).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Store(StoreError::BlobTooLarge {
                    size: 33,
                    limit: 32,
                    ..
                })
            ),
            "{err}"
        );
        let err = s
            .ingest("layer", &d, 6, &mut &b"hello"[..], &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 bytes") && err.contains("5 bytes"), "{err}");
        // A declared size is what the blob will take: more than the disk has is refused
        // before anything is read or written.
        let err = s
            .ingest("layer", &d, u64::MAX, &mut &b"hello"[..], &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Store(StoreError::NoSpace {
                    needed: u64::MAX,
                    ..
                })
            ),
            "{err}"
        );
        assert!(!s.has_blob(&d));
        assert!(ingest_dir_is_empty(&s));
    }

    /// A blob of `n` bytes and an opener that records the offsets asked for.
    fn blob(n: usize) -> (Vec<u8>, Digest) {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let d = Digest::of(&data);
        (data, d)
    }

    #[test]
    fn a_dead_stagers_partial_ingest_is_resumed_from_its_offset() {
        let (_t, s) = store();
        let (data, d) = blob(3 << 20);
        let partial = s.layout().ingest_dir().join(format!("{}.tmp", d.hex()));
        fs::write(&partial, &data[..(1 << 20) + 5]).unwrap();
        let mut asked = Vec::new();
        let got = s
            .ingest_from(
                "layer",
                &d,
                data.len() as u64,
                Present::Reuse,
                &mut |off| {
                    asked.push(off);
                    Ok(Box::new(&data[off as usize..]))
                },
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(asked, [(1 << 20) + 5]);
        assert_eq!(got.resumed_from, (1 << 20) + 5);
        assert_eq!(got.bytes, data.len() as u64 - got.resumed_from);
        assert!(s.verify_blob(&d, data.len() as u64).unwrap());
        assert!(ingest_dir_is_empty(&s));
    }

    /// Collects what a [`Tee`] is given, and how often it was restarted.
    #[derive(Default)]
    struct Collect {
        bytes: Vec<u8>,
        restarts: usize,
    }

    impl Tee for Collect {
        fn write(&mut self, b: &[u8]) -> Result<()> {
            self.bytes.extend_from_slice(b);
            Ok(())
        }
        fn restart(&mut self) -> Result<()> {
            self.bytes.clear();
            self.restarts += 1;
            Ok(())
        }
    }

    #[test]
    fn a_verified_claim_is_invisible_until_published_and_leaves_nothing_if_dropped() {
        let (_t, s) = store();
        let (data, d) = blob(300_000);
        let size = data.len() as u64;
        let mut claim = s.claim("layer", &d, size, Present::Reuse).unwrap();
        assert!(claim.needs_write() && !claim.by_other());
        claim
            .write(
                &mut |off| Ok(Box::new(&data[off as usize..])),
                &mut |_| {},
                &mut NoTee,
            )
            .unwrap();
        assert!(!s.has_blob(&d), "verified but not published");
        assert!(claim.path().starts_with(s.layout().ingest_dir()));
        drop(claim);
        assert!(!s.has_blob(&d));
        assert!(ingest_dir_is_empty(&s));

        let mut claim = s.claim("layer", &d, size, Present::Reuse).unwrap();
        claim
            .write(
                &mut |off| Ok(Box::new(&data[off as usize..])),
                &mut |_| {},
                &mut NoTee,
            )
            .unwrap();
        claim.publish().unwrap();
        assert_eq!(claim.path(), s.layout().blob(&d));
        drop(claim);
        assert!(s.verify_blob(&d, size).unwrap());
        assert!(ingest_dir_is_empty(&s));
    }

    #[test]
    fn the_tee_sees_every_byte_from_zero_when_resuming_and_again_after_a_restart() {
        let (_t, s) = store();
        let (data, d) = blob(3 << 20);
        let size = data.len() as u64;
        let partial = s.layout().ingest_dir().join(format!("{}.tmp", d.hex()));
        let cut = (1 << 20) + 3;
        for corrupt in [false, true] {
            let mut prefix = data[..cut].to_vec();
            if corrupt {
                prefix[7] ^= 1;
            }
            fs::write(&partial, &prefix).unwrap();
            let mut tee = Collect::default();
            let mut claim = s.claim("layer", &d, size, Present::Replace).unwrap();
            let got = claim
                .write(
                    &mut |off| Ok(Box::new(&data[off as usize..])),
                    &mut |_| {},
                    &mut tee,
                )
                .unwrap();
            assert_eq!(got.resumed_from, if corrupt { 0 } else { cut as u64 });
            assert_eq!(got.bytes + got.resumed_from, size);
            assert!(
                tee.bytes == data,
                "the tee saw other bytes (corrupt prefix: {corrupt})"
            );
            assert_eq!(tee.restarts, usize::from(corrupt));
        }
    }

    #[test]
    fn a_partial_ingest_that_does_not_verify_starts_over() {
        let (_t, s) = store();
        let (data, d) = blob(100_000);
        let partial = s.layout().ingest_dir().join(format!("{}.tmp", d.hex()));
        let mut bad = data[..5000].to_vec();
        bad[10] ^= 1;
        fs::write(&partial, &bad).unwrap();
        let mut asked = Vec::new();
        s.ingest_from(
            "layer",
            &d,
            data.len() as u64,
            Present::Reuse,
            &mut |off| {
                asked.push(off);
                Ok(Box::new(&data[off as usize..]))
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(asked, [5000, 0]);
        assert!(s.verify_blob(&d, data.len() as u64).unwrap());
    }

    #[test]
    fn a_second_stager_of_a_blob_waits_and_reuses_it() {
        let (_t, s) = store();
        let (data, d) = blob(200_000);
        let size = data.len() as u64;
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (st, dg, bytes) = (&s, &d, &data);
        std::thread::scope(|scope| {
            let first = scope.spawn(move || {
                st.ingest_from(
                    "layer",
                    dg,
                    size,
                    Present::Reuse,
                    &mut |off| {
                        opened_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                        Ok(Box::new(&bytes[off as usize..]))
                    },
                    &mut |_| {},
                )
                .unwrap()
            });
            opened_rx.recv().unwrap();
            // The first holds the blob's lock while its source is open.
            let path = s.layout().ingest_dir().join(format!("{}.tmp", d.hex()));
            assert!(temp::lock_file(&path, false, &mut || {}).unwrap().is_none());
            let second = scope.spawn(move || {
                st.ingest_from(
                    "layer",
                    dg,
                    size,
                    Present::Reuse,
                    &mut |_| panic!("the second stager must not read the source"),
                    &mut |_| {},
                )
                .unwrap()
            });
            go_tx.send(()).unwrap();
            assert_eq!(first.join().unwrap().bytes, size);
            assert!(second.join().unwrap().by_other);
        });
        assert!(s.verify_blob(&d, size).unwrap());
        assert!(ingest_dir_is_empty(&s));
    }

    #[test]
    fn reclaim_removes_dead_temp_files_but_not_live_or_resumable_ones() {
        let (_t, s) = store();
        let ingest = s.layout().ingest_dir();
        let dead = ingest.join("1-2-3-old.tmp");
        fs::write(&dead, b"dead").unwrap();
        let (_, keep) = blob(10);
        let resumable = ingest.join(format!("{}.tmp", keep.hex()));
        fs::write(&resumable, b"part").unwrap();
        let live = ingest.join("live.tmp");
        let _held = temp::lock_file(&live, false, &mut || {}).unwrap().unwrap();
        let r = s.reclaim_temp(std::slice::from_ref(&keep)).unwrap();
        assert_eq!(
            r,
            temp::Reclaimed {
                entries: 1,
                bytes: 4
            }
        );
        assert!(!dead.exists() && resumable.exists() && live.exists());
    }
}
