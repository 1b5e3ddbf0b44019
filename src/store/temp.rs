//! Temp files and directories with an owner: each one is held by an flock of the process
//! writing it for as long as it lives, so any other process can tell a live writer's temp
//! file (its lock is taken) from a dead one's (the kernel dropped the lock with the
//! process) and reclaim only the dead ones. A creator verifies, once it holds the lock,
//! that the path still names what it locked: a reclaimer may have removed it between the
//! create and the lock, and the creator then starts over instead of writing into a file
//! nobody can see.
//!
//! Every live temp path is also recorded in this process ([`remove_live`]), so that a
//! SIGINT or SIGTERM handler can remove them before the process exits.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, IoContext, Result};

/// What a temp path is, for removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

static LIVE: Mutex<BTreeMap<u64, (PathBuf, Kind)>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Set (under LIVE's lock) by [`remove_live`]: no new temp path may be made after it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<u64, (PathBuf, Kind)>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A temp path of this process, recorded for [`remove_live`] until dropped. Made before
/// the path is created, so that a signal between the two leaves nothing unrecorded.
#[derive(Debug)]
pub struct Registered(u64);

impl Registered {
    /// Fails once [`remove_live`] has run: the process is exiting, nothing new is made.
    pub fn new(path: &Path, kind: Kind) -> Result<Registered> {
        let mut live = live();
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Error::Other(format!(
                "interrupted: not creating {}",
                path.display()
            )));
        }
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        live.insert(id, (path.to_path_buf(), kind));
        Ok(Registered(id))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        live().remove(&self.0);
    }
}

/// Removes every live temp file and directory of this process; returns how many it
/// removed. For a signal handler that exits right after: writers may still be writing
/// into what it unlinks, which no one will see.
pub fn remove_live() -> usize {
    let entries = {
        let mut live = live();
        INTERRUPTED.store(true, Ordering::SeqCst);
        std::mem::take(&mut *live).into_values().collect()
    };
    remove_entries(entries)
}

fn remove_entries(entries: Vec<(PathBuf, Kind)>) -> usize {
    entries
        .iter()
        .filter(|(path, kind)| {
            let res = match kind {
                Kind::File => fs::remove_file(path),
                Kind::Dir => remove_dir_racing(path),
            };
            match res {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::warn!("could not remove {}: {e}", path.display());
                    false
                }
            }
        })
        .count()
}

/// Removes a directory a writer may still be filling: a few tries, since an entry it
/// creates meanwhile makes the final rmdir fail with ENOTEMPTY.
fn remove_dir_racing(path: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match fs::remove_dir_all(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound && tries < 10 => tries += 1,
            res => return res,
        }
    }
}

/// A locked temp file: the lock is the proof of ownership, held until drop.
#[derive(Debug)]
pub struct LockedFile {
    pub lock: Flock<File>,
}

impl LockedFile {
    pub fn file(&self) -> &File {
        &self.lock
    }
}

/// Whether `file` is still what `path` names (a reclaimer or a finished writer may have
/// removed or renamed it while we waited for its lock).
fn still_at(file: &File, path: &Path) -> Result<bool> {
    let mine = file.metadata().ctx(|| format!("stat {}", path.display()))?;
    match fs::symlink_metadata(path) {
        Ok(there) => Ok(there.dev() == mine.dev() && there.ino() == mine.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
    }
}

/// Opens (creating if absent, never truncating) the file at `path` and takes its lock,
/// waiting for a live holder when `wait`; `Ok(None)` when it is held and `!wait`. Retries
/// when the path was replaced or removed meanwhile, so the returned lock is on the file
/// the path names now. `on_wait` is called once before blocking.
pub fn lock_file(path: &Path, wait: bool, on_wait: &mut dyn FnMut()) -> Result<Option<LockedFile>> {
    let mut waited = false;
    loop {
        let file =
            super::lock::open_lock_file(path).ctx(|| format!("create {}", path.display()))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, Errno::EWOULDBLOCK)) if wait => {
                if !waited {
                    on_wait();
                    waited = true;
                }
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| Error::io(format!("lock {}", path.display()), e.into()))?
            }
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(Error::io(format!("lock {}", path.display()), e.into())),
        };
        if still_at(&lock, path)? {
            return Ok(Some(LockedFile { lock }));
        }
    }
}

