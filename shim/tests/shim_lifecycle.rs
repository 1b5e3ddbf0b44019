//! The shim's process lifecycle against real containerd + runc: a failed exec leaves the
//! shim and every container of its group running; one exec started twice at once runs
//! once; an exec deleted before it started wakes its Wait; an OOM kill of one container
//! leaves its group's other one running; Stats and Update read back from the cgroup; an exec
//! whose output a child holds open does not hold back the group's other exits.
//! Some steps talk ttrpc to the shim directly (ctr 1.6 has no `task update`, no way to
//! create an exec without starting it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim::api::{
    DeleteRequest, ExecProcessRequest, StartRequest, StateRequest, StatsRequest, UpdateTaskRequest,
    WaitRequest,
};
use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::ttrpc::{self, context, Code};
use containerd_shim::protos::TaskClient;
use testkit::ctr::*;
use testkit::rootfs::*;
use testkit::{stderr, unique};

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap()
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// A detached `sleep` container in `group`; returns its id and guard.
fn sleeper<'a>(ctr: &'a Ctr, root: &Path, group: &str) -> (String, TaskGuard<'a>) {
    let id = unique("c");
    let guard = TaskGuard {
        ctr,
        id: id.clone(),
    };
    let ann = format!("io.nestcache.group={group}");
    let out = ctr.run_rootfs(
        root,
        &["-d", "--annotation", &ann],
        &id,
        &["/bin/sleep", "1000"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    (id, guard)
}

/// A ttrpc client of the shim serving `id` (its socket is in the `address` file of the
/// shim's working dir, the bundle it was started in).
fn shim_client(ctr: &Ctr, id: &str) -> (TaskClient, u32) {
    let shim = parent_of(ctr.task_pid(id));
    let address = std::fs::read_to_string(format!("/proc/{shim}/cwd/address")).unwrap();
    let client = ttrpc::Client::connect(address.trim()).unwrap();
    (TaskClient::new(client), shim)
}

fn ctx(ctr: &Ctr) -> context::Context {
    let mut c = context::with_timeout(0);
    c.add("containerd-namespace".into(), ctr.namespace.clone());
    c
}

fn status_code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn exec_request(id: &str, exec: &str, args: &[&str]) -> ExecProcessRequest {
    let spec = serde_json::json!({
        "args": args, "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    });
    ExecProcessRequest {
        id: id.into(),
        exec_id: exec.into(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: spec.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[test]
fn a_failed_exec_leaves_the_shim_and_its_group_running() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-badexec");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let group = unique("g");
    let (a, _ga) = sleeper(&ctr, root.path(), &group);
    let (b, _gb) = sleeper(&ctr, root.path(), &group);
    let shim = parent_of(ctr.task_pid(a.as_str()));
    assert_eq!(shim, parent_of(ctr.task_pid(&b)), "one shim for the group");
    let out = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "bad",
        &a,
        "/bin/no-such-binary",
    ]);
    assert!(!out.status.success(), "a missing binary ran");
    assert!(stderr(&out).contains("no-such-binary"), "{}", stderr(&out));
    assert!(alive(shim), "the shim died with the failed exec");
    for id in [&a, &b] {
        assert_eq!(ctr.task_status(id).as_deref(), Some("RUNNING"), "{id}");
    }
    // A kill of the exec that never ran is refused; nothing else is signalled.
    let kill = ctr.run(&["task", "kill", "--exec-id", "bad", "-s", "KILL", &a]);
    assert!(!kill.status.success());
    assert!(alive(shim) && ctr.task_status(&b).as_deref() == Some("RUNNING"));
    let again = ctr.run(&["task", "exec", "--exec-id", "good", &a, "/bin/true"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn concurrent_starts_run_once_and_delete_before_start_wakes_wait() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-starts");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let (id, _g) = sleeper(&ctr, root.path(), &unique("g"));
    let (client, _) = shim_client(&ctr, &id);
    let count = "echo ran >> /tmp/starts";
    client
        .exec(
            ctx(&ctr),
            &exec_request(&id, "twice", &["/bin/sh", "-c", count]),
        )
        .unwrap();
    let start = StartRequest {
        id: id.clone(),
        exec_id: "twice".into(),
        ..Default::default()
    };
    let results: Vec<ttrpc::Result<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| client.start(ctx(&ctr), &start)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    let refused = results.into_iter().find(|r| r.is_err()).unwrap();
    assert_eq!(status_code(refused), Code::FAILED_PRECONDITION);
    let wait = WaitRequest {
        id: id.clone(),
        exec_id: "twice".into(),
        ..Default::default()
    };
    assert_eq!(client.wait(ctx(&ctr), &wait).unwrap().exit_status, 0);
    let cat = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "cat",
        &id,
        "/bin/cat",
        "/tmp/starts",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "ran\n",
        "runc exec ran once"
    );

    client
        .exec(ctx(&ctr), &exec_request(&id, "never", &["/bin/true"]))
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let client = client.clone();
        let req = WaitRequest {
            id: id.clone(),
            exec_id: "never".into(),
            ..Default::default()
        };
        let c = ctx(&ctr);
        std::thread::spawn(move || tx.send(client.wait(c, &req)))
    };
    // The Wait is in flight (or not yet sent: then it answers at once, deleted or not).
    std::thread::sleep(Duration::from_millis(200));
    let delete = DeleteRequest {
        id: id.clone(),
        exec_id: "never".into(),
        ..Default::default()
    };
    client.delete(ctx(&ctr), &delete).unwrap();
    let woke = rx.recv_timeout(PATIENCE).expect("Wait never returned");
    if let Ok(w) = woke {
        assert_eq!(w.exit_status, 255);
    }
    let _ = waiter.join().unwrap();
}

/// The init's cgroup v1 directory for `controller` (this VM is hybrid, cgroup v1).
fn v1_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })?;
    let dir = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

#[test]
fn stats_and_update_read_back_from_the_cgroup() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-stats");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let (id, _g) = sleeper(&ctr, root.path(), &unique("g"));
    let pid = ctr.task_pid(&id);
    let Some(memory) = v1_dir(pid, "memory") else {
        eprintln!("skipped: no cgroup v1 memory controller for the task (not a v1/hybrid host)");
        return;
    };
    let (client, _) = shim_client(&ctr, &id);
    let limit: u64 = 48 * 1024 * 1024;
    let resources = serde_json::json!({"memory": {"limit": limit}, "pids": {"limit": 77}});
    let update = UpdateTaskRequest {
        id: id.clone(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: resources.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client.update(ctx(&ctr), &update).unwrap();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        read(memory.join("memory.limit_in_bytes")),
        limit.to_string()
    );
    if let Some(pids) = v1_dir(pid, "pids") {
        assert_eq!(read(pids.join("pids.max")), "77");
    }
    let stats = StatsRequest {
        id: id.clone(),
        ..Default::default()
    };
    let any = client.stats(ctx(&ctr), &stats).unwrap().stats.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage.limit, limit);
    assert!(m.memory.usage.usage > 0, "{:?}", m.memory);
    assert!(m.cpu.usage.total > 0, "{:?}", m.cpu);
    assert!(m.pids.current >= 1, "{:?}", m.pids);
    // What ctr shows comes from the same call.
    let table = ctr.ok(&["task", "metrics", &id]);
    assert!(table.contains(&limit.to_string()), "{table}");
    let garbage = UpdateTaskRequest {
        id: id.clone(),
        resources: Some(Any {
            value: b"not json".to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    assert_eq!(
        status_code(client.update(ctx(&ctr), &garbage)),
        Code::INVALID_ARGUMENT
    );
}

#[test]
fn an_oom_kill_of_one_container_leaves_its_group_running() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-oom");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let group = unique("g");
    let (other, _go) = sleeper(&ctr, root.path(), &group);
    let id = unique("hog");
    let _g = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let ann = format!("io.nestcache.group={group}");
    // The string doubles until the 32 MiB limit kills the shell.
    let hog = "x=a; while true; do x=$x$x; done";
    let out = ctr.run_rootfs(
        root.path(),
        &["--annotation", &ann, "--memory-limit", "33554432"],
        &id,
        &["/bin/sh", "-c", hog],
    );
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(ctr.task_status(&other).as_deref(), Some("RUNNING"));
    let exec = ctr.run(&["task", "exec", "--exec-id", "after", &other, "/bin/true"]);
    assert!(exec.status.success(), "{}", stderr(&exec));
}

/// The exit status and exited_at (seconds) of a Wait on `id`/`exec_id`.
fn wait_exit(client: &TaskClient, ctx: context::Context, id: &str, exec_id: &str) -> (u32, f64) {
    let req = WaitRequest {
        id: id.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    let r = client.wait(ctx, &req).unwrap();
    let t = r.exited_at.into_option().unwrap();
    (r.exit_status, t.seconds as f64 + t.nanos as f64 / 1e9)
}

#[test]
fn an_exec_whose_output_is_held_open_does_not_hold_back_its_groups_other_exits() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-drain");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let group = unique("g");
    let (a, _ga) = sleeper(&ctr, root.path(), &group);
    let (b, _gb) = sleeper(&ctr, root.path(), &group);
    let (client, _) = shim_client(&ctr, &a);
    // The exec's shell exits at once; the sleep it leaves behind keeps its stdout open,
    // so its exit waits OUTPUT_DRAIN (2 s) for the copy to finish.
    let exec = {
        let a = a.clone();
        let ctr = Ctr {
            address: ctr.address.clone(),
            namespace: ctr.namespace.clone(),
        };
        std::thread::spawn(move || {
            ctr.run(&[
                "task",
                "exec",
                "--exec-id",
                "held",
                &a,
                "/bin/sh",
                "-c",
                "sleep 6 & exit 0",
            ])
        })
    };
    let mut sh_pid = 0;
    ctr.wait_for("the exec to start", || {
        let req = StateRequest {
            id: a.clone(),
            exec_id: "held".into(),
            ..Default::default()
        };
        sh_pid = client.state(ctx(&ctr), &req).map(|s| s.pid).unwrap_or(0);
        sh_pid != 0
    });
    // Waited on before anything exits, so ctr's delete of the exec cannot come first.
    let held = {
        let (client, c, a) = (client.clone(), ctx(&ctr), a.clone());
        std::thread::spawn(move || wait_exit(&client, c, &a, "held"))
    };
    ctr.wait_for("the exec's shell to exit", || !alive(sh_pid));
    // Now another container of the group exits: its exit must not queue behind the drain.
    ctr.ok(&["task", "kill", "-s", "KILL", &b]);
    let (b_status, b_at) = wait_exit(&client, ctx(&ctr), &b, "");
    let (held_status, held_at) = held.join().unwrap();
    assert_eq!((b_status, held_status), (137, 0));
    assert!(
        b_at < held_at,
        "the group's other exit was reported after the held exec's drain: {b_at} >= {held_at}"
    );
    let out = exec.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}
