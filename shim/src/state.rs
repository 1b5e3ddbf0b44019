//! A process's lifecycle as an explicit state machine. Every change of a process's state
//! goes through `State::next`; a step the current state does not allow is refused (and
//! becomes FailedPrecondition), so two starts of one exec cannot both run runc, and a
//! delete cannot overtake a start.
//!
//! ```text
//! Created --begin_start--> Starting --started--> Running <--pause/resume--> Paused
//!    |                        |  \--start_failed--> Created (init: runc start failed)
//!    |                        \----exit---------> Stopped (exec: runc exec failed)
//!    +----------------exit (Created, Running, Paused)--> Stopped
//! Created, Stopped --delete--> Deleted
//! ```

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Starting,
    Running,
    Paused,
    Stopped,
    Deleted,
}

/// What happens to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    BeginStart,
    Started,
    /// runc start of an init failed: the container is still created (runc init waits).
    StartFailed,
    Pause,
    Resume,
    Exit,
    Delete,
}

impl Step {
    /// The verb in "cannot …" messages.
    pub fn action(self) -> &'static str {
        match self {
            Step::BeginStart | Step::Started | Step::StartFailed => "start",
            Step::Pause => "pause",
            Step::Resume => "resume",
            Step::Exit => "exit",
            Step::Delete => "delete",
        }
    }
}

impl State {
    /// The state after `step`, or None when `step` is illegal here.
    pub fn next(self, step: Step) -> Option<State> {
        use State::*;
        match (self, step) {
            (Created, Step::BeginStart) => Some(Starting),
            (Starting, Step::Started) => Some(Running),
            (Starting, Step::StartFailed) => Some(Created),
            (Running, Step::Pause) => Some(Paused),
            (Paused, Step::Resume) => Some(Running),
            (Created | Starting | Running | Paused, Step::Exit) => Some(Stopped),
            (Created | Stopped, Step::Delete) => Some(Deleted),
            _ => None,
        }
    }

    /// Whether the process may still run (a delete must wait for it to stop).
    pub fn is_live(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Paused)
    }

    /// Whether the process is over: its waiters have their answer.
    pub fn is_final(self) -> bool {
        matches!(self, State::Stopped | State::Deleted)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Created => "created",
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Deleted => "deleted",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [State; 6] = [
        State::Created,
        State::Starting,
        State::Running,
        State::Paused,
        State::Stopped,
        State::Deleted,
    ];
    const STEPS: [Step; 7] = [
        Step::BeginStart,
        Step::Started,
        Step::StartFailed,
        Step::Pause,
        Step::Resume,
        Step::Exit,
        Step::Delete,
    ];

    #[test]
    fn the_transition_table_is_exactly_the_documented_one() {
        use State::*;
        let legal = [
            (Created, Step::BeginStart, Starting),
            (Starting, Step::Started, Running),
            (Starting, Step::StartFailed, Created),
            (Running, Step::Pause, Paused),
            (Paused, Step::Resume, Running),
            (Created, Step::Exit, Stopped),
            (Starting, Step::Exit, Stopped),
            (Running, Step::Exit, Stopped),
            (Paused, Step::Exit, Stopped),
            (Created, Step::Delete, Deleted),
            (Stopped, Step::Delete, Deleted),
        ];
        for from in ALL {
            for step in STEPS {
                let want = legal
                    .iter()
                    .find(|(f, s, _)| *f == from && *s == step)
                    .map(|(_, _, to)| *to);
                assert_eq!(from.next(step), want, "{from} --{step:?}-->");
            }
        }
    }

    #[test]
    fn a_second_start_and_a_delete_of_a_live_process_are_refused() {
        let starting = State::Created.next(Step::BeginStart).unwrap();
        assert_eq!(starting.next(Step::BeginStart), None);
        assert_eq!(starting.next(Step::Delete), None);
        assert_eq!(State::Running.next(Step::Delete), None);
        assert_eq!(State::Paused.next(Step::Delete), None);
    }

    #[test]
    fn deleted_is_terminal() {
        for step in STEPS {
            assert_eq!(State::Deleted.next(step), None, "{step:?}");
        }
        assert!(State::Deleted.is_final() && State::Stopped.is_final());
        assert!(!State::Created.is_final() && !State::Created.is_live());
    }
}
