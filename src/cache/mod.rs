//! The file cache container: a containerd container + task, found by its name label, with
//! a host content directory bind-mounted read-write at its target path.
//!
//! - create: claim the name (the container record), prove path identity with the keeper's
//!   handshake, or undo everything and say why.
//! - find / list: by label, with the task's status and pid.
//! - rm / gc / reap: stop and delete the task, delete the container, remove what
//!   nestcache created. Reaping of expired caches is one list call, cheap enough to run on
//!   every command.
//! - touch: move the expiry (label + the keeper's deadline file + SIGUSR1).

pub mod keeper;
pub mod spec;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::containerd::{labels, Client, Container, Mount, NewContainer, NewTask, TaskStatus};
use crate::error::IoContext;
use crate::layout::{ContentLayout, StateLayout};
use crate::{Error, Result};

/// A cache's containerd container id is this prefix + its name.
pub const ID_PREFIX: &str = "nc-cache-";
/// Longest cache name (the container id must stay within containerd's 76 characters).
pub const MAX_NAME_LEN: usize = 64;

/// How long the keeper may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the keeper gets to exit on SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A cache without a running task is half-created (and gc removes it) only once it is
/// older than this, so gc never races a `cache create` in progress.
const HALF_CREATED_GRACE: Duration = Duration::from_secs(120);

/// What `cache create` is asked for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: String,
    pub path: PathBuf,
    pub content_dir: Option<PathBuf>,
    pub ttl: Option<Duration>,
    pub reuse: bool,
}

/// A cache as found in containerd.
#[derive(Debug, Clone, Serialize)]
pub struct CacheInfo {
    pub name: String,
    pub namespace: String,
    /// The containerd container id.
    pub id: String,
    /// The target path inside the cache container.
    pub path: PathBuf,
    /// The host content directory bound at `path`.
    pub content_dir: PathBuf,
    /// Whether nestcache created the content dir (and `rm` deletes it).
    pub content_dir_owned: bool,
    /// The task's status; None when the container has no task.
    pub status: Option<TaskStatus>,
    pub pid: Option<u32>,
    /// RFC 3339 UTC.
    pub created: Option<String>,
    /// RFC 3339 UTC; None = never.
    pub expires: Option<String>,
    pub expired: bool,
    #[serde(skip)]
    pub created_at: Option<SystemTime>,
    #[serde(skip)]
    pub expires_at: Option<SystemTime>,
}

impl CacheInfo {
    pub fn is_running(&self) -> bool {
        self.status == Some(TaskStatus::Running)
    }

    /// The status as a word: a task status, or `no-task`.
    pub fn status_word(&self) -> &'static str {
        self.status.map_or("no-task", TaskStatus::as_str)
    }

    fn meta_dir(&self) -> PathBuf {
        ContentLayout::new(&self.content_dir).cache_meta_dir(&self.name)
    }
}

/// What `create` did.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub info: CacheInfo,
    /// True when `--reuse` found a running cache and left it as it was.
    pub reused: bool,
}

/// What `rm` removes besides the container and task.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveOptions {
    /// Keep the content dir even if nestcache created it.
    pub keep_content: bool,
    /// Remove the content dir even if the user supplied it.
    pub remove_user_content_dir: bool,
}

/// One cache `gc` or the reaper removed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    pub name: String,
    pub reason: String,
    pub content_dir_removed: bool,
}

/// The container id of cache `name`.
pub fn container_id(name: &str) -> String {
    format!("{ID_PREFIX}{name}")
}

/// Cache names: containerd identifier rules, at most [`MAX_NAME_LEN`] characters.
pub fn validate_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::Invalid(format!(
            "invalid cache name {name:?}: longer than {MAX_NAME_LEN} characters"
        )));
    }
    crate::containerd::validate_id("cache name", name)
}

