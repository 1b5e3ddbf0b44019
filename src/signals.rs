//! SIGINT, SIGTERM and SIGHUP during a multi-step operation (stage, cache create, run,
//! exec). Once [`Signals::install`] ran they no longer end the process: the operation
//! receives them and decides (undo what it did and fail with [`InterruptedError`], or pass them
//! on to a nested process), and a command that gives up exits with the code a shell
//! reports for the signal ([`exit_code`]).
//!
//! A signal that arrives while nobody is receiving is kept (tokio remembers a delivery
//! until the next `recv`), so checking between steps misses none. tokio keeps its handler
//! installed for the rest of the process, so a command installs these only where it
//! handles them to the end.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::{Error, Result};

/// The signals a multi-step operation catches.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    /// From now on SIGINT, SIGTERM and SIGHUP are this value's to receive.
    pub fn install() -> Result<Signals> {
        let sig = |k: SignalKind| signal(k).map_err(|e| Error::io("install a signal handler", e));
        Ok(Signals {
            int: sig(SignalKind::interrupt())?,
            term: sig(SignalKind::terminate())?,
            hup: sig(SignalKind::hangup())?,
        })
    }

    /// The next signal (at once if one came since the last call).
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }

    /// A signal that has already arrived, if any; never waits.
    pub async fn pending(&mut self) -> Option<i32> {
        tokio::select! {
            biased;
            s = self.recv() => Some(s),
            _ = std::future::ready(()) => None,
        }
    }

    /// Resolves with [`InterruptedError`] for `what` when a signal comes.
    pub async fn interrupted(&mut self, what: impl Into<String>) -> Error {
        let signal = self.recv().await;
        InterruptedError {
            what: what.into(),
            signal,
        }
        .into()
    }
}

/// An operation stopped by a signal before it finished (what it undid is in `what`).
#[derive(Debug, thiserror::Error)]
#[error("{what}: interrupted by {}", name(*signal))]
pub struct InterruptedError {
    /// What was interrupted, and what became of it.
    pub what: String,
    pub signal: i32,
}

/// `SIGINT`, `SIGTERM`, ...
pub fn name(signal: i32) -> &'static str {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str())
        .unwrap_or("a signal")
}

/// The exit code a shell reports for a process ended by `signal`: 128 + its number.
pub fn exit_code(signal: i32) -> i32 {
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_as_a_shell_has_them() {
        assert_eq!(name(libc::SIGINT), "SIGINT");
        assert_eq!(name(libc::SIGHUP), "SIGHUP");
        assert_eq!(name(1000), "a signal");
        assert_eq!(exit_code(libc::SIGINT), 130);
        assert_eq!(exit_code(libc::SIGTERM), 143);
        let e = InterruptedError {
            what: "stage of x".into(),
            signal: libc::SIGTERM,
        };
        assert_eq!(e.to_string(), "stage of x: interrupted by SIGTERM");
    }

    #[tokio::test]
    async fn a_signal_that_came_between_steps_is_kept() {
        let mut s = Signals::install().expect("install");
        assert_eq!(s.pending().await, None);
        // SAFETY: raising a signal whose handler tokio installed above; the default
        // action (ending the test process) no longer applies.
        unsafe { libc::raise(libc::SIGHUP) };
        let e = s.interrupted("test").await;
        assert!(
            matches!(&e, Error::Interrupted(i) if i.signal == libc::SIGHUP),
            "{e}"
        );
    }
}
