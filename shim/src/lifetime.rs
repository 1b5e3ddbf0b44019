//! How long the long-lived shim lives. It serves while it has a container, while a task
//! that joined it (its `start` process) waits for containerd's Create, and, for a group
//! shim (`io.nestcache.group`), for a linger after its last task is deleted: the group's
//! next task then joins it instead of spawning a shim daemon. A shim that never got a
//! group task has no linger, as before (its next task could never join it anyway).
//!
//! Joining is a handshake, so that a shim never exits under a task about to use it: the
//! `start` process sends `Connect` with its task's id ([`Lifetime::join`]), which keeps the
//! shim up until that task's Create (or [`JOIN_GRACE`]). A shim that decides to exit first
//! unlinks its socket and then refuses joins, both under one lock: a refused `start`
//! finds the address free and spawns a new shim there.
//!
//! Shutdown requests: after the delete of this shim's last task, the linger starts; for a
//! task this shim never had (a failed create; `cache rm`, which sends one for no task),
//! an idle shim exits at once; with `now` set it exits at once, tasks or not.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use containerd_shim::ExitSignal;
use log::info;

use crate::bundle::Spec;
use crate::error::{Result, ShimError};
use crate::options::ShimConfig;

/// The node's default linger, in milliseconds, in the environment containerd runs its
/// shims with (a task's `linger_ms` option wins).
pub const LINGER_ENV: &str = nestcache::labels::SHIM_LINGER_ENV;

/// The linger without option or environment: long enough for a script's or a CI job's
/// next run, short enough that an idle shim (a few MiB) does not stay for long.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);

/// How long a joined task's Create is waited for (containerd sends it right after
/// `start` returns; this bounds a `start` whose containerd went away).
pub const JOIN_GRACE: Duration = Duration::from_secs(30);

/// Tells the Task service whether it still has containers.
pub type HasTasks = Box<dyn Fn() -> bool + Send + Sync>;

pub struct Lifetime {
    inner: Mutex<Inner>,
    wake: Condvar,
    exit: Arc<ExitSignal>,
    /// The socket this shim serves on (none in unit tests).
    socket: Option<PathBuf>,
}

#[derive(Default)]
struct Inner {
    linger: Duration,
    closing: bool,
    /// Tasks that joined, and until when their Create is waited for.
    joins: HashMap<String, Instant>,
    /// Creates under way.
    creating: usize,
    /// Tasks deleted whose Shutdown has not come yet.
    deleted: HashSet<String>,
    /// When an idle shim may exit, once something said it is idle (a Shutdown, or a
    /// join that expired): never before.
    idle_until: Option<Instant>,
}

/// What the watcher does next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Close,
    /// Until woken (a join, a Shutdown), or for at most this long.
    Wait(Option<Duration>),
}

impl Inner {
    /// The decision at `now`: expired joins go; an idle shim whose linger is over closes.
    fn next(&mut self, now: Instant, has_tasks: bool) -> Next {
        let joins_before = self.joins.len();
        self.joins.retain(|_, until| *until > now);
        if self.joins.len() < joins_before && self.idle_until.is_none() {
            // A joined task whose Create never came.
            self.idle_until = Some(now + self.linger);
        }
        let next_expiry = self.joins.values().min().map(|t| *t - now);
        let busy = next_expiry.is_some() || self.creating > 0 || has_tasks;
        match self.idle_until {
            Some(until) if !busy => {
                if now >= until {
                    Next::Close
                } else {
                    Next::Wait(Some(until - now))
                }
            }
            _ => Next::Wait(next_expiry),
        }
    }
}

/// A create under way: keeps the shim up until dropped (after the container is in the
/// registry, or the create failed).
pub struct Creating<'a>(&'a Lifetime);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.lock().creating -= 1;
    }
}

