//! The shim as a drop-in for containerd's runc shim: `ctr` runs ordinary containers with
//! `--runtime io.containerd.nestcache.v2` (rootfs laid out on disk) and sees the same
//! stdio, exit codes, exec, signals, pids and events.

use std::io::Write;
use std::process::Stdio;

use testkit::ctr::*;
use testkit::rootfs::*;
use testkit::{stderr, stdout, unique};

#[test]
fn run_streams_stdout_and_stderr_and_returns_the_exit_code() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-run");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let out = ctr.run_rootfs(
        root.path(),
        &["--rm"],
        &id,
        &[
            "/bin/sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "to-stdout\n");
    assert!(stderr(&out).contains("to-stderr"), "{}", stderr(&out));
    assert!(ctr.task_status(&id).is_none(), "--rm left the task");
}

#[test]
fn stdin_reaches_the_process_and_eof_ends_it() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-stdin");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let mut child = ctr
        .cmd()
        .args(["run", "--rm", "--runtime", RUNTIME, "--rootfs"])
        .arg(root.path())
        .args([id.as_str(), "/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "line one\nline two\n");
}

#[test]
fn terminal_gives_the_process_a_tty() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-tty");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    // The exit used to be published before the console was copied out, and ctr then
    // missed the output about 1 run in 12: a few runs make that loss show.
    for _ in 0..12 {
        let id = unique("c");
        // ctr -t needs a terminal of its own: script(1) gives it one.
        let line = format!(
            "ctr --address {} --namespace {} run --rm -t --runtime {RUNTIME} --rootfs {} {id} /bin/sh -c 'tty; exit 4'",
            ctr.address,
            ctr.namespace,
            root.path().display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from bsdutils");
        assert_eq!(out.status.code(), Some(4), "{}", stdout(&out));
        assert!(
            stdout(&out).contains("/dev/pts/"),
            "{id}: {:?}",
            stdout(&out)
        );
    }
}

#[test]
fn exec_pids_signals_and_exit_statuses() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-exec");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    // PID 1 ignores SIGTERM unless it traps it: the trap proves the signal arrived.
    let out = ctr.run_rootfs(
        root.path(),
        &["-d"],
        &id,
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.1; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ctr.task_status(&id).as_deref(), Some("RUNNING"));
    let init_pid = ctr.task_pid(&id);

    let exec = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "/bin/sh",
        "-c",
        "echo in-exec; exit 5",
    ]);
    assert_eq!(exec.status.code(), Some(5), "{}", stderr(&exec));
    assert_eq!(stdout(&exec), "in-exec\n");

    let ps = ctr.ok(&["task", "ps", &id]);
    assert!(ps.contains(&init_pid.to_string()), "{ps}");

    ctr.ok(&["task", "kill", "-s", "TERM", &id]);
    ctr.wait_for("the trapped TERM to end the task", || {
        ctr.task_status(&id).as_deref() == Some("STOPPED")
    });
    let rm = ctr.run(&["task", "rm", &id]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    // ctr reports a non-zero exit status on delete.
    assert!(stderr(&rm).contains("exit code 42"), "{}", stderr(&rm));
    ctr.ok(&["container", "rm", &id]);
}

#[test]
fn sigkill_reports_137_and_exec_into_a_stopped_task_fails() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-kill");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let out = ctr.run_rootfs(root.path(), &["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    ctr.ok(&["task", "kill", "-s", "KILL", &id]);
    ctr.wait_for("SIGKILL to stop the task", || {
        ctr.task_status(&id).as_deref() == Some("STOPPED")
    });
    let exec = ctr.run(&["task", "exec", "--exec-id", "late", &id, "/bin/true"]);
    assert!(!exec.status.success(), "exec into a stopped task worked");
    let rm = ctr.run(&["task", "rm", &id]);
    assert!(stderr(&rm).contains("exit code 137"), "{}", stderr(&rm));
    ctr.ok(&["container", "rm", &id]);
}

