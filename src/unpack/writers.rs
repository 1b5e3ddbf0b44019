//! Small files of one layer written by a few threads while the tar parser reads on.
//!
//! Creating a file costs the kernel far more than parsing its header (inode and dentry
//! allocation, the directory insert, the page cache, journal updates), so a layer of many
//! small files is bound by one thread's system calls. The parser resolves every parent
//! itself (directories, symlink checks and missing parents stay on its thread) and hands
//! small files (body, parent's fd, metadata) in batches to a bounded queue; large files
//! are streamed inline, never buffered whole. Whatever could touch a path a queued file
//! may still be writing waits for the queue to drain first ([`Writers::fence`]): see the
//! rules in `entry.rs`.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use nix::errno::Errno;
use nix::sys::stat::SFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::entry::{create_file_at, set_file_meta};
use super::error::{Fail, Res, UnpackError};
use super::meta::Meta;
use super::path::RelPath;
use super::tree::{io_err, kind, lstat_at};
use crate::digest::Digest;

/// Files up to this size go to the writers; larger ones are streamed inline.
pub(super) const SMALL_FILE: u64 = 64 << 10;
/// Files per batch: one queue hand-off per batch, not per file; small, so that the
/// writers start while the parser is still on the directory (16 measured slower).
const BATCH_FILES: usize = 4;
/// Bytes per batch, at most (a batch is sent early when it reaches this).
const BATCH_BYTES: usize = 64 << 10;
/// Batches queued at most: with [`BATCH_BYTES`], about 2 MiB of bodies per layer.
const QUEUE: usize = 32;

/// Writer threads per layer: `NESTCACHE_UNPACK_WRITERS`, else 2 (more only add
/// contention on a small machine, where layers already extract in parallel). 0 writes
/// every file inline.
pub(super) fn per_layer() -> usize {
    #[cfg(test)]
    if let Some(n) = tests::WRITERS.get() {
        return n;
    }
    std::env::var("NESTCACHE_UNPACK_WRITERS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2)
        .min(16)
}

/// One small file to write.
pub(super) struct Job {
    pub(super) dir: Arc<OwnedFd>,
    pub(super) name: OsString,
    pub(super) rel: RelPath,
    pub(super) body: Vec<u8>,
    pub(super) meta: Meta,
}

/// Files in layer order, the first numbered `first`.
pub(super) struct Batch {
    first: u64,
    jobs: Vec<Job>,
}

/// What the writer threads share with the parser.
pub(super) struct Shared {
    rx: Mutex<Receiver<Batch>>,
    /// Files written (or skipped after a failure) so far.
    done: AtomicU64,
    /// Set while the parser waits in [`Writers::fence`]: only then is a wake-up needed.
    fencing: AtomicBool,
    wait: Mutex<()>,
    progress: Condvar,
    /// The failure of the earliest failed file (by position in the layer).
    failed: Mutex<Option<(u64, UnpackError)>>,
    stop: AtomicBool,
    layer: Digest,
}

/// The parser's end: collect files into batches, queue them, wait for them.
pub(super) struct Writers<'s> {
    tx: SyncSender<Batch>,
    shared: &'s Shared,
    /// Files handed over so far (queued or in `batch`).
    sent: Cell<u64>,
    batch: RefCell<Batch>,
    batch_bytes: Cell<usize>,
}

/// The queue for `layer`: run [`work`] on each writer thread with the `Shared`, and hand
/// the sender to [`Writers::new`].
pub(super) fn queue(layer: &Digest) -> (SyncSender<Batch>, Shared) {
    let (tx, rx) = sync_channel(QUEUE);
    let shared = Shared {
        rx: Mutex::new(rx),
        done: AtomicU64::new(0),
        fencing: AtomicBool::new(false),
        wait: Mutex::new(()),
        progress: Condvar::new(),
        failed: Mutex::new(None),
        stop: AtomicBool::new(false),
        layer: layer.clone(),
    };
    (tx, shared)
}