/// A locked temp directory of this process, removed (with its contents) on drop.
#[derive(Debug)]
pub struct LockedDir {
    path: PathBuf,
    _lock: Flock<File>,
    _live: Registered,
}

impl LockedDir {
    /// A new locked directory `<parent>/<prefix><pid>-<n>-<nanos>`; retries when a
    /// reclaimer removed it between its creation and the lock.
    pub fn new(parent: &Path, prefix: &str) -> Result<LockedDir> {
        loop {
            let path = unique_path(parent, prefix, "");
            let live = Registered::new(&path, Kind::Dir)?;
            fs::create_dir(&path).ctx(|| format!("create {}", path.display()))?;
            let f = File::open(&path).ctx(|| format!("open {}", path.display()))?;
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(lock) if still_at(&lock, &path)? => {
                    return Ok(LockedDir {
                        path,
                        _lock: lock,
                        _live: live,
                    })
                }
                // Removed or being removed by a reclaimer: make another.
                Ok(_) | Err((_, Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => return Err(Error::io(format!("lock {}", path.display()), e.into())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockedDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("could not remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A name unique across processes and threads: pid + a process-wide counter + the time.
pub fn unique_path(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!(
        "{prefix}{}-{n}-{nanos}{suffix}",
        std::process::id()
    ))
}

/// If nobody holds the lock of `path` (its owner died), calls `reclaim` with the lock held
/// and returns its answer; `Ok(None)` when a live process owns it or it is gone.
pub fn if_dead<T>(path: &Path, reclaim: impl FnOnce(&Path) -> Result<T>) -> Result<Option<T>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) if still_at(&lock, path)? => reclaim(path).map(Some),
        Ok(_) | Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(Error::io(format!("lock {}", path.display()), e.into())),
    }
}

/// What reclaiming dead temp space freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub entries: u64,
    pub bytes: u64,
}

impl Reclaimed {
    pub fn add(&mut self, other: Reclaimed) {
        self.entries += other.entries;
        self.bytes += other.bytes;
    }
}

/// Removes a dead temp file or directory (called with its lock held).
pub fn remove_dead(path: &Path) -> Result<Reclaimed> {
    let meta = fs::symlink_metadata(path).ctx(|| format!("stat {}", path.display()))?;
    let bytes = if meta.is_dir() { du(path) } else { meta.len() };
    tracing::info!("removing dead temp {} ({bytes} bytes)", path.display());
    let res = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match res {
        Ok(()) => Ok(Reclaimed { entries: 1, bytes }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Reclaimed::default()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

/// Bytes of the regular files under `dir` (for the report; errors count as 0).
fn du(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(if m.is_dir() { du(&e.path()) } else { m.len() })
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_live_a_released_one_is_dead() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.tmp");
        let held = lock_file(&p, false, &mut || {}).unwrap().unwrap();
        // A second open file description of this process counts as another owner.
        assert!(lock_file(&p, false, &mut || {}).unwrap().is_none());
        assert!(if_dead(&p, remove_dead).unwrap().is_none());
        drop(held);
        let r = if_dead(&p, remove_dead).unwrap().unwrap();
        assert_eq!(r.entries, 1);
        assert!(!p.exists());
    }

    #[test]
    fn a_lock_on_a_removed_file_is_retried_on_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.tmp");
        fs::write(&p, b"old").unwrap();
        let old = File::open(&p).unwrap();
        fs::remove_file(&p).unwrap();
        assert!(!still_at(&old, &p).unwrap());
        let l = lock_file(&p, true, &mut || {}).unwrap().unwrap();
        assert!(still_at(l.file(), &p).unwrap());
    }

    #[test]
    fn registered_paths_are_live_until_dropped_and_removable() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f.tmp");
        let d = tmp.path().join("d");
        fs::write(&f, b"x").unwrap();
        fs::create_dir_all(d.join("sub")).unwrap();
        let is_live = |p: &Path| live().values().any(|(q, _)| q == p);
        let a = Registered::new(&f, Kind::File).unwrap();
        assert!(is_live(&f));
        drop(a);
        assert!(!is_live(&f));
        // (remove_live itself would take other tests' temp files: its body is tested.)
        let n = remove_entries(vec![
            (f.clone(), Kind::File),
            (d.clone(), Kind::Dir),
            (tmp.path().join("absent"), Kind::File),
        ]);
        assert_eq!(n, 2);
        assert!(!f.exists() && !d.exists());
    }
}
