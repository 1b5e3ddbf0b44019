//! Removing a nested container completely: task (the shim unmounts the rootfs when it is
//! deleted), its network (CNI DEL, namespace, ports, /etc files), container record, then
//! its dir (overlay links, upper, work, FIFOs, log).

use std::time::Duration;

use super::ContainerPaths;
use crate::containerd::Client;
use crate::error::{Error, Result};

/// Stops (SIGTERM, SIGKILL after `grace`) and deletes the task, deletes the container and
/// its dir. Parts already gone are fine, so this can run after any failure.
pub async fn remove(
    client: &Client,
    id: &str,
    paths: &ContainerPaths,
    grace: Duration,
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
    match std::fs::remove_dir_all(&paths.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", paths.dir.display()), e)),
    }
}
