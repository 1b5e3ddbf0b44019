//! Orphans: a `run --rm` whose `nestcache run` process died (SIGKILL, OOM, a lost
//! terminal) leaves its container behind, with its task, its overlay mount and its dir.
//! Every command that connects reaps those whose process has exited and whose owner (the
//! `run` process, by pid and start time) is gone; a process still running is left to
//! run, as Docker leaves an `--rm` container running when its client goes.

use std::path::PathBuf;
use std::time::Duration;

use super::{cleanup, ContainerPaths};
use crate::containerd::{labels, Client, Container, TaskStatus};
use crate::layout::StateLayout;
use crate::process::ProcessStamp;
use crate::Result;

/// How long a created-but-never-started orphan gets to stop on SIGTERM.
const ORPHAN_GRACE: Duration = Duration::from_secs(1);

/// Removes every orphaned `--rm` container: one list call when there are none. Returns
/// the ids removed; failures are logged, never fatal (the next command tries again).
pub async fn reap_orphans(client: &Client, state: &StateLayout) -> Vec<String> {
    let found = match client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED), (labels::RM, "true")])
        .await
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("looking for orphaned nested containers: {e}");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for c in found {
        match reap_one(client, state, &c).await {
            Ok(true) => out.push(c.id),
            Ok(false) => {}
            Err(e) => tracing::warn!("reaping orphaned nested container {}: {e}", c.id),
        }
    }
    out
}

async fn reap_one(client: &Client, state: &StateLayout, c: &Container) -> Result<bool> {
    let Some(owner) = c.label(labels::OWNER).and_then(ProcessStamp::from_label) else {
        return Ok(false);
    };
    if owner.is_alive() {
        return Ok(false);
    }
    let running = client
        .task_state(&c.id)
        .await?
        .is_some_and(|t| !matches!(t.status, TaskStatus::Stopped | TaskStatus::Created));
    if running {
        return Ok(false);
    }
    let content_dir = PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default());
    let paths = ContainerPaths::new(state, &c.id);
    let anonymous = c.label(labels::ANON_VOLUMES);
    cleanup::remove_with_volumes(client, &c.id, &paths, ORPHAN_GRACE, &content_dir, anonymous)
        .await?;
    tracing::info!(
        "reaped orphaned nested container {} (its run {} is gone)",
        c.id,
        owner.pid
    );
    Ok(true)
}