/// The target path: absolute, normalized (no `.`, `..`, `//`), not `/`, and clear of what
/// the cache container itself mounts (`/proc`, `/dev`, the keeper).
pub fn validate_path(path: &Path) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "invalid --path {}: {why}",
            path.display()
        )))
    };
    let Some(s) = path.to_str() else {
        return bad("not UTF-8");
    };
    if !path.is_absolute() {
        return bad("must be absolute");
    }
    // Path::components hides "." in the middle, so look at the text.
    if path
        .components()
        .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        || s.split('/').any(|seg| seg == "." || seg == "..")
        || s.contains("//")
        || (s.len() > 1 && s.ends_with('/'))
    {
        return bad("must be normalized (no '.', '..', '//' or trailing '/')");
    }
    if path == Path::new("/") {
        return bad("cannot be /");
    }
    for reserved in ["/proc", "/dev", spec::KEEPER_IN_CONTAINER] {
        if path.starts_with(reserved) {
            return bad(&format!("{reserved} is used by the cache container itself"));
        }
    }
    Ok(())
}

/// Finds cache `name`; a clear NotFound error when there is none.
pub async fn find(client: &Client, name: &str) -> Result<CacheInfo> {
    validate_name(name)?;
    lookup(client, name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no cache named {name:?} in namespace {} (see `nestcache cache ls`)",
            client.namespace()
        ))
    })
}

/// Cache `name`, or None.
pub async fn lookup(client: &Client, name: &str) -> Result<Option<CacheInfo>> {
    let found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_CACHE), (labels::NAME, name)])
        .await?;
    match found.into_iter().next() {
        Some(c) => Ok(Some(info(client, c).await?)),
        None => Ok(None),
    }
}

/// Every cache in the client's namespace, by name.
pub async fn list(client: &Client) -> Result<Vec<CacheInfo>> {
    let mut out = Vec::new();
    for c in list_containers(client).await? {
        out.push(info(client, c).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn list_containers(client: &Client) -> Result<Vec<Container>> {
    client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_CACHE)])
        .await
}

/// The label-only part of a cache's description (no task call).
fn info_from_labels(namespace: &str, c: &Container) -> CacheInfo {
    let expires_at = c
        .label(labels::EXPIRES)
        .and_then(|s| humantime::parse_rfc3339(s).ok());
    CacheInfo {
        name: c.label(labels::NAME).unwrap_or_default().to_string(),
        namespace: namespace.to_string(),
        id: c.id.clone(),
        path: PathBuf::from(c.label(labels::PATH).unwrap_or_default()),
        content_dir: PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default()),
        content_dir_owned: c.label(labels::CONTENT_DIR_OWNED) == Some("true"),
        status: None,
        pid: None,
        created: c.created_at.map(rfc3339),
        expires: expires_at.map(rfc3339),
        expired: expires_at.is_some_and(|e| e <= SystemTime::now()),
        created_at: c.created_at,
        expires_at,
    }
}

