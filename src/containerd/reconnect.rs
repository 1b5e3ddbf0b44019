//! Calls that outlive a containerd restart. A nested container's task lives in its shim,
//! not in containerd: when containerd stops (restarted, upgraded, killed) and comes back,
//! the shim is still there with the process, its exit status and its stdio. So a call
//! that lost the connection is made again (tonic's channel reconnects on the next call),
//! with a growing pause, for at most [`RECONNECT_WINDOW`] from the first failure; a call
//! containerd answered (even with an error) is never repeated.
//!
//! Only calls that may safely run twice go through here: queries, wait, delete (a second
//! delete finds nothing, which callers take as done), kill (a signal that reached the
//! task before the answer was lost is sent twice, as a user pressing ^C twice would),
//! close stdin, resize. Start is made safe by checking the task's state first
//! (`tasks.rs`); creates are not repeated.

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// How long a call keeps reconnecting to a containerd that went away before it fails.
pub const RECONNECT_WINDOW: Duration = Duration::from_secs(30);

/// The first pause between attempts, doubled after each up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Whether a failed call failed because the connection did (containerd stopped or
/// restarting) rather than because containerd answered no.
pub(super) fn connection_lost(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Cancelled => true,
        // hyper's "connection closed / reset" surfaces as Unknown with a transport error.
        Code::Unknown => {
            let m = s.message().to_ascii_lowercase();
            ["transport", "connection", "broken pipe", "h2 protocol"]
                .iter()
                .any(|w| m.contains(w))
        }
        _ => false,
    }
}

/// Runs `call` until containerd answers it, or the connection stays lost for `window`.
/// `what` names the call in the log (`kill task c1`).
pub(super) async fn until_answered<T, F, Fut>(
    what: &str,
    window: Duration,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut lost_at: Option<Instant> = None;
    let mut pause = FIRST_PAUSE;
    loop {
        let status = match call().await {
            Ok(v) => {
                if lost_at.is_some() {
                    tracing::info!("{what}: containerd is back");
                }
                return Ok(v);
            }
            Err(s) => s,
        };
        if !connection_lost(&status) {
            return Err(status);
        }
        match lost_at {
            None => {
                tracing::warn!(
                    "{what}: lost containerd ({}); reconnecting for up to {window:?}",
                    status.message()
                );
                lost_at = Some(Instant::now());
            }
            Some(since) if since.elapsed() >= window => return Err(status),
            Some(_) => tracing::debug!("{what}: still no containerd ({})", status.message()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

impl super::Client {
    /// [`until_answered`] within [`RECONNECT_WINDOW`].
    pub(super) async fn reconnecting<T, F, Fut>(&self, what: &str, call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        until_answered(what, RECONNECT_WINDOW, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn lost_connections_are_told_from_answers() {
        assert!(connection_lost(&Status::unavailable("connection refused")));
        assert!(connection_lost(&Status::cancelled(
            "operation was canceled"
        )));
        assert!(connection_lost(&Status::unknown("transport error")));
        assert!(connection_lost(&Status::unknown("h2 protocol error: ...")));
        assert!(!connection_lost(&Status::unknown("ttrpc: closed")));
        assert!(!connection_lost(&Status::not_found("task c1 not found")));
        assert!(!connection_lost(&Status::failed_precondition(
            "task running"
        )));
    }

    #[tokio::test]
    async fn a_lost_call_is_made_again_until_answered() {
        let calls = AtomicU32::new(0);
        let r = until_answered("test", Duration::from_secs(30), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Status::unavailable("connection refused")),
                1 => Err(Status::unknown("transport error")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(r.expect("answered"), 2);
    }

    #[tokio::test]
    async fn an_answer_is_never_repeated() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = until_answered("test", Duration::from_secs(30), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::not_found("no such task"))
        })
        .await;
        assert_eq!(r.expect_err("not found").code(), Code::NotFound);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn reconnecting_gives_up_after_the_window() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = until_answered("test", Duration::from_millis(250), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("connection refused"))
        })
        .await;
        assert_eq!(r.expect_err("gave up").code(), Code::Unavailable);
        // 0, 100, 300 ms: the third failure is past the window.
        assert!(calls.load(Ordering::SeqCst) >= 3);
    }
}
