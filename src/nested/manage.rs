//! ps / stop / rm / logs / verify for nested containers (role label `nested`).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::verify::{verify_mount, Verification};
use super::{cleanup, ContainerPaths};
use crate::containerd::{Client, Container, ExitStatus, TaskStatus};
use crate::error::{Error, IoContext, Result};
use crate::labels;
use crate::layout::StateLayout;

/// A nested container as `ps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NestedInfo {
    pub id: String,
    pub image: String,
    pub manifest_digest: String,
    pub cache: String,
    /// `running`, `created`, `stopped` (task exited, not yet deleted), `exited` (no task).
    pub status: String,
    pub pid: Option<u32>,
    pub exit_code: Option<u32>,
    /// Where the cache is mounted inside; None with `--no-mount-cache`.
    pub cache_target: Option<PathBuf>,
    pub runtime: String,
    /// RFC 3339 UTC.
    pub created: Option<String>,
    /// Every containerd label of the container (nestcache's and the user's).
    pub labels: std::collections::HashMap<String, String>,
}

impl NestedInfo {
    pub fn is_running(&self) -> bool {
        self.status == TaskStatus::Running.as_str()
    }
}

/// The nested container `id`; NotFound (or Invalid for a container that is not nested).
pub async fn get(client: &Client, id: &str) -> Result<Container> {
    let c = client.get_container(id).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no nested container {id:?} in namespace {} (see `nestcache ps -a`)",
            client.namespace()
        ))
    })?;
    if c.label(labels::ROLE) != Some(labels::ROLE_NESTED) {
        return Err(Error::Invalid(format!(
            "container {id:?} is not a nested container of nestcache (role {:?})",
            c.label(labels::ROLE).unwrap_or("none")
        )));
    }
    Ok(c)
}

async fn info(client: &Client, c: &Container) -> Result<NestedInfo> {
    let task = client.task_state(&c.id).await?;
    let (status, pid, exit_code) = match task {
        Some(t) if t.status == TaskStatus::Stopped => {
            ("stopped".to_string(), None, Some(t.exit_status))
        }
        Some(t) => (t.status.as_str().to_string(), Some(t.pid), None),
        None => (
            "exited".to_string(),
            None,
            c.label(labels::EXIT_CODE).and_then(|s| s.parse().ok()),
        ),
    };
    Ok(NestedInfo {
        id: c.id.clone(),
        image: c.label(labels::IMAGE).unwrap_or_default().to_string(),
        manifest_digest: c.label(labels::MANIFEST).unwrap_or_default().to_string(),
        cache: c.label(labels::NAME).unwrap_or_default().to_string(),
        status,
        pid,
        exit_code,
        cache_target: (c.label(labels::MOUNT_CACHE) == Some("true"))
            .then(|| PathBuf::from(c.label(labels::PATH).unwrap_or_default())),
        runtime: c.runtime.clone(),
        created: c
            .created_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        labels: c.labels.clone(),
    })
}

/// Nested containers, oldest first; with `all` false only those with a live task.
pub async fn list(client: &Client, all: bool) -> Result<Vec<NestedInfo>> {
    let mut found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED)])
        .await?;
    found.sort_by_key(|c| c.created_at.unwrap_or(SystemTime::UNIX_EPOCH));
    let mut out = Vec::new();
    for c in &found {
        let i = info(client, c).await?;
        if all || matches!(i.status.as_str(), "running" | "created" | "paused") {
            out.push(i);
        }
    }
    Ok(out)
}

/// Checks, now, that running nested container `id` sees its cache's content.
pub async fn verify(client: &Client, id: &str) -> Result<Verification> {
    let c = get(client, id).await?;
    if c.label(labels::MOUNT_CACHE) != Some("true") {
        return Err(Error::Invalid(format!(
            "nested container {id} was started without the cache mounted (--no-mount-cache): nothing to verify"
        )));
    }
    let target = PathBuf::from(c.label(labels::PATH).unwrap_or_default());
    let content_dir = PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default());
    let pid = match client.task_state(id).await? {
        Some(t) if t.status == TaskStatus::Running || t.status == TaskStatus::Created => t.pid,
        _ => {
            return Err(Error::Invalid(format!(
                "nested container {id} is not running: nothing to verify"
            )))
        }
    };
    verify_mount(pid, &target, &content_dir).await
}