impl Lifetime {
    /// `first` is the task the shim was spawned for (its Create is on its way).
    pub fn start(
        exit: Arc<ExitSignal>,
        socket: Option<PathBuf>,
        first: Option<&str>,
        has_tasks: HasTasks,
    ) -> std::io::Result<Arc<Lifetime>> {
        let mut inner = Inner::default();
        if let Some(id) = first {
            inner
                .joins
                .insert(id.to_string(), Instant::now() + JOIN_GRACE);
        }
        let lifetime = Arc::new(Lifetime {
            inner: Mutex::new(inner),
            wake: Condvar::new(),
            exit,
            socket,
        });
        let watcher = lifetime.clone();
        std::thread::Builder::new()
            .name("lifetime".into())
            .spawn(move || watcher.watch(&*has_tasks))?;
        Ok(lifetime)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A `start` process joins this shim for task `id`.
    pub fn join(&self, id: &str) -> Result<()> {
        let mut inner = self.lock();
        if inner.closing {
            return Err(ShimError::ShuttingDown);
        }
        inner
            .joins
            .insert(id.to_string(), Instant::now() + JOIN_GRACE);
        inner.idle_until = None;
        self.wake.notify_all();
        Ok(())
    }

    /// A create of `id` begins; refused once the shim is on its way out.
    pub fn creating(&self, id: &str) -> Result<Creating<'_>> {
        let mut inner = self.lock();
        if inner.closing {
            return Err(ShimError::ShuttingDown);
        }
        inner.joins.remove(id);
        inner.creating += 1;
        inner.idle_until = None;
        Ok(Creating(self))
    }

    /// The linger a created container asks for (the most recent create's wins).
    pub fn set_linger(&self, linger: Duration) {
        self.lock().linger = linger;
    }

    /// Task `id` was deleted (its Shutdown follows).
    pub fn deleted(&self, id: &str) {
        let mut inner = self.lock();
        // Bounded: a containerd that never sends the Shutdown leaves no growing set.
        if inner.deleted.len() >= 256 {
            inner.deleted.clear();
        }
        inner.deleted.insert(id.to_string());
    }

    /// containerd's Shutdown for task `id`.
    pub fn shutdown(&self, id: &str, now: bool) {
        let mut inner = self.lock();
        let after_delete = inner.deleted.remove(id);
        let at = Instant::now();
        // Not the end of a task this shim ran (a failed create): no linger.
        inner.idle_until = Some(if after_delete { at + inner.linger } else { at });
        if now {
            // containerd wants the shim gone, containers or not.
            self.close(&mut inner);
        }
        self.wake.notify_all();
    }

    /// The watcher thread: exits the shim once it has been idle for the linger.
    fn watch(&self, has_tasks: &(dyn Fn() -> bool + Send + Sync)) {
        let mut inner = self.lock();
        while !inner.closing {
            let wait = match inner.next(Instant::now(), has_tasks()) {
                Next::Close => {
                    self.close(&mut inner);
                    return;
                }
                Next::Wait(wait) => wait,
            };
            inner = match wait {
                Some(d) => {
                    let woken = self.wake.wait_timeout(inner, d);
                    woken.unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.wake.wait(inner).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Unlinks the socket, then refuses joins (one lock: a `start` refused finds the
    /// address free), and tells the shim to exit.
    fn close(&self, inner: &mut Inner) {
        if inner.closing {
            return;
        }
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
        // After `wait`, containerd-shim removes the socket named by the `address` file of
        // the working dir (the group's first bundle): by now that path may be a new shim's.
        let _ = std::env::set_current_dir("/");
        inner.closing = true;
        info!("idle: shutting down");
        self.exit.signal();
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }
}

/// The linger a container asks for: none outside an `io.nestcache.group` group (no task
/// could join it), else the task's `linger_ms` option, else `$NESTCACHE_SHIM_LINGER_MS`,
/// else [`DEFAULT_LINGER`].
pub fn linger_for(spec: &Spec, config: &ShimConfig) -> Result<Duration> {
    let grouped = spec
        .annotations
        .get(nestcache::labels::NESTCACHE_SHIM_GROUP)
        .is_some_and(|g| !g.is_empty());
    if !grouped {
        return Ok(Duration::ZERO);
    }
    if let Some(ms) = config.linger_ms {
        return Ok(Duration::from_millis(ms));
    }
    linger_from_env(std::env::var(LINGER_ENV).ok().as_deref())
}

fn linger_from_env(value: Option<&str>) -> Result<Duration> {
    match value {
        Some(v) if !v.is_empty() => v.parse().map(Duration::from_millis).map_err(|_| {
            ShimError::Options(format!(
                "{LINGER_ENV}={v:?}: expected milliseconds (0 or more)"
            ))
        }),
        _ => Ok(DEFAULT_LINGER),
    }
}

#[cfg(test)]
mod tests;
