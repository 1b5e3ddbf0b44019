//! Removing caches: `rm` one, `gc` the expired and dead ones, and the cheap reaping of
//! expired caches every command runs.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::containerd::{Client, TaskStatus};
use crate::labels;
use crate::layout::ContentLayout;
use crate::{Error, Result};

use super::*;

/// A cache without a running task is half-created (and gc removes it) only once it is
/// older than this, so gc never races a `cache create` in progress.
const HALF_CREATED_GRACE: Duration = Duration::from_secs(120);

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
    let leased = leased_by(&info, &opts).await?;
    if !leased.is_empty() {
        return Err(Error::Invalid(format!(
            "cache {name:?}: its content dir {} is still leased by {}: remove those containers first (`nestcache rm`)",
            info.content_dir.display(),
            leased.join(", ")
        )));
    }
    remove(client, &info, opts).await
}

/// Who still leases what is in the cache's content dir, when removing the cache would
/// delete that dir (the layers under a container's overlay must never go).
async fn leased_by(info: &CacheInfo, opts: &RemoveOptions) -> Result<Vec<String>> {
    if !will_remove_dir(info, opts) {
        return Ok(Vec::new());
    }
    Ok(super::leases::live_in(&info.content_dir)
        .await?
        .live_holders())
}

fn will_remove_dir(info: &CacheInfo, opts: &RemoveOptions) -> bool {
    // An adopted cache's content dir is its container's host dir: never nestcache's.
    !info.adopted
        && !info.content_dir.as_os_str().is_empty()
        && info.content_dir.is_absolute()
        && info.content_dir != Path::new("/")
        && !opts.keep_content
        && (info.content_dir_owned || opts.remove_user_content_dir)
}

/// The nested containers running from cache `name`.
pub async fn running_users(client: &Client, name: &str) -> Result<Vec<String>> {
    client
        .running_with_labels(&[(labels::ROLE, labels::ROLE_NESTED), (labels::NAME, name)])
        .await
}

/// Stops and deletes the task, deletes the container, removes the handshake files and,
/// unless told otherwise, the content dir nestcache created. Returns whether the content
/// dir was removed. Works on half-created caches (no task, dead task). An adopted cache
/// loses its labels alone: its container, task and content dir are not nestcache's.
pub async fn remove(client: &Client, info: &CacheInfo, opts: RemoveOptions) -> Result<bool> {
    if info.adopted {
        let owner = info.client_for(client)?;
        super::adopt::unlabel(&owner, &info.id).await?;
        end_shim(&owner, info).await;
        return Ok(false);
    }
    client.stop_and_delete_task(&info.id, STOP_GRACE).await?;
    client.delete_container(&info.id).await?;
    end_shim(client, info).await;
    if info.content_dir.as_os_str().is_empty() || !info.content_dir.is_absolute() {
        return Ok(false);
    }
    if will_remove_dir(info, &opts) {
        match fs::remove_dir_all(&info.content_dir) {
            Ok(()) => {
                if let Some(top) = &info.content_dir_created {
                    remove_created_parents(&info.content_dir, top);
                }
                return Ok(true);
            }
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

/// The cache's nestcache shim, lingering for its next run (`run --runtime shim`), has
/// nothing left to wait for: it exits now if it is idle (a running nested container, as
/// TTL expiry may leave, keeps it).
async fn end_shim(client: &Client, info: &CacheInfo) {
    if client.end_group_shim(&info.shim_group()).await {
        tracing::debug!("ended the shim of cache {}", info.name);
    }
}

/// Removes the parents of `dir` that `cache create` made, up to and including `top`,
/// each only while empty: what someone else put there meanwhile stays, with its parents.
pub(super) fn remove_created_parents(dir: &Path, top: &Path) {
    if !dir.starts_with(top) || top == Path::new("/") {
        return;
    }
    for p in dir.ancestors().skip(1) {
        if !p.starts_with(top) || fs::remove_dir(p).is_err() {
            return;
        }
    }
}

/// Removes `.nestcache/cache/<name>` and, when empty, its parents up to the content dir.
pub(super) fn remove_meta(layout: &ContentLayout, name: &str) {
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
    let here = list_containers(client).await?.into_iter();
    let all = here
        .map(|c| (client.clone(), c))
        .chain(adopted_elsewhere(client, &[]).await?);
    for (ns_client, c) in all {
        let i = info(&ns_client, c).await?;
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
        let leased = leased_by(&i, &RemoveOptions::default()).await?;
        if !leased.is_empty() {
            tracing::info!("gc: cache {} is leased by {leased:?}; kept", i.name);
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
        let users = match running_users(client, &i.name).await {
            Ok(mut users) => match leased_by(&i, &RemoveOptions::default()).await {
                Ok(leased) => {
                    users.extend(leased);
                    Ok(users)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match users {
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
