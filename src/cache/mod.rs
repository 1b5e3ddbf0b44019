//! The file cache container: a containerd container + task, found by its name label, with
//! a host content directory bind-mounted read-write at its target path.
//!
//! - create (`create.rs`): claim the name (the container record), prove path identity with the keeper's
//!   handshake, or undo everything and say why.
//! - find / list (here): by label, with the task's status and pid.
//! - rm / gc / reap (`remove.rs`): stop and delete the task, delete the container, remove what
//!   nestcache created. Reaping of expired caches is one list call, cheap enough to run on
//!   every command.
//! - touch (`ttl.rs`): move the expiry (label + the keeper's deadline file + SIGUSR1).
//! - adopt (`adopt.rs`, `first.rs`): the container nestcache runs in becomes the cache
//!   when it has a host dir at the target path (labels only; `rm` takes them away again).
//!   Such a cache may live in CRI's namespace `k8s.io`: `find` and `ls` look there too.

mod adopt;
mod create;
pub(crate) mod first;
pub mod keeper;
pub mod leases;
mod remove;
pub mod spec;
mod ttl;

pub use adopt::{AdoptError, AdoptMode};
pub use create::create;
pub use remove::{gc, reap_expired, remove, rm, running_users};
pub use ttl::touch;

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::containerd::{Client, Container, TaskStatus};
use crate::error::IoContext;
use crate::labels;
use crate::layout::ContentLayout;
use crate::{Error, Result};

/// A cache's containerd container id is this prefix + its name.
pub const ID_PREFIX: &str = "nc-cache-";
/// Longest cache name (the container id must stay within containerd's 76 characters).
pub const MAX_NAME_LEN: usize = 64;

/// How long the keeper gets to exit on SIGTERM before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// What `cache create` is asked for.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: String,
    pub path: PathBuf,
    pub content_dir: Option<PathBuf>,
    pub ttl: Option<Duration>,
    pub reuse: bool,
    pub adopt: AdoptMode,
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
    /// The container is not nestcache's but the one `cache create` ran in, labelled as
    /// the cache: `rm` and `gc` only take the labels away.
    pub adopted: bool,
    /// The topmost dir `create` made for the content dir (itself or a parent), if any.
    #[serde(skip)]
    pub content_dir_created: Option<PathBuf>,
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

    /// The shim group nested containers of this cache share (the runc or nestcache shim
    /// annotation): the cache container's id, and for an adopted cache the id a cache
    /// container would have, so that nested containers never join the first container's
    /// own shim.
    pub fn shim_group(&self) -> String {
        container_id(&self.name)
    }

    /// A client in the cache's namespace (an adopted cache may be in another one).
    pub fn client_for(&self, client: &Client) -> Result<Client> {
        if self.namespace == client.namespace() {
            Ok(client.clone())
        } else {
            client.with_namespace(&self.namespace)
        }
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
    /// True when the container nestcache runs in became the cache.
    pub adopted: bool,
    /// Why it did not, when a cache container was started instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_adopted: Option<String>,
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

/// [`find`] from the labels alone: no `status` or `pid` (its keeper task's state is not
/// asked for), what a nested run needs.
pub async fn find_without_status(client: &Client, name: &str) -> Result<CacheInfo> {
    validate_name(name)?;
    match find_container(client, name).await? {
        Some((c, container)) => Ok(info_from_labels(c.namespace(), &container)),
        None => Err(Error::NotFound(format!(
            "no cache named {name:?} in namespace {} (see `nestcache cache ls`)",
            client.namespace()
        ))),
    }
}

/// Cache `name`, or None: in the client's namespace, else an adopted one in CRI's.
pub async fn lookup(client: &Client, name: &str) -> Result<Option<CacheInfo>> {
    match find_container(client, name).await? {
        Some((c, container)) => Ok(Some(info(&c, container).await?)),
        None => Ok(None),
    }
}

/// The container of cache `name`, and a client in its namespace.
async fn find_container(client: &Client, name: &str) -> Result<Option<(Client, Container)>> {
    let found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_CACHE), (labels::NAME, name)])
        .await?;
    if let Some(c) = found.into_iter().next() {
        return Ok(Some((client.clone(), c)));
    }
    Ok(adopted_elsewhere(client, &[(labels::NAME, name)])
        .await?
        .into_iter()
        .next())
}

/// Every cache in the client's namespace, and those adopted in CRI's, by name.
pub async fn list(client: &Client) -> Result<Vec<CacheInfo>> {
    let mut out = Vec::new();
    for c in list_containers(client).await? {
        out.push(info(client, c).await?);
    }
    for (c, container) in adopted_elsewhere(client, &[]).await? {
        out.push(info(&c, container).await?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Adopted caches in CRI's namespace (where Kubernetes' containers are) matching `more`,
/// when the client's namespace is another, with a client in that namespace.
pub(crate) async fn adopted_elsewhere(
    client: &Client,
    more: &[(&str, &str)],
) -> Result<Vec<(Client, Container)>> {
    if client.namespace() == first::CRI_NAMESPACE {
        return Ok(Vec::new());
    }
    let cri = client.with_namespace(first::CRI_NAMESPACE)?;
    let mut pairs = vec![
        (labels::ROLE, labels::ROLE_CACHE),
        (labels::ADOPTED, "true"),
    ];
    pairs.extend_from_slice(more);
    let found = cri.list_by_labels(&pairs).await?;
    Ok(found.into_iter().map(|c| (cri.clone(), c)).collect())
}

pub(crate) async fn list_containers(client: &Client) -> Result<Vec<Container>> {
    client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_CACHE)])
        .await
}

/// The label-only part of a cache's description (no task call).
pub(crate) fn info_from_labels(namespace: &str, c: &Container) -> CacheInfo {
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
        adopted: c.label(labels::ADOPTED) == Some("true"),
        content_dir_created: c.label(labels::CONTENT_DIR_CREATED).map(PathBuf::from),
        status: None,
        pid: None,
        created: c.created_at.map(rfc3339),
        expires: expires_at.map(rfc3339),
        expired: expires_at.is_some_and(|e| e <= SystemTime::now()),
        created_at: c.created_at,
        expires_at,
    }
}

pub(crate) async fn info(client: &Client, c: Container) -> Result<CacheInfo> {
    let mut i = info_from_labels(client.namespace(), &c);
    if let Some(t) = client.task_state(&c.id).await? {
        i.status = Some(t.status);
        i.pid = (t.pid != 0).then_some(t.pid);
    }
    Ok(i)
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    crate::fsutil::write_atomic(path, contents.as_bytes())
        .ctx(|| format!("write {}", path.display()))
}

pub(crate) fn path_str(p: &Path) -> Result<&str> {
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
}
