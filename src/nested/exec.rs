//! `nestcache exec`: another process in a running nested container, through the task
//! service's Exec, with the container's own process settings (env, capabilities,
//! rlimits, no-new-privileges, apparmor) and the flags on top, as `docker exec` does.
//!
//! Stdio as for `run`: FIFOs in `<container dir>/exec-<exec id>/`, opened before the
//! exec call; `-d` gives the process no stdio at all (Docker discards it too).

use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;

use super::exec_error::{classify, ExecError};
use super::manage::{get, running_pid};
use super::rootpath::ContainerRoot;
use crate::containerd::io::{Fifos, RawTerminal, Stdio};
use crate::containerd::{Client, ExitStatus};
use crate::error::{Error, Result};
use crate::layout::StateLayout;
use crate::signals::Signals;
use crate::user::UserDb;

/// What `exec` is asked for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub command: Vec<String>,
    /// KEY=VALUE, or KEY to pass the caller's value.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// USER[:GROUP], resolved through the container's own /etc/passwd and /etc/group.
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    pub detach: bool,
}

/// Runs the command in container `id`; returns its exit status (None when detached).
pub async fn exec(
    client: &Client,
    state: &StateLayout,
    id: &str,
    opts: &ExecOptions,
) -> Result<Option<ExitStatus>> {
    if opts.command.is_empty() {
        return Err(Error::Invalid(format!("exec {id}: no command given")));
    }
    if opts.detach && opts.interactive {
        return Err(Error::Invalid(
            "-i cannot be combined with -d: a detached exec has no stdin".into(),
        ));
    }
    let c = get(client, id).await?;
    let pid = running_pid(client, id).await?;
    let base = c.spec()?.process().clone().unwrap_or_default();
    let process = process_for(&base, &ContainerRoot::of_pid(pid)?, opts)?;
    let exec_id = super::generate_id()?.replacen("nested-", "exec-", 1);
    if opts.detach {
        client
            .exec_process(id, &exec_id, &process, &Stdio::null())
            .await?;
        if let Err(e) = client.start_process(id, &exec_id).await {
            let _ = client.delete_process(id, &exec_id).await;
            return Err(invoke_error(id, &process, e));
        }
        return Ok(None);
    }
    let dir = state.container_dir(id).join(&exec_id);
    let fifos = Fifos::create(&dir, opts.interactive, opts.tty)?;
    let result = attached(client, id, &exec_id, &process, &fifos, opts.tty).await;
    fifos.remove();
    let _ = std::fs::remove_dir(&dir);
    // The exec'd process stays in the task's table until deleted; also after a failure.
    client.delete_process(id, &exec_id).await?;
    result.map(Some)
}

async fn attached(
    client: &Client,
    id: &str,
    exec_id: &str,
    process: &Process,
    fifos: &Fifos,
    tty: bool,
) -> Result<ExitStatus> {
    let open = fifos.open()?;
    client
        .exec_process(id, exec_id, process, &fifos.stdio())
        .await?;
    let wait = client.wait_process(id, exec_id);
    let raw = tty.then(RawTerminal::enable);
    // Unlike a task's create, Exec does not open the FIFOs; Start does. Our stdin copy
    // starts only then: stdin that ended earlier would close the FIFO's last open end,
    // and a FIFO nobody holds open drops what was written into it.
    if let Err(e) = client.start_process(id, exec_id).await {
        drop(raw);
        return Err(invoke_error(id, process, e));
    }
    let mut copies = open.start();
    let stdin_closed = copies.stdin_closed.take();
    if tty {
        if let Some((w, h)) = RawTerminal::size() {
            let _ = client.resize_process_pty(id, exec_id, w, h).await;
        }
    }
    let target = super::forward::Target {
        id: id.to_string(),
        exec_id: Some(exec_id.to_string()),
    };
    let mut signals = Signals::install()?;
    let exit =
        super::forward::until_exit(client, target, wait, stdin_closed, &mut signals, tty).await;
    drop(raw);
    let exit = exit?;
    copies.wait_output().await?;
    Ok(exit)
}