#[test]
fn missing_command_fails_create_with_runc_reason() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-nocmd");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let out = ctr.run_rootfs(root.path(), &["--rm"], &id, &["/bin/no-such-command"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-command"), "{}", stderr(&out));
    let _ = ctr.run(&["container", "rm", &id]);
}

#[test]
fn containerd_sees_task_events_in_order() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-events");
    let events = ctr.events();
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let out = ctr.run_rootfs(root.path(), &["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exec = ctr.run(&["task", "exec", "--exec-id", "ex", &id, "/bin/true"]);
    assert!(exec.status.success(), "{}", stderr(&exec));
    ctr.remove(&id);
    let lines = events.collect_until(&["/containers/delete", &id]);
    // `ctr events` shows every namespace: other tests' tasks come and go meanwhile (and
    // an id can be a prefix of another's).
    let ours = format!("\"container_id\":\"{id}\"");
    let topics: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(&ours))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{}",
        lines.join("\n")
    );
    let exits: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("/tasks/exit") && l.contains(&ours))
        .collect();
    assert!(exits[0].contains("\"id\":\"ex\""), "{}", exits[0]);
    assert!(exits[1].contains("\"exit_status\":137"), "{}", exits[1]);
}

/// The nestcache shim processes serving namespace `ns` (one per group).
fn shims_in(ns: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let serving = args.iter().any(|a| a == "-socket");
        let ours = args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-nestcache-v2"));
        let in_ns = args.windows(2).any(|w| w[0] == "-namespace" && w[1] == ns);
        if ours && serving && in_ns {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn group_annotation_shares_one_shim_until_its_last_task_goes() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-group");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let (a, b, solo) = (unique("a"), unique("b"), unique("solo"));
    let _guards = TaskGuard::each(&ctr, &[&a, &b, &solo]);
    let group = unique("g");
    let annotation = format!("io.nestcache.group={group}");
    // No linger: the shim goes with the group's last task (a_group_shim_lingers_...).
    let no_linger = linger_config(root.path(), 0);
    let no_linger = no_linger.to_str().unwrap();
    for id in [&a, &b] {
        let out = ctr.run_rootfs(
            root.path(),
            &[
                "-d",
                "--annotation",
                &annotation,
                "--runtime-config-path",
                no_linger,
            ],
            id,
            &["/bin/sleep", "1000"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(shims_in(&ctr.namespace).len(), 1, "a and b share a shim");
    let out = ctr.run_rootfs(root.path(), &["-d"], &solo, &["/bin/sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(shims_in(&ctr.namespace).len(), 2, "solo has its own shim");

    // Removing one task of the group leaves the other served by the same shim.
    ctr.remove(&a);
    assert_eq!(ctr.task_status(&b).as_deref(), Some("RUNNING"));
    let exec = ctr.run(&["task", "exec", "--exec-id", "e1", &b, "/bin/echo", "still"]);
    assert_eq!(stdout(&exec), "still\n", "{}", stderr(&exec));
    assert_eq!(shims_in(&ctr.namespace).len(), 2);

    // The group's last task takes its shim and its socket with it.
    ctr.remove(&b);
    ctr.wait_for("the group's shim to exit", || {
        shims_in(&ctr.namespace).len() == 1
    });
    let socket = containerd_shim::socket_address(
        &ctr.address,
        &ctr.namespace,
        &format!("nestcache-{group}"),
    );
    let socket = socket.trim_start_matches("unix://").to_string();
    ctr.wait_for("the group's socket to go", || {
        !std::path::Path::new(&socket).exists()
    });

    // A new task of the group starts a new shim.
    let again = unique("again");
    let _g = TaskGuard {
        ctr: &ctr,
        id: again.clone(),
    };
    let out = ctr.run_rootfs(
        root.path(),
        &[
            "--rm",
            "--annotation",
            &annotation,
            "--runtime-config-path",
            no_linger,
        ],
        &again,
        &["/bin/echo", "again"],
    );
    assert_eq!(stdout(&out), "again\n", "{}", stderr(&out));
    ctr.remove(&solo);
    ctr.wait_for("every shim to exit", || shims_in(&ctr.namespace).is_empty());
}

/// A shim config (`ctr run --runtime-config-path`) asking for this linger.
fn linger_config(dir: &std::path::Path, ms: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{}.json", unique("linger")));
    std::fs::write(&path, serde_json::json!({ "linger_ms": ms }).to_string()).unwrap();
    path
}

/// `ctr run --rm` of `/bin/echo ID` in `group`, with the shim config `config`.
fn echo_in_group(
    ctr: &Ctr,
    root: &std::path::Path,
    group: &str,
    config: &std::path::Path,
    id: &str,
) {
    let annotation = format!("io.nestcache.group={group}");
    let out = ctr.run_rootfs(
        root,
        &[
            "--rm",
            "--annotation",
            &annotation,
            "--runtime-config-path",
            config.to_str().unwrap(),
        ],
        id,
        &["/bin/echo", id],
    );
    assert_eq!(stdout(&out), format!("{id}\n"), "{}", stderr(&out));
}

fn group_socket(ctr: &Ctr, group: &str) -> std::path::PathBuf {
    let socket = containerd_shim::socket_address(
        &ctr.address,
        &ctr.namespace,
        &format!("nestcache-{group}"),
    );
    socket.trim_start_matches("unix://").into()
}

#[test]
fn a_group_shim_lingers_for_the_groups_next_task_then_exits() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-linger");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let long = linger_config(root.path(), 60_000);
    let short = linger_config(root.path(), 300);
    let group = unique("g");
    let ids = [unique("first"), unique("second"), unique("last")];
    let _guards = TaskGuard::each(&ctr, &ids);

    echo_in_group(&ctr, root.path(), &group, &long, &ids[0]);
    let lingering = shims_in(&ctr.namespace);
    assert_eq!(
        lingering.len(),
        1,
        "the group's shim stays after its last task"
    );
    // The group's next task joins it: no shim daemon is spawned.
    echo_in_group(&ctr, root.path(), &group, &long, &ids[1]);
    assert_eq!(
        shims_in(&ctr.namespace),
        lingering,
        "the next task joined it"
    );
    // The last create's linger holds: the shim goes 300 ms after that task, and its socket
    // with it; nothing of the tasks is left.
    echo_in_group(&ctr, root.path(), &group, &short, &ids[2]);
    ctr.wait_for("the lingering shim to exit", || {
        shims_in(&ctr.namespace).is_empty()
    });
    let socket = group_socket(&ctr, &group);
    assert!(!socket.exists(), "socket {} left", socket.display());
    assert!(ctr.ok(&["task", "ls", "-q"]).trim().is_empty());
    assert!(ctr.ok(&["containers", "ls", "-q"]).trim().is_empty());
}

#[test]
fn a_lingering_shim_serves_the_next_task_after_containerd_restarts() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let containerd = testkit::containerd::PrivateContainerd::start();
    let ctr = Ctr::at(&containerd.address, "shim-linger-restart");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let long = linger_config(root.path(), 60_000);
    let none = linger_config(root.path(), 0);
    let group = unique("g");
    let ids = [unique("before"), unique("after"), unique("last")];
    let _guards = TaskGuard::each(&ctr, &ids);
    echo_in_group(&ctr, root.path(), &group, &long, &ids[0]);
    let lingering = shims_in(&ctr.namespace);
    assert_eq!(lingering.len(), 1);
    // The new containerd knows nothing of a shim without tasks; the group's next task
    // still joins it, and its output and exit reach the new containerd.
    containerd.restart();
    echo_in_group(&ctr, root.path(), &group, &long, &ids[1]);
    assert_eq!(
        shims_in(&ctr.namespace),
        lingering,
        "joined across the restart"
    );
    echo_in_group(&ctr, root.path(), &group, &none, &ids[2]);
    ctr.wait_for("the shim to exit with its last task", || {
        shims_in(&ctr.namespace).is_empty()
    });
    assert!(!group_socket(&ctr, &group).exists());
}
