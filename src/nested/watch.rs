//! `run -d --rm`: a detached container removed when it exits, as Docker's is.
//!
//! Nothing of `run` stays to wait, so `run` starts a watcher: the nestcache binary itself
//! (`__watch-rm ID`), in a session of its own, that takes over the container's owner label
//! (so the orphan reaper leaves it alone while it lives), waits on the task through
//! containerd and then removes it completely ([`cleanup::remove`]: task, network,
//! container, dir, lease, anonymous volumes). If the watcher dies, the owner it named is
//! gone and the reaper removes the container once it has exited, as for a foreground
//! `run --rm` whose process died.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{cleanup, ContainerPaths};
use crate::containerd::Client;
use crate::error::{Error, IoContext, Result};
use crate::labels;
use crate::layout::StateLayout;
use crate::process::ProcessStamp;

/// The hidden subcommand by which the nestcache binary watches a `-d --rm` container.
pub const WATCH_ARG: &str = "__watch-rm";

/// What the watcher prints once it owns the container and waits on its task.
const READY: &str = "watching";

/// How long the task gets to stop on SIGTERM if it is still there when removed.
const GRACE: Duration = Duration::from_secs(10);

/// Starts the watcher of container `id` and returns once it owns the container and waits
/// on its task (so a task that exits at once is still seen). Call before the task starts.
pub fn spawn(client: &Client, paths: &ContainerPaths, id: &str) -> Result<()> {
    let exe = std::env::current_exe().ctx(|| "find the nestcache binary".into())?;
    let log = paths.dir.join("watch.log");
    let stderr = std::fs::File::create(&log).ctx(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--address")
        .arg(client.address())
        .arg("--namespace")
        .arg(client.namespace())
        .arg("--state-dir")
        .arg(&paths.state_root)
        .arg(WATCH_ARG)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe; a session of its own keeps the watcher alive
    // when `run`'s terminal or process group goes (Ctrl-C after `run -d`).
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd
        .spawn()
        .ctx(|| format!("start the --rm watcher {} {WATCH_ARG} {id}", exe.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        // EOF (an empty line) means it failed before taking the container over.
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() == READY {
        return Ok(());
    }
    let _ = child.kill();
    let _ = child.wait();
    let why = std::fs::read_to_string(&log).unwrap_or_default();
    Err(Error::Other(format!(
        "the --rm watcher of {id} did not start: {}",
        why.lines().last().unwrap_or("no output")
    )))
}

/// The watcher's work: own container `id`, say so on stdout (`ready`), wait for its task
/// to exit, remove it. A task that is gone already (removed by `rm -f`) ends it quietly.
pub async fn watch(
    client: &Client,
    state: &StateLayout,
    id: &str,
    ready: impl FnOnce(&str),
) -> Result<()> {
    let me = ProcessStamp::current()
        .ok_or_else(|| Error::Other("cannot read this process's start time".into()))?;
    let c = client
        .update_labels(id, &[(labels::OWNER, &me.to_label())])
        .await?;
    let content_dir = PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default());
    let wait = client.wait_task(id);
    ready(READY);
    match wait.result().await {
        Ok(exit) => tracing::info!("{id} exited with {}; removing it", exit.code),
        // `rm -f` got there first.
        Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let paths = ContainerPaths::new(state, id);
    let anonymous = c.label(labels::ANON_VOLUMES);
    match cleanup::remove_with_volumes(client, id, &paths, GRACE, &content_dir, anonymous).await {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
