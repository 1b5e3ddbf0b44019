//! The shim's errors, and their one mapping to ttrpc status codes (`code`). Every RPC
//! returns `ShimError`; the ttrpc methods convert with `?` and nothing else picks a code.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

use crate::runc::RuncError;
use crate::state::State;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("exec {exec} of container {id} not found")]
    ExecNotFound { id: String, exec: String },
    #[error("container {0} already exists in this shim")]
    ContainerExists(String),
    #[error("exec {exec} already exists in container {id}")]
    ExecExists { id: String, exec: String },
    /// A lifecycle step the process's state does not allow (two starts, delete while
    /// running, pause of a stopped task...).
    #[error("{process} is {state}: cannot {action}")]
    IllegalTransition {
        process: String,
        state: State,
        action: &'static str,
    },
    /// A signal for a process that never got a pid (an exec not started, or whose start
    /// failed): signalling pid 0 would hit the shim's own process group.
    #[error("{process} has no pid (not started): nothing to signal")]
    NoPid { process: String },
    #[error("{process} already finished")]
    Finished { process: String },
    /// A request field that cannot be used as sent.
    #[error("{0}")]
    Invalid(String),
    /// `io.nestcache.store` names a directory outside the roots this shim may use.
    #[error(
        "annotation io.nestcache.store={store}: not under an allowed store root ({roots}); allow it in the shim's options (store_roots)"
    )]
    StoreNotAllowed { store: PathBuf, roots: String },
    /// The runtime options or the config file they name.
    #[error("shim options: {0}")]
    Options(String),
    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: PathBuf, reason: String },
    #[error("rootfs: {0}")]
    Rootfs(String),
    #[error(transparent)]
    Runc(#[from] RuncError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stats of {id}: {reason}")]
    Stats { id: String, reason: String },
    #[error("{0} is not implemented by this shim")]
    Unimplemented(&'static str),
    /// The shim is exiting (idle past its linger): a task must go to a new shim.
    #[error("this shim is shutting down (idle); its group's next task starts a new one")]
    ShuttingDown,
    /// An RPC's handler panicked (`panic_guard`): a bug of the shim's, answered at once.
    #[error("{rpc}: the shim panicked: {message}")]
    Panicked { rpc: &'static str, message: String },
}

pub type Result<T, E = ShimError> = std::result::Result<T, E>;

impl ShimError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> ShimError {
        ShimError::Io {
            what: what.into(),
            source,
        }
    }

    /// The ttrpc code containerd sees; containerd maps it to errdefs (NotFound,
    /// AlreadyExists, FailedPrecondition...) the way it does for runc's shim.
    pub fn code(&self) -> Code {
        match self {
            ShimError::ContainerNotFound(_)
            | ShimError::ExecNotFound { .. }
            | ShimError::Finished { .. } => Code::NOT_FOUND,
            ShimError::ContainerExists(_) | ShimError::ExecExists { .. } => Code::ALREADY_EXISTS,
            ShimError::IllegalTransition { .. } | ShimError::NoPid { .. } => {
                Code::FAILED_PRECONDITION
            }
            ShimError::Rootfs(_) => Code::FAILED_PRECONDITION,
            ShimError::Invalid(_) | ShimError::Options(_) | ShimError::Bundle { .. } => {
                Code::INVALID_ARGUMENT
            }
            ShimError::StoreNotAllowed { .. } => Code::PERMISSION_DENIED,
            ShimError::Runc(e) if e.is_not_found() => Code::NOT_FOUND,
            ShimError::Runc(_) => Code::UNKNOWN,
            ShimError::Io { .. } | ShimError::Stats { .. } | ShimError::Panicked { .. } => {
                Code::INTERNAL
            }
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::ShuttingDown => Code::UNAVAILABLE,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_kind_maps_to_the_code_containerd_expects() {
        let failed = |message: &str| RuncError::Failed {
            action: "kill".into(),
            id: "c".into(),
            code: 1,
            message: message.into(),
        };
        let cases = [
            (ShimError::ContainerNotFound("c".into()), Code::NOT_FOUND),
            (
                ShimError::ExecNotFound {
                    id: "c".into(),
                    exec: "e".into(),
                },
                Code::NOT_FOUND,
            ),
            (
                ShimError::Finished {
                    process: "exec e".into(),
                },
                Code::NOT_FOUND,
            ),
            (ShimError::ContainerExists("c".into()), Code::ALREADY_EXISTS),
            (
                ShimError::IllegalTransition {
                    process: "exec e".into(),
                    state: State::Starting,
                    action: "start",
                },
                Code::FAILED_PRECONDITION,
            ),
            (
                ShimError::NoPid {
                    process: "exec e".into(),
                },
                Code::FAILED_PRECONDITION,
            ),
            (ShimError::Invalid("x".into()), Code::INVALID_ARGUMENT),
            (
                ShimError::StoreNotAllowed {
                    store: "/etc".into(),
                    roots: "/var/lib/nestcache".into(),
                },
                Code::PERMISSION_DENIED,
            ),
            (
                ShimError::Runc(failed("container does not exist")),
                Code::NOT_FOUND,
            ),
            (ShimError::Runc(failed("permission denied")), Code::UNKNOWN),
            (
                ShimError::io("read x", std::io::Error::other("boom")),
                Code::INTERNAL,
            ),
            (ShimError::Unimplemented("checkpoint"), Code::UNIMPLEMENTED),
            (ShimError::ShuttingDown, Code::UNAVAILABLE),
            (
                ShimError::Panicked {
                    rpc: "kill",
                    message: "boom".into(),
                },
                Code::INTERNAL,
            ),
        ];
        for (e, want) in cases {
            let shown = e.to_string();
            let (code, message) = status_of(e);
            assert_eq!(code, want, "{shown}");
            assert_eq!(message, shown, "the status carries the error's one line");
        }
    }
}
