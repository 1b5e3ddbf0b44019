//! Removing a nested container completely: task (the shim unmounts the rootfs when it is
//! deleted), its network (CNI DEL, namespace, ports, /etc files), container record, its
//! dir (overlay links, upper, work, FIFOs, log), then its store lease (last: while
//! anything of it may still use the layers, they stay).

use std::path::Path;
use std::time::Duration;

use super::ContainerPaths;
use crate::containerd::Client;
use crate::error::{Error, Result};

/// Stops (SIGTERM, SIGKILL after `grace`) and deletes the task, deletes the container and
/// its dir, and releases its lease in the store at `content_dir`. Parts already gone are
/// fine, so this can run after any failure.
pub async fn remove(
    client: &Client,
    id: &str,
    paths: &ContainerPaths,
    grace: Duration,
    content_dir: &Path,
) -> Result<()> {
    // The network is nestcache's (its namespace is bind-mounted): CNI DEL need not wait
    // for the task's delete, so both run at once.
    let layout = crate::network::NetLayout::new(&paths.state_root);
    let (stopped, detached) = tokio::join!(
        client.stop_and_delete_task(id, grace),
        crate::network::detach(&layout, id)
    );
    match stopped {
        // Deleted meanwhile by a concurrent `stop` or `rm`: what we wanted.
        Ok(_) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    // Before the record goes: a DEL that keeps failing leaves the container for `rm`
    // (or the reaper) to try again.
    detached?;
    client.delete_container(id).await?;
    remove_dir(&paths.dir)?;
    super::release_lease(client, id, content_dir)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

/// [`remove_with_volumes`] for a `run --rm` container whose exit `run` has waited for:
/// the task is deleted without a state query first (one that still runs after all is
/// stopped as `remove` would), and once it is gone the container record, its dir and
/// its lease go at once: the rootfs is unmounted, so nothing uses the layers any more, and
/// a record whose delete fails still carries `--rm`'s label for the reaper to finish.
pub async fn remove_exited(
    client: &Client,
    id: &str,
    paths: &ContainerPaths,
    content_dir: &Path,
    anonymous: Option<&str>,
) -> Result<()> {
    let layout = crate::network::NetLayout::new(&paths.state_root);
    let delete = async {
        match client.delete_task(id).await {
            Ok(_) => Ok(()),
            Err(_) => match client.stop_and_delete_task(id, EXITED_GRACE).await {
                Ok(_) | Err(Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            },
        }
    };
    let (deleted, detached) = tokio::join!(delete, crate::network::detach(&layout, id));
    deleted?;
    detached?;
    let local = {
        let (client, id, dir) = (client.clone(), id.to_string(), paths.dir.clone());
        let content_dir = content_dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            remove_dir(&dir)?;
            super::release_lease(&client, &id, &content_dir)
        })
    };
    let (record, local) = tokio::join!(client.delete_container(id), local);
    record?;
    local.map_err(|e| Error::Other(format!("removing the dir and lease of {id}: {e}")))??;
    remove_anonymous_volumes(paths, anonymous)
}

/// How long a task that was to have exited gets after SIGTERM (as `run`'s own cleanup).
const EXITED_GRACE: Duration = Duration::from_secs(10);

/// [`remove`], then the container's anonymous volumes (`anonymous`: the value of its
/// `io.nestcache.anonymous-volumes` label): for `--rm` containers and `rm -v`.
pub async fn remove_with_volumes(
    client: &Client,
    id: &str,
    paths: &ContainerPaths,
    grace: Duration,
    content_dir: &Path,
    anonymous: Option<&str>,
) -> Result<()> {
    remove(client, id, paths, grace, content_dir).await?;
    remove_anonymous_volumes(paths, anonymous)
}

/// The volumes an `io.nestcache.anonymous-volumes` label value names.
fn remove_anonymous_volumes(paths: &ContainerPaths, anonymous: Option<&str>) -> Result<()> {
    let names = super::volumes::names_in_label(anonymous);
    let state = crate::layout::StateLayout::new(&paths.state_root);
    super::volumes::remove_dirs(&state, &names)
}