/// runc's "not found" / "not executable" as an [`ExecError`] (so `exec` exits 127 / 126
/// as Docker does), any other failure as it was.
fn invoke_error(id: &str, process: &Process, e: Error) -> Error {
    let message = e.to_string();
    match classify(&message) {
        Some(failure) => ExecError {
            id: id.to_string(),
            command: process
                .args()
                .as_ref()
                .and_then(|a| a.first().cloned())
                .unwrap_or_default(),
            failure,
            message,
        }
        .into(),
        None => e,
    }
}

/// The container's process settings with the command, env, cwd, user and terminal of
/// the exec on top.
fn process_for(base: &Process, root: &ContainerRoot, opts: &ExecOptions) -> Result<Process> {
    let mut p = base.clone();
    p.set_args(Some(opts.command.clone()));
    p.set_terminal(Some(opts.tty));
    p.set_console_size(None);
    let mut env = base.env().clone().unwrap_or_default();
    for kv in &opts.env {
        merge_env(&mut env, kv)?;
    }
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    p.set_env(Some(env));
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(Error::Invalid(format!(
                "invalid -w {w:?}: the working directory must be absolute"
            )));
        }
        p.set_cwd(PathBuf::from(w));
    }
    if let Some(u) = &opts.user {
        let db = UserDb {
            passwd: root.read_to_string(Path::new("/etc/passwd"))?,
            group: root.read_to_string(Path::new("/etc/group"))?,
        };
        let r = db.resolve(u)?;
        let mut user = p.user().clone();
        user.set_uid(r.uid);
        user.set_gid(r.gid);
        user.set_additional_gids((!r.additional_gids.is_empty()).then_some(r.additional_gids));
        user.set_username(r.username);
        p.set_user(user);
    }
    Ok(p)
}

/// `KEY=VALUE` replaces KEY; a bare `KEY` takes the caller's value (or is skipped).
fn merge_env(env: &mut Vec<String>, kv: &str) -> Result<()> {
    let key = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
    if key.is_empty() || kv.contains('\0') {
        return Err(Error::Invalid(format!(
            "invalid -e {kv:?}: expected KEY=VALUE or KEY"
        )));
    }
    let entry = if kv.contains('=') {
        kv.to_string()
    } else {
        match std::env::var(key) {
            Ok(v) => format!("{key}={v}"),
            Err(_) => return Ok(()),
        }
    };
    let prefix = format!("{key}=");
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(slot) => *slot = entry,
        None => env.push(entry),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_replaces_by_key_and_refuses_empty_keys() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        merge_env(&mut env, "A=2").unwrap();
        merge_env(&mut env, "B=x=y").unwrap();
        merge_env(&mut env, "NESTCACHE_SURELY_UNSET_VAR").unwrap();
        assert_eq!(env, ["PATH=/bin", "A=2", "B=x=y"]);
        assert!(matches!(merge_env(&mut env, "=v"), Err(Error::Invalid(_))));
    }

    #[test]
    fn process_takes_the_flags_over_the_container() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "app:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        let root = ContainerRoot::of_dir(t.path()).unwrap();
        let opts = ExecOptions {
            command: vec!["id".into()],
            env: vec!["X=1".into()],
            workdir: Some("/tmp".into()),
            user: Some("app".into()),
            tty: true,
            ..Default::default()
        };
        let p = process_for(&Process::default(), &root, &opts).unwrap();
        assert_eq!(p.args().as_deref(), Some(&["id".to_string()][..]));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert!(p.env().as_ref().unwrap().contains(&"X=1".to_string()));
        let relative = ExecOptions {
            workdir: Some("tmp".into()),
            ..opts.clone()
        };
        assert!(process_for(&Process::default(), &root, &relative).is_err());
        let unknown = ExecOptions {
            user: Some("nobody-here".into()),
            ..opts
        };
        assert!(matches!(
            process_for(&Process::default(), &root, &unknown),
            Err(Error::NotFound(_))
        ));
    }
}