/// A writer thread: batches until the parser drops its sender. After a failure the rest
/// are skipped (the layer is discarded anyway).
pub(super) fn work(shared: &Shared) {
    loop {
        let next = lock(&shared.rx).recv();
        let Ok(batch) = next else { return };
        for (seq, job) in (batch.first..).zip(&batch.jobs) {
            if shared.stop.load(SeqCst) {
                break;
            }
            // A panic must not leave the parser waiting for a file that never comes.
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(job)))
                .unwrap_or_else(|_| Err(Fail::Invalid("the file writer panicked".into())));
            if let Err(f) = res {
                shared.stop.store(true, SeqCst);
                let mut failed = lock(&shared.failed);
                if !failed.as_ref().is_some_and(|(s, _)| *s < seq) {
                    *failed = Some((seq, f.into_error(&shared.layer, job.rel.to_path())));
                }
            }
        }
        shared.done.fetch_add(batch.jobs.len() as u64, SeqCst);
        // Paired with the parser's store of `fencing` before it reads `done` (SeqCst):
        // either it sees this batch done, or this thread sees it waiting and wakes it.
        if shared.fencing.load(SeqCst) {
            let _g = lock(&shared.wait);
            shared.progress.notify_all();
        }
    }
}

impl<'s> Writers<'s> {
    pub(super) fn new(tx: SyncSender<Batch>, shared: &'s Shared) -> Self {
        Writers {
            tx,
            shared,
            sent: Cell::new(0),
            batch: RefCell::new(Batch {
                first: 0,
                jobs: Vec::with_capacity(BATCH_FILES),
            }),
            batch_bytes: Cell::new(0),
        }
    }

