//! The Task service's boundary against panics. ttrpc-rust does not catch a panicking
//! handler: its worker dies, the request never gets an answer and containerd (or `ctr`)
//! waits for it forever. [`Guarded`] runs every RPC under `catch_unwind` and answers a
//! panic with an Internal error naming the RPC and the panic's message, so the caller
//! fails at once and the shim goes on serving its other containers. (The panic hook
//! still writes the panic and where it happened to the shim's log.)

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use containerd_shim::api::{
    self, CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse,
    CreateTaskRequest, CreateTaskResponse, DeleteRequest, DeleteResponse, ExecProcessRequest,
    KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::{Task, TtrpcContext, TtrpcResult};

use crate::error::ShimError;

/// A Task service whose RPCs answer a panic with an error instead of never answering.
pub struct Guarded<T>(pub T);

/// Runs one RPC; a panic becomes [`ShimError::Panicked`]. Unwind safety is asserted:
/// state a panicking RPC leaves half-changed is behind mutexes, which the panic poisons,
/// so later RPCs on it fail (and are caught here) rather than see it.
fn guard<R>(rpc: &'static str, call: impl FnOnce() -> TtrpcResult<R>) -> TtrpcResult<R> {
    match catch_unwind(AssertUnwindSafe(call)) {
        Ok(answer) => answer,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            log::error!("{rpc}: the handler panicked ({message}); answering Internal");
            Err(ShimError::Panicked { rpc, message }.into())
        }
    }
}

/// A panic's message (`panic!` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

/// Every method of the Task trait, each one guarded.
macro_rules! guarded {
    ($($rpc:ident($req:ty) -> $answer:ty;)*) => {
        impl<T: Task> Task for Guarded<T> {
            $(
                fn $rpc(&self, ctx: &TtrpcContext, req: $req) -> TtrpcResult<$answer> {
                    guard(stringify!($rpc), || self.0.$rpc(ctx, req))
                }
            )*
        }
    };
}

guarded! {
    state(StateRequest) -> StateResponse;
    create(CreateTaskRequest) -> CreateTaskResponse;
    start(StartRequest) -> StartResponse;
    delete(DeleteRequest) -> DeleteResponse;
    pids(PidsRequest) -> PidsResponse;
    pause(PauseRequest) -> api::Empty;
    resume(ResumeRequest) -> api::Empty;
    checkpoint(CheckpointTaskRequest) -> api::Empty;
    kill(KillRequest) -> api::Empty;
    exec(ExecProcessRequest) -> api::Empty;
    resize_pty(ResizePtyRequest) -> api::Empty;
    close_io(CloseIORequest) -> api::Empty;
    update(UpdateTaskRequest) -> api::Empty;
    wait(WaitRequest) -> WaitResponse;
    stats(StatsRequest) -> StatsResponse;
    connect(ConnectRequest) -> ConnectResponse;
    shutdown(ShutdownRequest) -> api::Empty;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::ttrpc_context as ctx;
    use containerd_shim::protos::ttrpc::{self, Code};

    /// Panics in `kill`, answers `connect`: the other methods keep the trait's defaults.
    struct Panicky;

    impl Task for Panicky {
        fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<api::Empty> {
            panic!("kill of {} went wrong", req.id);
        }

        fn connect(&self, _ctx: &TtrpcContext, _: ConnectRequest) -> TtrpcResult<ConnectResponse> {
            Ok(ConnectResponse {
                shim_pid: 7,
                ..Default::default()
            })
        }
    }

    #[test]
    fn a_panicking_rpc_answers_internal_and_the_service_goes_on() {
        let svc = Guarded(Panicky);
        let req = KillRequest {
            id: "c1".into(),
            ..Default::default()
        };
        match svc.kill(&ctx(), req) {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert_eq!(s.message, "kill: the shim panicked: kill of c1 went wrong");
            }
            other => panic!("expected an Internal status, got {other:?}"),
        }
        let answer = svc.connect(&ctx(), ConnectRequest::default());
        assert_eq!(answer.expect("connect").shim_pid, 7);
    }

    #[test]
    fn a_panic_with_a_formatted_or_no_message() {
        assert_eq!(panic_message(&String::from("x 1")), "x 1");
        assert_eq!(panic_message(&"y"), "y");
        assert_eq!(panic_message(&42u8), "a panic without a message");
    }
}
