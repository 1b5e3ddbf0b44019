//! The Task service against fakes (`crate::fakes`): its lifecycle rules, without root,
//! runc or containerd (runwasi tests its `Local` task service the same way).

use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::{ExitSignal, Task};

use super::TaskService;
use crate::fakes::{ttrpc_context as ctx, FakeRuntime, RecordingEvents};
use crate::process::NEVER_RAN_STATUS;

/// Long enough never to fire unless something deadlocked (it is not a speed check).
const DEADLOCK: Duration = Duration::from_secs(30);

struct Harness {
    svc: Arc<TaskService>,
    rt: Arc<FakeRuntime>,
    events: Arc<RecordingEvents>,
    dir: tempfile::TempDir,
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn harness() -> Harness {
    let rt = Arc::new(FakeRuntime::default());
    let events = Arc::new(RecordingEvents::default());
    let svc = TaskService::new(
        "test",
        "/run/test/containerd.sock",
        rt.clone(),
        events.clone(),
        Arc::new(ExitSignal::default()),
        Default::default(),
    )
    .unwrap();
    Harness {
        svc: Arc::new(svc),
        rt,
        events,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Harness {
    fn bundle(&self, id: &str, annotations: serde_json::Value) -> PathBuf {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": annotations});
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle
    }

    fn create_in(&self, id: &str, bundle: PathBuf) -> ttrpc::Result<CreateTaskResponse> {
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        self.svc.create(&ctx(), req)
    }

    fn create(&self, id: &str) -> u32 {
        let bundle = self.bundle(id, serde_json::json!({}));
        self.create_in(id, bundle).unwrap().pid
    }

    fn start(&self, id: &str, exec: &str) -> ttrpc::Result<StartResponse> {
        let req = StartRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.svc.start(&ctx(), req)
    }

    fn exec(&self, id: &str, exec: &str) {
        let req = ExecProcessRequest {
            id: id.into(),
            exec_id: exec.into(),
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: br#"{"args":["/bin/true"],"cwd":"/"}"#.to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.svc.exec(&ctx(), req).unwrap();
    }

    fn kill(&self, id: &str, exec: &str, signal: u32) -> ttrpc::Result<Empty> {
        let req = KillRequest {
            id: id.into(),
            exec_id: exec.into(),
            signal,
            ..Default::default()
        };
        self.svc.kill(&ctx(), req)
    }

    fn delete(&self, id: &str, exec: &str) -> ttrpc::Result<DeleteResponse> {
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.svc.delete(&ctx(), req)
    }

    fn status(&self, id: &str, exec: &str) -> Status {
        let req = StateRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.svc.state(&ctx(), req).unwrap().status.unwrap()
    }

    /// Wait in a thread of its own; the receiver gets the exit status.
    fn wait_in_thread(&self, id: &str, exec: &str) -> std::sync::mpsc::Receiver<u32> {
        let (tx, rx) = channel();
        let svc = self.svc.clone();
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        std::thread::spawn(move || {
            let r = svc.wait(&ctx(), req).unwrap();
            let _ = tx.send(r.exit_status);
        });
        // Returns once the Wait blocks (or already answered), so that what the test
        // does next happens to a waiting client.
        let process = self.svc.registry.get(id).unwrap().process(exec).unwrap();
        while process.waiters() == 0 && !process.state().is_final() {
            std::thread::yield_now();
        }
        rx
    }

    /// A created and started container.
    fn running(&self, id: &str) -> u32 {
        let pid = self.create(id);
        self.start(id, "").unwrap();
        pid
    }
}

#[test]
fn a_failed_exec_returns_its_error_and_signals_nothing() {
    let h = harness();
    h.running("c");
    h.rt.failing_execs.lock().unwrap().insert("bad".into());
    h.exec("c", "bad");
    let waited = h.wait_in_thread("c", "bad");
    let (c, message) = code(h.start("c", "bad"));
    assert_eq!(c, Code::UNKNOWN);
    assert!(message.contains("no such file or directory"), "{message}");
    assert_eq!(waited.recv_timeout(DEADLOCK).unwrap(), NEVER_RAN_STATUS);
    // What ctr and CRI do next: kill it. With no pid there is nothing to signal (a
    // kill(0, SIGKILL) here would end this test binary, as it ended the shim).
    let (c, message) = code(h.kill("c", "bad", 9));
    assert_eq!(c, Code::FAILED_PRECONDITION, "{message}");
    assert!(message.contains("no pid"), "{message}");
    assert_eq!(h.rt.calls_starting("kill"), 0);
    h.delete("c", "bad").unwrap();
    assert_eq!(h.status("c", ""), Status::RUNNING);
    // The container goes on: the next exec works.
    h.exec("c", "good");
    h.start("c", "good").unwrap();
    assert_eq!(h.status("c", "good"), Status::RUNNING);
}

#[test]
fn two_concurrent_starts_of_one_exec_run_runc_exec_once() {
    let h = harness();
    h.running("c");
    h.exec("c", "e");
    let held = h.rt.hold_exec();
    let svc = h.svc.clone();
    let first = std::thread::spawn(move || {
        let req = StartRequest {
            id: "c".into(),
            exec_id: "e".into(),
            ..Default::default()
        };
        svc.start(&ctx(), req)
    });
    held.entered.recv_timeout(DEADLOCK).unwrap();
    let (c, message) = code(h.start("c", "e"));
    assert_eq!(c, Code::FAILED_PRECONDITION);
    assert!(message.contains("starting"), "{message}");
    held.release.send(()).unwrap();
    assert!(first.join().unwrap().unwrap().pid > 0);
    assert_eq!(h.rt.calls_starting("exec c e"), 1);
    let (c, _) = code(h.start("c", "e"));
    assert_eq!(
        c,
        Code::FAILED_PRECONDITION,
        "a running exec cannot start again"
    );
}

#[test]
fn deleting_a_process_that_never_started_wakes_its_waiters() {
    let h = harness();
    h.running("c");
    h.exec("c", "e");
    let exec_waiter = h.wait_in_thread("c", "e");
    h.delete("c", "e").unwrap();
    assert_eq!(
        exec_waiter.recv_timeout(DEADLOCK).unwrap(),
        NEVER_RAN_STATUS
    );

    h.create("idle");
    let init_waiter = h.wait_in_thread("idle", "");
    let deleted = h.delete("idle", "").unwrap();
    assert_eq!(
        deleted.exit_status, 0,
        "no exit: 0 and no time, as runc's shim"
    );
    assert!(deleted.exited_at.is_none());
    assert_eq!(
        init_waiter.recv_timeout(DEADLOCK).unwrap(),
        NEVER_RAN_STATUS
    );
    let (c, _) = code(h.delete("idle", ""));
    assert_eq!(c, Code::NOT_FOUND);
}

#[test]
fn illegal_steps_are_failed_preconditions() {
    let h = harness();
    h.running("c");
    let (c, message) = code(h.delete("c", ""));
    assert_eq!(
        c,
        Code::FAILED_PRECONDITION,
        "delete of a running task: {message}"
    );
    let (c, _) = code(h.start("c", ""));
    assert_eq!(c, Code::FAILED_PRECONDITION, "second start");
    let pause = |svc: &TaskService| {
        svc.pause(
            &ctx(),
            PauseRequest {
                id: "c".into(),
                ..Default::default()
            },
        )
    };
    let resume = |svc: &TaskService| {
        svc.resume(
            &ctx(),
            ResumeRequest {
                id: "c".into(),
                ..Default::default()
            },
        )
    };
    let (c, _) = code(resume(&h.svc));
    assert_eq!(c, Code::FAILED_PRECONDITION, "resume of a running task");
    pause(&h.svc).unwrap();
    assert_eq!(h.status("c", ""), Status::PAUSED);
    let (c, _) = code(pause(&h.svc));
    assert_eq!(c, Code::FAILED_PRECONDITION, "second pause");
    resume(&h.svc).unwrap();
    assert_eq!(h.rt.calls_starting("pause"), 1);
    assert_eq!(h.rt.calls_starting("resume"), 1);
    let bundle = h.bundle("c2", serde_json::json!({}));
    h.create_in("c2", bundle.clone()).unwrap();
    let (c, _) = code(h.create_in("c2", bundle));
    assert_eq!(c, Code::ALREADY_EXISTS);
}

#[test]
fn events_come_in_runtime_v2_order() {
    let h = harness();
    let pid = h.running("c");
    h.exec("c", "e");
    let exec_pid = h.start("c", "e").unwrap().pid;
    FakeRuntime::exit(exec_pid, 3);
    h.wait_in_thread("c", "e").recv_timeout(DEADLOCK).unwrap();
    h.kill("c", "", 9).unwrap();
    h.wait_in_thread("c", "").recv_timeout(DEADLOCK).unwrap();
    let (c, _) = code(h.kill("c", "", 9));
    assert_eq!(c, Code::NOT_FOUND, "kill of a finished task");
    let deleted = h.delete("c", "").unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
    assert_eq!(
        h.events.wait_for(7),
        [
            TASK_CREATE_EVENT_TOPIC,
            TASK_START_EVENT_TOPIC,
            TASK_EXEC_ADDED_EVENT_TOPIC,
            TASK_EXEC_STARTED_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC,
            TASK_EXIT_EVENT_TOPIC,
            TASK_DELETE_EVENT_TOPIC,
        ]
    );
}

#[test]
fn no_lock_is_held_across_runc_delete() {
    let h = harness();
    h.create("slow");
    h.running("other");
    let held = h.rt.hold_delete();
    let svc = h.svc.clone();
    let deleting = std::thread::spawn(move || {
        let req = DeleteRequest {
            id: "slow".into(),
            ..Default::default()
        };
        svc.delete(&ctx(), req)
    });
    held.entered.recv_timeout(DEADLOCK).unwrap();
    // While runc delete of one container runs, the group's other RPCs are served.
    let (tx, rx) = channel();
    let svc = h.svc.clone();
    std::thread::spawn(move || {
        let req = StateRequest {
            id: "other".into(),
            ..Default::default()
        };
        let _ = tx.send(svc.state(&ctx(), req).map(|s| s.status));
    });
    let state = rx
        .recv_timeout(DEADLOCK)
        .expect("State blocked behind a delete");
    assert_eq!(state.unwrap().unwrap(), Status::RUNNING);
    held.release.send(()).unwrap();
    deleting.join().unwrap().unwrap();
}

#[test]
fn a_store_outside_the_allowed_roots_fails_create_before_runc() {
    let h = harness();
    let bundle = h.bundle(
        "c",
        serde_json::json!({"io.nestcache.store": "/etc", "io.nestcache.image": "x"}),
    );
    let (c, message) = code(h.create_in("c", bundle));
    assert_eq!(c, Code::PERMISSION_DENIED);
    assert!(
        message.contains("/etc") && message.contains("allowed store root"),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(h.rt.calls.lock().unwrap().is_empty(), "runc ran");
    // The id is free again.
    assert!(h.create("c") > 0);
}

#[test]
fn update_hands_the_resources_to_runc_and_refuses_garbage() {
    let h = harness();
    h.running("c");
    let update = |value: &[u8]| {
        let req = UpdateTaskRequest {
            id: "c".into(),
            resources: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: value.to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        h.svc.update(&ctx(), req)
    };
    let resources = br#"{"memory":{"limit":67108864},"cpu":{"shares":512}}"#;
    update(resources).unwrap();
    assert_eq!(
        h.rt.updated.lock().unwrap().as_deref().map(str::as_bytes),
        Some(&resources[..])
    );
    for garbage in [&b"not json"[..], b"[1,2]", b"\"memory\""] {
        let (c, message) = code(update(garbage));
        assert_eq!(c, Code::INVALID_ARGUMENT, "{message}");
    }
    assert_eq!(h.rt.calls_starting("update"), 1);
}

#[test]
fn hostile_exec_ids_and_missing_specs_are_invalid_arguments() {
    let h = harness();
    h.running("c");
    for id in ["", "../escape", ".hidden", "a/b", "x y"] {
        let req = ExecProcessRequest {
            id: "c".into(),
            exec_id: id.into(),
            spec: Some(Any::default()).into(),
            ..Default::default()
        };
        let (c, message) = code(h.svc.exec(&ctx(), req));
        assert_eq!(c, Code::INVALID_ARGUMENT, "{id:?}: {message}");
    }
    let no_spec = ExecProcessRequest {
        id: "c".into(),
        exec_id: "e".into(),
        ..Default::default()
    };
    assert_eq!(code(h.svc.exec(&ctx(), no_spec)).0, Code::INVALID_ARGUMENT);
    let (c, _) = code(h.start("c", "never-added"));
    assert_eq!(c, Code::NOT_FOUND);
    assert!(
        !h.dir.path().join("c/execs").exists(),
        "nothing written for refused execs"
    );
}
