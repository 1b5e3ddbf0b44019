//! Passing the user's signals (SIGINT/SIGTERM/SIGHUP), the end of stdin and the terminal's
//! size on to a foreground process (a run's task or an exec'd process) until it exits.
//!
//! One worker delivers them in the order they happened while the exit is awaited beside
//! it. When containerd is away (restarted), the calls reconnect (`containerd::reconnect`)
//! and whatever arrives meanwhile waits in the queue: nothing is lost, reordered or
//! merged, and an exit meanwhile is still seen (what is still queued then has nobody to
//! go to and is dropped).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::containerd::io::RawTerminal;
use crate::containerd::{Client, ExitStatus, TaskWait};
use crate::error::{Error, Result};
use crate::signals::Signals;

/// The process things are passed on to: a task's init (`exec_id` None) or an exec.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub id: String,
    pub exec_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Signal(i32),
    CloseStdin,
    Resize(u32, u32),
}

impl Target {
    async fn deliver(&self, client: &Client, action: Action) -> Result<()> {
        let id = self.id.as_str();
        match (action, self.exec_id.as_deref()) {
            (Action::Signal(s), None) => client.kill_task(id, s, false).await,
            (Action::Signal(s), Some(e)) => client.kill_process(id, e, s).await,
            (Action::CloseStdin, None) => client.close_task_stdin(id).await,
            (Action::CloseStdin, Some(e)) => client.close_process_stdin(id, e).await,
            // A size that could not be set is not worth ending the session for.
            (Action::Resize(w, h), None) => {
                let _ = client.resize_task_pty(id, w, h).await;
                Ok(())
            }
            (Action::Resize(w, h), Some(e)) => {
                let _ = client.resize_process_pty(id, e, w, h).await;
                Ok(())
            }
        }
    }
}

/// Waits for the process to exit, passing on signals, the end of our stdin
/// (`stdin_closed` resolves then) and, with a terminal, our window size. Fails only when
/// the wait does or a delivery failed for good.
pub(super) async fn until_exit(
    client: &Client,
    target: Target,
    wait: TaskWait,
    mut stdin_closed: Option<oneshot::Receiver<()>>,
    signals: &mut Signals,
    tty: bool,
) -> Result<ExitStatus> {
    let mut winch = match tty {
        true => Some(
            signal(SignalKind::window_change())
                .map_err(|e| Error::io("install a signal handler", e))?,
        ),
        false => None,
    };
    let (queue, mut queued) = mpsc::unbounded_channel::<Action>();
    let worker_client = client.clone();
    let mut worker = tokio::spawn(async move {
        while let Some(action) = queued.recv().await {
            if let Err(e) = target.deliver(&worker_client, action).await {
                return e;
            }
        }
        // The queue's sender lives as long as the loop below: never reached.
        std::future::pending().await
    });
    let wait = wait.result();
    tokio::pin!(wait);
    let exit = loop {
        let action = tokio::select! {
            r = &mut wait => break r,
            r = &mut worker => break Err(r.unwrap_or_else(|e| Error::Other(format!("passing signals on: {e}")))),
            s = signals.recv() => Action::Signal(s),
            _ = async { winch.as_mut().expect("guarded").recv().await }, if winch.is_some() => {
                match RawTerminal::size() {
                    Some((w, h)) => Action::Resize(w, h),
                    None => continue,
                }
            }
            r = async { stdin_closed.as_mut().expect("guarded").await }, if stdin_closed.is_some() => {
                stdin_closed = None;
                match r {
                    Ok(()) => Action::CloseStdin,
                    Err(_) => continue,
                }
            }
        };
        // The worker holds the receiver until it is aborted below: a send cannot fail.
        let _ = queue.send(action);
    };
    worker.abort();
    exit
}
