//! Faults: a shim killed with SIGKILL, containerd restarted under running tasks, and the
//! `delete` subcommand cleaning up a bundle on its own.

use std::process::Command;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::Message;
use testkit::ctr::*;
use testkit::rootfs::*;
use testkit::{stderr, stdout, unique, PrivateContainerd};

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state says Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Kills the task's shim with SIGKILL; containerd must then run `delete`, which kills the
/// task and unmounts its rootfs.
fn kill_shim_and_check(ctr: &Ctr, id: &str) {
    let task = ctr.task_pid(id);
    let shim = parent_of(task);
    let cmdline = std::fs::read_to_string(format!("/proc/{shim}/cmdline")).unwrap();
    assert!(
        cmdline.contains("containerd-shim-nestcache-v2"),
        "{cmdline}"
    );
    assert!(
        !mounts_containing(id).is_empty(),
        "nothing mounted for {id}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ctr.wait_for("containerd to clean up after the dead shim", || {
        !alive(task) && mounts_containing(id).is_empty() && ctr.task_status(id).is_none()
    });
    ctr.ok(&["container", "rm", id]);
}

#[test]
fn killed_shim_leaves_no_task_and_no_mount_for_an_imported_image() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-kill-img");
    let work = tempfile::tempdir().unwrap();
    store_with_busybox(work.path(), &work.path().join("store"), "imp");
    let archive = work.path().join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(work.path().join("layout"))
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ctr.ok(&[
        "images",
        "import",
        "--base-name",
        "example.test/shim",
        archive.to_str().unwrap(),
    ]);
    let id = unique("k");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    ctr.ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "example.test/shim:imp",
        &id,
        "/bin/sleep",
        "1000",
    ]);
    kill_shim_and_check(&ctr, &id);
}

#[test]
fn killed_shim_leaves_no_mount_for_a_store_rootfs() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-kill-store");
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    store_with_busybox(&work.path().join("build"), &store, "st");
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let id = unique("k");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let ann_store = format!("io.nestcache.store={}", store.display());
    let config = shim_config(work.path(), &[work.path()]);
    let out = ctr.run_rootfs(
        &empty,
        &[
            "-d",
            "--runtime-config-path",
            config.to_str().unwrap(),
            "--annotation",
            &ann_store,
            "--annotation",
            "io.nestcache.image=st",
        ],
        &id,
        &["/bin/sleep", "1000"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let leases = || {
        let st = nestcache::store::Store::open_existing(&store).unwrap();
        st.leases()
            .unwrap()
            .into_iter()
            .filter(|l| l.holder.container == id)
            .count()
    };
    assert_eq!(leases(), 1, "no lease while running");
    kill_shim_and_check(&ctr, &id);
    // containerd's `delete` of the dead shim's task released it.
    assert_eq!(leases(), 0, "the lease outlived its container");
}

#[test]
fn tasks_survive_a_containerd_restart() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let containerd = PrivateContainerd::start();
    let ctr = Ctr::at(&containerd.address, "shim-restart");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("r");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let out = ctr.run_rootfs(
        root.path(),
        &["-d"],
        &id,
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 9' TERM; while true; do sleep 0.1; done",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = ctr.task_pid(&id);

    containerd.restart();

    assert_eq!(ctr.task_status(&id).as_deref(), Some("RUNNING"));
    assert_eq!(ctr.task_pid(&id), pid);
    let exec = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "after",
        &id,
        "/bin/echo",
        "still here",
    ]);
    assert_eq!(stdout(&exec), "still here\n", "{}", stderr(&exec));
    let events = ctr.events();
    ctr.ok(&["task", "kill", "-s", "TERM", &id]);
    // The exit reaches the restarted containerd as an event, with the right status.
    let init_id = format!("\"id\":\"{id}\"");
    let lines = events.collect_until(&["/tasks/exit", &init_id]);
    let exit = lines.last().unwrap();
    assert!(exit.contains("\"exit_status\":9"), "{exit}");
    let rm = ctr.run(&["task", "rm", &id]);
    assert!(stderr(&rm).contains("exit code 9"), "{}", stderr(&rm));
    ctr.ok(&["container", "rm", &id]);
}

#[test]
fn delete_subcommand_unmounts_the_rootfs_and_reports_a_killed_task() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let bundle = tempfile::tempdir().unwrap();
    let rootfs = bundle.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &rootfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let needle = rootfs.to_str().unwrap().to_string();
    assert_eq!(mounts_containing(&needle).len(), 1);
    let id = unique("gone");
    let out = Command::new(env!("CARGO_BIN_EXE_containerd-shim-nestcache-v2"))
        .args(["-namespace", "shim-delete", "-id", &id, "-address"])
        .arg("/nonexistent/containerd.sock")
        .args(["-publish-binary", "/bin/false", "-bundle"])
        .arg(bundle.path())
        .arg("delete")
        .current_dir(bundle.path())
        .env("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let resp = DeleteResponse::parse_from_bytes(&out.stdout).unwrap();
    assert_eq!(resp.exit_status, 137);
    assert!(resp.exited_at.is_some());
    assert!(
        mounts_containing(&needle).is_empty(),
        "rootfs still mounted"
    );
}

/// Runs ctr, killed after 30 s (so a shim that hangs fails the test instead of hanging it).
fn ctr_bounded(ctr: &Ctr, args: &[&str]) -> std::process::Output {
    std::process::Command::new("timeout")
        .args([
            "30",
            "ctr",
            "--address",
            &ctr.address,
            "--namespace",
            &ctr.namespace,
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("timeout(1) from coreutils")
}

#[test]
fn group_shim_keeps_reaping_after_containerd_closes_its_debug_log() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    // containerd's RUST_LOG reaches the shim: every SIGPIPE got logged at debug level,
    // and the log write raised the next one once containerd had closed the log.
    let containerd = PrivateContainerd::start_with_env(&[("RUST_LOG", "debug")]);
    let ctr = Ctr::at(&containerd.address, "shim-debug-log");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let (a, b) = (unique("a"), unique("b"));
    let annotation = format!("io.nestcache.group={}", unique("g"));
    for id in [&a, &b] {
        let out = ctr.run_rootfs(
            root.path(),
            &["-d", "--annotation", &annotation],
            id,
            &["/bin/sleep", "1000"],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // Deleting the group's first task makes containerd close the shim's log.
    ctr.remove(&a);
    let codes: Vec<_> = (0..3)
        .map(|n| {
            let exec_id = format!("e{n}");
            let args = [
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                &b,
                "/bin/sh",
                "-c",
                "exit 3",
            ];
            ctr_bounded(&ctr, &args).status.code()
        })
        .collect();
    // Bounded too: a spinning shim would hang TaskGuard's cleanup.
    ctr_bounded(&ctr, &["task", "kill", "-s", "KILL", &b]);
    ctr_bounded(&ctr, &["task", "delete", "-f", &b]);
    ctr_bounded(&ctr, &["container", "delete", &b]);
    assert_eq!(
        codes,
        [Some(3); 3],
        "exit codes of 3 execs (124: timed out)"
    );
}