async fn info(client: &Client, c: Container) -> Result<CacheInfo> {
    let mut i = info_from_labels(client.namespace(), &c);
    if let Some(t) = client.task_state(&c.id).await? {
        i.status = Some(t.status);
        i.pid = (t.pid != 0).then_some(t.pid);
    }
    Ok(i)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Creates cache `opts.name` and waits until its keeper has proven that it sees the
/// content dir nestcache sees. On any failure nothing of it is left behind.
pub async fn create(client: &Client, state: &StateLayout, opts: &CreateOptions) -> Result<Created> {
    validate_name(&opts.name)?;
    validate_path(&opts.path)?;
    if let Some(ttl) = opts.ttl {
        check_ttl(ttl)?;
    }
    if let Some(existing) = lookup(client, &opts.name).await? {
        if let Some(reused) = reuse(client, opts, existing).await? {
            return Ok(reused);
        }
    }
    // From here on SIGINT / SIGTERM no longer kill the process: they make create undo
    // what it did and fail, so that an interrupted create leaves nothing behind.
    let mut interrupt = Interrupt::listen();
    let dir = ContentDir::prepare(state, &opts.name, opts.content_dir.as_deref())?;
    let keeper = keeper::install(state)?;
    let id = container_id(&opts.name);
    let expires_at = opts.ttl.map(|t| SystemTime::now() + t);
    let nonce = nonce()?;
    let spec = spec::keeper_spec(&spec::KeeperSpec {
        namespace: client.namespace(),
        container_id: &id,
        name: &opts.name,
        keeper_binary: &keeper,
        content_dir: &dir.path,
        target_path: &opts.path,
        nonce: &nonce,
    })?;
    let mut lbls: HashMap<String, String> = [
        (labels::ROLE, labels::ROLE_CACHE.to_string()),
        (labels::NAME, opts.name.clone()),
        (labels::PATH, path_str(&opts.path)?.to_string()),
        (labels::CONTENT_DIR, path_str(&dir.path)?.to_string()),
        (labels::CONTENT_DIR_OWNED, dir.owned.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(e) = expires_at {
        lbls.insert(labels::EXPIRES.to_string(), rfc3339(e));
    }
    // The container record claims the name: of two concurrent creates, one gets
    // AlreadyExists here, before touching anything the other one uses.
    let created = client
        .create_container(NewContainer {
            id: id.clone(),
            labels: lbls,
            spec,
            // The keeper needs nothing but runc, whatever runtime the client defaults to.
            runtime: Some(labels::DEFAULT_RUNTIME.to_string()),
        })
        .await;
    if let Err(e) = created {
        // Lost a race with a concurrent create of the same name? Then the content dir may
        // be the winner's: leave it.
        if client.get_container(&id).await.is_ok_and(|c| c.is_some()) {
            return Err(taken(&opts.name, client.namespace()));
        }
        dir.undo();
        return Err(e);
    }
    let layout = ContentLayout::new(&dir.path);
    let meta = layout.cache_meta_dir(&opts.name);
    let started = tokio::select! {
        r = start(client, &id, opts, &meta, &nonce, expires_at, &dir.path) => r,
        sig = interrupt.wait() => Err(Error::Other(format!(
            "cache {:?}: interrupted by {sig}; the cache was deleted",
            opts.name
        ))),
    };
    match started {
        Ok(()) => {
            let info = find(client, &opts.name).await?;
            Ok(Created {
                info,
                reused: false,
            })
        }
        Err(e) => {
            let _ = client.stop_and_delete_task(&id, STOP_GRACE).await;
            let _ = client.delete_container(&id).await;
            remove_meta(&layout, &opts.name);
            dir.undo();
            Err(e)
        }
    }
}

/// SIGINT / SIGTERM, caught instead of killing the process while a create is under way.
/// (tokio keeps its handler installed for the rest of the process.)
struct Interrupt {
    rx: tokio::sync::oneshot::Receiver<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

impl Interrupt {
    fn listen() -> Interrupt {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::oneshot::channel();
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        let task = tokio::spawn(async move {
            let (Ok(mut int), Ok(mut term)) = (int, term) else {
                return;
            };
            let which = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            let _ = tx.send(which);
        });
        Interrupt { rx, task }
    }

    /// Resolves when a signal came (at once if it came earlier); never otherwise.
    async fn wait(&mut self) -> &'static str {
        match (&mut self.rx).await {
            Ok(sig) => sig,
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn taken(name: &str, namespace: &str) -> Error {
    Error::Invalid(format!(
        "cache name {name:?} is taken in namespace {namespace}: remove it with `nestcache cache rm {name}`, pick another name, or pass --reuse with the same --path"
    ))
}

/// `--reuse`: a running cache with the same path is returned as is; a half-dead one is
/// removed (keeping its content) so that it is created anew. Anything else is an error.
async fn reuse(
    client: &Client,
    opts: &CreateOptions,
    existing: CacheInfo,
) -> Result<Option<Created>> {
    if !opts.reuse {
        return Err(taken(&opts.name, client.namespace()));
    }
    if existing.path != opts.path {
        return Err(Error::Invalid(format!(
            "cache {:?} exists with path {}, not {}: --reuse needs the same --path",
            opts.name,
            existing.path.display(),
            opts.path.display()
        )));
    }
    if let Some(want) = &opts.content_dir {
        let want_abs = fs::canonicalize(want).unwrap_or_else(|_| want.clone());
        if want_abs != existing.content_dir {
            return Err(Error::Invalid(format!(
                "cache {:?} exists with content dir {}, not {}: --reuse needs the same --content-dir",
                opts.name,
                existing.content_dir.display(),
                want.display()
            )));
        }
    }
    if existing.is_running() {
        let info = match opts.ttl {
            Some(ttl) => touch(client, &opts.name, ttl).await?,
            None => existing,
        };
        return Ok(Some(Created { info, reused: true }));
    }
    remove(
        client,
        &existing,
        RemoveOptions {
            keep_content: true,
            remove_user_content_dir: false,
        },
    )
    .await?;
    Ok(None)
}

/// Task create, start, handshake.
async fn start(
    client: &Client,
    id: &str,
    opts: &CreateOptions,
    meta: &Path,
    nonce: &str,
    expires_at: Option<SystemTime>,
    content_dir: &Path,
) -> Result<()> {
    fs::create_dir_all(meta).ctx(|| format!("create {}", meta.display()))?;
    let ack = meta.join("ack");
    match fs::remove_file(&ack) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", ack.display()), e)),
    }
    write_atomic(&meta.join("nonce"), nonce)?;
    write_atomic(
        &meta.join("deadline"),
        &deadline_secs(expires_at).to_string(),
    )?;

    // An empty tmpfs as the rootfs: runc creates the mount points (/proc, /dev, /keeper,
    // the target path) in it, then makes it read-only; nothing is written on the host.
    let rootfs = vec![Mount {
        r#type: "tmpfs".into(),
        source: "tmpfs".into(),
        options: vec!["mode=755".into(), "size=1m".into()],
        ..Default::default()
    }];
    client
        .create_task(NewTask {
            container_id: id.to_string(),
            rootfs,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::Other(format!(
                "cache {:?}: containerd could not start the cache container: {e}; \
                 if containerd runs on another host or mount namespace than nestcache, the \
                 content dir {} and the state dir must exist at the same paths for both",
                opts.name,
                content_dir.display()
            ))
        })?;
    let wait = client.wait_task(id);
    client.start_task(id).await?;

    let limit = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if fs::read_to_string(&ack).is_ok_and(|s| s.trim() == nonce) {
            break;
        }
        if wait.is_finished() {
            let exit = wait.result().await?;
            return Err(handshake_failed(opts, content_dir, meta, exit.code));
        }
        if Instant::now() > limit {
            return Err(Error::Other(format!(
                "cache {:?}: the cache container did not acknowledge the handshake within {:?} (no {} with the nonce); the cache was deleted",
                opts.name,
                HANDSHAKE_TIMEOUT,
                ack.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The handshake is done; the nonce and the ack have no further use.
    let _ = fs::remove_file(&ack);
    let _ = fs::remove_file(meta.join("nonce"));
    Ok(())
}

fn handshake_failed(opts: &CreateOptions, content_dir: &Path, meta: &Path, code: u32) -> Error {
    match code {
        keeper::EXIT_OTHER_DIR => Error::Other(format!(
            "cache {:?}: nestcache and the cache container see different directories: nestcache wrote a nonce to {} but the container did not find it under {} (containerd resolves bind mounts on its own host). Mount the host directory at the same path where nestcache runs (e.g. a hostPath volume {} mounted at {} in the pod), or pass a --content-dir that is such a mount; the cache was deleted",
            opts.name,
            meta.join("nonce").display(),
            opts.path.display(),
            content_dir.display(),
            content_dir.display(),
        )),
        keeper::EXIT_NO_ACK => Error::Other(format!(
            "cache {:?}: the cache container could not write into {} (read-only or full?); the cache was deleted",
            opts.name,
            opts.path.display()
        )),
        c => Error::Other(format!(
            "cache {:?}: the cache container exited with code {c} during the handshake; the cache was deleted",
            opts.name
        )),
    }
}

/// The content dir of a cache being created, and whether this run made it.
struct ContentDir {
    path: PathBuf,
    /// nestcache's own (default, or created because it did not exist): `rm` deletes it.
    owned: bool,
    /// Created by this very run: a failed create deletes it again.
    created_now: bool,
}

impl ContentDir {
    fn prepare(state: &StateLayout, name: &str, given: Option<&Path>) -> Result<ContentDir> {
        let (dir, owned_if_exists) = match given {
            Some(d) => (d.to_path_buf(), false),
            None => (state.default_content_dir(name), true),
        };
        let created_now = match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => false,
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "content dir {} exists and is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(&dir).ctx(|| format!("create content dir {}", dir.display()))?;
                true
            }
            Err(e) => return Err(Error::io(format!("content dir {}", dir.display()), e)),
        };
        // containerd needs an absolute bind source; resolve symlinks so that the label
        // names the real directory.
        let path = fs::canonicalize(&dir).ctx(|| format!("resolve {}", dir.display()))?;
        Ok(ContentDir {
            path,
            owned: owned_if_exists || created_now,
            created_now,
        })
    }

    fn undo(&self) {
        if self.created_now {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes cache `name`.
/// Refuses while a nested container runs from the cache: removing its content dir would
/// pull the layers and the cache path from under it.
pub async fn rm(client: &Client, name: &str, opts: RemoveOptions) -> Result<bool> {
    let info = find(client, name).await?;
    let users = running_users(client, name).await?;
    if !users.is_empty() {
        return Err(Error::Invalid(format!(
            "cache {name:?} is in use by running nested container(s) {}: stop or remove them first (`nestcache rm`)",
            users.join(", ")
        )));
    }
    remove(client, &info, opts).await
}

/// The nested containers running from cache `name`.
pub async fn running_users(client: &Client, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for c in client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED), (labels::NAME, name)])
        .await?
    {
        let running = client
            .task_state(&c.id)
            .await?
            .is_some_and(|t| t.status != TaskStatus::Stopped);
        if running {
            out.push(c.id);
        }
    }
    Ok(out)
}

/// Stops and deletes the task, deletes the container, removes the handshake files and,
/// unless told otherwise, the content dir nestcache created. Returns whether the content
/// dir was removed. Works on half-created caches (no task, dead task).
pub async fn remove(client: &Client, info: &CacheInfo, opts: RemoveOptions) -> Result<bool> {
    client.stop_and_delete_task(&info.id, STOP_GRACE).await?;
    client.delete_container(&info.id).await?;
    if info.content_dir.as_os_str().is_empty() || !info.content_dir.is_absolute() {
        return Ok(false);
    }
    let remove_dir = !opts.keep_content && (info.content_dir_owned || opts.remove_user_content_dir);
    if remove_dir && info.content_dir != Path::new("/") {
        match fs::remove_dir_all(&info.content_dir) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "cache {:?} was deleted, but removing its content dir {} failed",
                        info.name,
                        info.content_dir.display()
                    ),
                    e,
                ))
            }
        }
    }
    remove_meta(&ContentLayout::new(&info.content_dir), &info.name);
    Ok(false)
}

/// Removes `.nestcache/cache/<name>` and, when empty, its parents up to the content dir.
fn remove_meta(layout: &ContentLayout, name: &str) {
    let dir = layout.cache_meta_dir(name);
    let _ = fs::remove_dir_all(&dir);
    if let Some(parent) = dir.parent() {
        if fs::remove_dir(parent).is_ok() {
            let _ = fs::remove_dir(layout.meta_dir());
        }
    }
}

/// Deletes expired caches, and half-created ones (no running task) older than a grace
/// period.
pub async fn gc(client: &Client) -> Result<Vec<Reaped>> {
    let now = SystemTime::now();
    let mut out = Vec::new();
    for c in list_containers(client).await? {
        let i = info(client, c).await?;
        let reason = if i.expired {
            format!("expired at {}", i.expires.as_deref().unwrap_or("?"))
        } else if i.status == Some(TaskStatus::Stopped) {
            // create removes a keeper that dies during the handshake itself, so a stopped
            // task is never a create in progress.
            "its task stopped".to_string()
        } else if !i.is_running() && i.created_at.map_or(true, |t| t + HALF_CREATED_GRACE <= now) {
            format!("half-created or dead (task: {})", i.status_word())
        } else {
            continue;
        };
        if !running_users(client, &i.name).await?.is_empty() {
            tracing::info!("gc: cache {} is in use by nested containers; kept", i.name);
            continue;
        }
        let content_dir_removed = remove(client, &i, RemoveOptions::default()).await?;
        out.push(Reaped {
            name: i.name,
            reason,
            content_dir_removed,
        });
    }
    Ok(out)
}

/// Deletes expired caches: one list call when none expired. Every nestcache command runs
/// it; failures are logged, never fatal.
pub async fn reap_expired(client: &Client) -> Vec<Reaped> {
    let containers = match list_containers(client).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("reaping expired caches: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for c in containers {
        let i = info_from_labels(client.namespace(), &c);
        if !i.expired {
            continue;
        }
        match running_users(client, &i.name).await {
            Ok(users) if users.is_empty() => {}
            Ok(users) => {
                tracing::info!("expired cache {} is in use by {users:?}; kept", i.name);
                continue;
            }
            Err(e) => {
                tracing::warn!("reaping expired cache {}: {e}", i.name);
                continue;
            }
        }
        match remove(client, &i, RemoveOptions::default()).await {
            Ok(content_dir_removed) => out.push(Reaped {
                reason: format!("expired at {}", i.expires.as_deref().unwrap_or("?")),
                name: i.name,
                content_dir_removed,
            }),
            Err(e) => tracing::warn!("reaping expired cache {}: {e}", i.name),
        }
    }
    out
}

/// Moves cache `name`'s expiry to now + `ttl`.
pub async fn touch(client: &Client, name: &str, ttl: Duration) -> Result<CacheInfo> {
    check_ttl(ttl)?;
    let i = find(client, name).await?;
    if !i.is_running() {
        return Err(Error::Invalid(format!(
            "cache {name:?} has no running task (task: {}): remove it with `nestcache cache rm {name}` and create it again",
            i.status_word()
        )));
    }
    let expires_at = SystemTime::now() + ttl;
    // The keeper's file first: should the label update fail, the keeper outlives the
    // label and the reaper still removes the cache on time.
    let meta = i.meta_dir();
    fs::create_dir_all(&meta).ctx(|| format!("create {}", meta.display()))?;
    write_atomic(
        &meta.join("deadline"),
        &deadline_secs(Some(expires_at)).to_string(),
    )?;
    client
        .update_labels(&i.id, &[(labels::EXPIRES, &rfc3339(expires_at))])
        .await?;
    // Wake the keeper so it re-reads the deadline.
    client.kill_task(&i.id, libc::SIGUSR1, false).await?;
    find(client, name).await
}

/// The longest TTL (beyond it, use no TTL).
const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl.is_zero() {
        return Err(Error::Invalid("--ttl must be longer than 0s".into()));
    }
    if ttl > MAX_TTL {
        return Err(Error::Invalid(format!(
            "--ttl {} is longer than 10 years; leave --ttl out for a cache that does not expire",
            humantime::format_duration(ttl)
        )));
    }
    Ok(())
}

/// The keeper's deadline: unix seconds, rounded up; 0 = none.
fn deadline_secs(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .ctx(|| format!("create a temp file in {}", dir.display()))?;
    tmp.write_all(contents.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .ctx(|| format!("write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .ctx(|| format!("write {}", path.display()))?;
    Ok(())
}

fn nonce() -> Result<String> {
    let mut buf = [0u8; 16];
    let mut f = fs::File::open("/dev/urandom").ctx(|| "open /dev/urandom".into())?;
    std::io::Read::read_exact(&mut f, &mut buf).ctx(|| "read /dev/urandom".into())?;
    Ok(hex::encode(buf))
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Invalid(format!("path {p:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("build-42").is_ok());
        assert!(validate_name(&"a".repeat(64)).is_ok());
        assert!(validate_name(&"a".repeat(65)).is_err());
        assert!(validate_name("Bad/name").is_err());
        assert!(validate_name("").is_err());
    }

    #[test]
    fn paths() {
        for ok in ["/cache", "/a/b-c/d"] {
            assert!(validate_path(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "cache", "/", "/a/../b", "/a/./b", "/a//b", "/a/", "/proc/x", "/dev", "/keeper",
        ] {
            assert!(validate_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn deadline_rounds_up() {
        assert_eq!(deadline_secs(None), 0);
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        assert_eq!(deadline_secs(Some(t)), 2);
        assert_eq!(deadline_secs(Some(UNIX_EPOCH + Duration::from_secs(7))), 7);
    }
}