    /// Adds a file to the current batch, queueing the batch when it is full (waiting
    /// while the queue is). Fails with a writer's failure.
    pub(super) fn submit(&self, job: Job) -> Res<()> {
        if self.shared.stop.load(SeqCst) {
            return self.fence();
        }
        let bytes = self.batch_bytes.get() + job.body.len();
        let full = {
            let mut b = self.batch.borrow_mut();
            b.jobs.push(job);
            b.jobs.len() >= BATCH_FILES || bytes >= BATCH_BYTES
        };
        self.batch_bytes.set(bytes);
        self.sent.set(self.sent.get() + 1);
        if full {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Res<()> {
        let next = Batch {
            first: self.sent.get(),
            jobs: Vec::with_capacity(BATCH_FILES),
        };
        let batch = self.batch.replace(next);
        self.batch_bytes.set(0);
        if batch.jobs.is_empty() {
            return Ok(());
        }
        if self.tx.send(batch).is_err() {
            // Every writer is gone: only a panic does that, and the scope re-raises it.
            return Err(Fail::Invalid("the file writer threads stopped".into()));
        }
        Ok(())
    }

    /// Waits until every file handed over is written; fails with the earliest failure.
    pub(super) fn fence(&self) -> Res<()> {
        self.flush()?;
        let sent = self.sent.get();
        let shared = self.shared;
        if shared.done.load(SeqCst) < sent {
            shared.fencing.store(true, SeqCst);
            let mut g = lock(&shared.wait);
            while shared.done.load(SeqCst) < sent {
                g = shared.progress.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            drop(g);
            shared.fencing.store(false, SeqCst);
        }
        match lock(&shared.failed).take() {
            Some((_, e)) => Err(Fail::Written(Box::new(e))),
            None => Ok(()),
        }
    }
}

impl Drop for Writers<'_> {
    /// Leaving early (a failure, lowers needed): the queued rest is not written.
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates and fills one file. Something already there (an earlier entry of the same
/// name, written before the last fence) is replaced unless it is a directory, which the
/// parser never hands over.
fn write(job: &Job) -> Res<()> {
    let dir = job.dir.as_raw_fd();
    let rel = &job.rel;
    let fd = match create_file_at(dir, &job.name) {
        Ok(fd) => fd,
        Err(Errno::EEXIST) => {
            match lstat_at(dir, &job.name).map_err(|e| io_err(format!("stat {rel}"), e))? {
                Some(st) if kind(&st) == SFlag::S_IFDIR => {
                    return Err(Fail::Invalid(
                        "a directory is in the way of a queued file".into(),
                    ))
                }
                _ => unlinkat(Some(dir), job.name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| io_err(format!("remove {rel}"), e))?,
            }
            create_file_at(dir, &job.name).map_err(|e| io_err(format!("create {rel}"), e))?
        }
        Err(e) => return Err(io_err(format!("create {rel}"), e).into()),
    };
    let mut file = File::from(fd);
    file.write_all(&job.body)
        .map_err(|e| io_err(format!("write {rel}"), e))?;
    set_file_meta(&file, rel, &job.meta)
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::{Path, PathBuf};

    use testkit::layers::{scratch, LayerTar, TAR};

    use crate::digest::Digest;
    use crate::unpack::{apply_layer, Limits, Outcome, UnpackError};

    thread_local! {
        /// Writer threads for layers applied on this thread (the tests compare counts).
        pub(in crate::unpack) static WRITERS: Cell<Option<usize>> = const { Cell::new(None) };
    }

    fn apply_with(writers: usize, tar: &[u8], dest: &Path) -> crate::Result<Outcome> {
        WRITERS.set(Some(writers));
        let out = apply_layer(
            tar,
            TAR,
            &Digest::of(tar),
            dest,
            Some(&[]),
            &Limits::default(),
        );
        WRITERS.set(None);
        out
    }

    /// Everything a tree says: kind, mode, owner, mtime, contents or target, link count.
    fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = std::fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    todo.push(p.clone());
                    String::new()
                } else if m.file_type().is_symlink() {
                    std::fs::read_link(&p).unwrap().display().to_string()
                } else if m.is_file() {
                    Digest::of(&std::fs::read(&p).unwrap()).to_string()
                } else {
                    format!("rdev {}", m.rdev())
                };
                // A whiteout (a 0/0 device) is made at extraction time: its mtime is the
                // clock's, which may tick between the two extractions compared.
                let mtime = if m.file_type().is_char_device() {
                    String::from("-")
                } else {
                    m.mtime().to_string()
                };
                let line = format!(
                    "{:o} {}:{} {mtime} nlink {} {what}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.nlink()
                );
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), line);
            }
        }
        out
    }

    /// Entries that touch a path a queued file may still be writing: replacements both
    /// ways, a hardlink to a queued file, a whiteout of one, a directory turned into a file
    /// while files are queued in it, large files streamed inline among small ones.
    #[test]
    fn queued_files_give_the_tree_inline_writing_gives() {
        let mut t = LayerTar::new();
        t.dir("./", 0o755);
        for d in 0..8 {
            t.dir(&format!("d{d}/"), 0o750);
            for f in 0..40 {
                let body = format!("{d}/{f}").repeat(f + 1);
                t.file_with(
                    &format!("d{d}/f{f}"),
                    body.as_bytes(),
                    0o640 + (f as u32 % 2),
                    f as u64 % 3,
                    0,
                );
            }
        }
        t.file("big", &vec![9u8; 3 * super::SMALL_FILE as usize])
            .file("d0/f1", b"replaced")
            .file("d0/f1", b"replaced again")
            .hardlink("d1/link", "d1/f7")
            .symlink("d2/f3", "elsewhere")
            .file("d3/.wh.f4", b"")
            .file("d4", b"a file where a directory of queued files was")
            .dir("d5/f5/", 0o700)
            .file_with("mode", b"x", 0o4755, 0, 0)
            // Right after the file they touch, while it is most likely still queued.
            .file("t1", b"target")
            .hardlink("t1-link", "t1")
            .file("t2", b"replaced by a symlink")
            .symlink("t2", "elsewhere")
            .file("t3", b"whited out")
            .file(".wh.t3", b"")
            .file("t4", b"replaced by a directory")
            .dir("t4/", 0o755);
        let tar = t.finish();
        let (_a, inline) = scratch();
        let (_b, queued) = scratch();
        assert!(matches!(
            apply_with(0, &tar, &inline).unwrap(),
            Outcome::Done(_)
        ));
        assert!(matches!(
            apply_with(4, &tar, &queued).unwrap(),
            Outcome::Done(_)
        ));
        let (want, got) = (describe(&inline), describe(&queued));
        assert!(want.len() > 250, "{}", want.len());
        assert_eq!(want, got);
        assert_eq!(
            std::fs::read(queued.join("d0/f1")).unwrap(),
            b"replaced again"
        );
        assert!(queued.join("d4").is_file());
    }

    /// A path through a queued file is refused as it is when the file is already there.
    #[test]
    fn a_path_through_a_queued_file_is_refused() {
        let tar = LayerTar::new().file("q", b"x").file("q/z", b"y").finish();
        for writers in [0, 2] {
            let (_t, dest) = scratch();
            let err = apply_with(writers, &tar, &dest).unwrap_err();
            assert!(
                matches!(&err, crate::Error::Unpack(UnpackError::UnsafeEntry { entry, why, .. })
                    if entry == Path::new("q/z") && why.contains("non-directory")),
                "{writers} writers: {err:?}"
            );
            assert!(!dest.exists());
        }
    }
}