/// Stops nested container `id` (SIGTERM, SIGKILL after `grace`), deletes its task and
/// its network (as `docker stop` does), and keeps the exit code; the container stays
/// until `rm`.
pub async fn stop(
    client: &Client,
    state: &StateLayout,
    id: &str,
    grace: Option<Duration>,
) -> Result<Option<ExitStatus>> {
    let c = get(client, id).await?;
    // `run --stop-signal/--stop-timeout` recorded them; `stop -t` overrides the timeout.
    let signal = c
        .label(labels::STOP_SIGNAL)
        .and_then(|s| s.parse().ok())
        .unwrap_or(libc::SIGTERM);
    let grace = grace
        .or_else(|| {
            c.label(labels::STOP_TIMEOUT)
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs)
        })
        .unwrap_or(DEFAULT_STOP_TIMEOUT);
    let exit = match client.stop_and_delete_task_with(id, signal, grace).await {
        Ok(e) => e,
        // The task ended and was deleted meanwhile (by the `run` that waited for it).
        Err(Error::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    crate::network::detach(&crate::network::NetLayout::new(state.root()), id).await?;
    if let Some(e) = &exit {
        match client
            .update_labels(id, &[(labels::EXIT_CODE, &e.code.to_string())])
            .await
        {
            // The `run --rm` that waited for it removed the container meanwhile.
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(exit)
}

/// How long `stop` waits after the stop signal before SIGKILL, as Docker.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes nested container `id` (`force`: a running one too), with its anonymous
/// volumes when `volumes` (`rm -v`) or when it was run with `--rm`, as Docker does.
pub async fn remove(
    client: &Client,
    state: &StateLayout,
    id: &str,
    force: bool,
    volumes: bool,
) -> Result<()> {
    let c = get(client, id).await?;
    if let Some(t) = client.task_state(id).await? {
        if t.status != TaskStatus::Stopped && !force {
            return Err(Error::Invalid(format!(
                "nested container {id} is {}: stop it first (`nestcache stop {id}`) or use rm -f",
                t.status
            )));
        }
    }
    let grace = if force {
        Duration::ZERO
    } else {
        Duration::from_secs(10)
    };
    let content_dir = PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default());
    let anonymous = (volumes || c.label(labels::RM) == Some("true"))
        .then(|| c.label(labels::ANON_VOLUMES))
        .flatten();
    cleanup::remove_with_volumes(
        client,
        id,
        &ContainerPaths::new(state, id),
        grace,
        &content_dir,
        anonymous,
    )
    .await
}

/// Copies a detached container's output to `out`; with `follow`, keeps copying until the
/// task has stopped.
pub async fn logs(
    client: &Client,
    state: &StateLayout,
    id: &str,
    follow: bool,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    get(client, id).await?;
    let path = state.container_log_file(id);
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(format!(
                "no log for {id} at {} (only detached containers keep their output)",
                path.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    let mut pos = 0u64;
    loop {
        f.seek(SeekFrom::Start(pos))
            .ctx(|| format!("seek {}", path.display()))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .ctx(|| format!("read {}", path.display()))?;
        pos += buf.len() as u64;
        out.write_all(&buf).ctx(|| "write the log".into())?;
        out.flush().ctx(|| "write the log".into())?;
        if !follow {
            return Ok(());
        }
        let running = matches!(
            client.task_state(id).await?,
            Some(t) if t.status != TaskStatus::Stopped
        );
        if !running && buf.is_empty() {
            return Ok(());
        }
        if buf.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Before cache `name` goes: refuses while any of its nested containers runs, and removes
/// the exited ones (they cannot run again without the cache). Returns those removed.
pub async fn remove_exited_of_cache(
    client: &Client,
    state: &StateLayout,
    name: &str,
) -> Result<Vec<String>> {
    let users = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED), (labels::NAME, name)])
        .await?;
    let mut running = Vec::new();
    for c in &users {
        if let Some(t) = client.task_state(&c.id).await? {
            if t.status != TaskStatus::Stopped {
                running.push(c.id.clone());
            }
        }
    }
    if !running.is_empty() {
        return Err(Error::Invalid(format!(
            "cache {name:?} is in use by running nested container(s) {}: stop or remove them first (`nestcache rm`)",
            running.join(", ")
        )));
    }
    let mut removed = Vec::new();
    for c in users {
        let content_dir = PathBuf::from(c.label(labels::CONTENT_DIR).unwrap_or_default());
        let paths = ContainerPaths::new(state, &c.id);
        cleanup::remove(client, &c.id, &paths, Duration::ZERO, &content_dir).await?;
        removed.push(c.id);
    }
    Ok(removed)
}

/// `logs` with Docker's options: the JSON log the log driver keeps (streams apart,
/// times), else a raw log (no times there: a container logged by an older nestcache).
pub async fn logs_with(
    client: &Client,
    state: &StateLayout,
    id: &str,
    opts: &super::logs::LogOptions,
    out: &mut (dyn super::logs::Sink + Send),
) -> Result<()> {
    get(client, id).await?;
    let json = ContainerPaths::new(state, id).dir.join(super::JSON_LOG);
    if json.exists() {
        let running = || async {
            Ok(matches!(
                client.task_state(id).await?,
                Some(t) if t.status != TaskStatus::Stopped
            ))
        };
        return super::logs::print_json_log(&json, opts, out, running).await;
    }
    if opts.since.is_some() || opts.timestamps || opts.tail.is_some() {
        return Err(Error::Invalid(format!(
            "{id} keeps a raw log (run by an older nestcache, or not through its log driver): --since, --tail and -t need the JSON log"
        )));
    }
    struct Raw<'a>(&'a mut (dyn super::logs::Sink + Send));
    impl Write for Raw<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .line("stdout", buf)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    logs(client, state, id, opts.follow, &mut Raw(out)).await
}

/// The pid of the running (or created) task of nested container `id`; Invalid when it
/// has none.
pub async fn running_pid(client: &Client, id: &str) -> Result<u32> {
    match client.task_state(id).await? {
        Some(t) if matches!(t.status, TaskStatus::Running | TaskStatus::Created) => Ok(t.pid),
        Some(t) => Err(Error::Invalid(format!(
            "nested container {id} is {} (not running)",
            t.status
        ))),
        None => Err(Error::Invalid(format!(
            "nested container {id} is not running (no task)"
        ))),
    }
}

/// Sends `signal` to the init process of nested container `id` (as `docker kill`: the
/// container must be running).
pub async fn kill(client: &Client, id: &str, signal: i32) -> Result<()> {
    get(client, id).await?;
    running_pid(client, id).await?;
    client.kill_task(id, signal, false).await
}

/// Waits until nested container `id` has stopped; returns its exit code (at once for a
/// container that already has).
pub async fn wait(client: &Client, id: &str) -> Result<u32> {
    let c = get(client, id).await?;
    // In flight before the state is read, so an exit in between is not missed.
    let wait = client.wait_task(id);
    match client.task_state(id).await? {
        Some(t) if t.status == TaskStatus::Stopped => Ok(t.exit_status),
        Some(_) => match wait.result().await {
            Ok(e) => Ok(e.code),
            // The task was deleted (by `stop`, or the waiting `run`) while we waited: the
            // code is in the label by now.
            Err(Error::NotFound(_)) => recorded_exit(&get(client, id).await?),
            Err(e) => Err(e),
        },
        None => recorded_exit(&c),
    }
}

fn recorded_exit(c: &Container) -> Result<u32> {
    c.label(labels::EXIT_CODE)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "nested container {} has no task and no recorded exit code",
                c.id
            ))
        })
}

/// Parses a signal as `docker kill -s` takes it: `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| Error::Invalid(format!("invalid signal {s:?}: no signal {n}")));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| Error::Invalid(format!("invalid signal {s:?} (e.g. TERM, SIGKILL, 9)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        for bad in ["", "SIGNOPE", "0x9", "999", "-1"] {
            assert!(matches!(parse_signal(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}
