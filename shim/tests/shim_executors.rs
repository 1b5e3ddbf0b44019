//! Both executors (`io.nestcache.executor`: `runc`, every step by runc's binary; and
//! `runc-direct`, start and the delete of a stopped container done by the shim itself)
//! give the same OCI semantics under real containerd: exit codes, pid namespace, seccomp,
//! cgroup limits, exec, signals, and nothing left in runc's state. (A terminal is
//! `shim_runc::terminal_gives_the_process_a_tty`, with the default executor.)

use std::path::Path;

use testkit::ctr::*;
use testkit::rootfs::*;
use testkit::{stderr, stdout, unique};

const EXECUTORS: [&str; 2] = ["runc", "runc-direct"];

/// runc's state dir for the namespace (the shim's default root, no runc options given).
fn runc_state(ns: &str, id: &str) -> std::path::PathBuf {
    Path::new("/run/containerd/nestcache").join(ns).join(id)
}

const LIMIT: &str = "67108864";

/// The memory limit of `pid`'s cgroup, read on the host (cgroup v1 or v2).
fn memory_limit(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let (v1, v2) = text.lines().fold((None, None), |(v1, v2), line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            return (v1, v2);
        };
        let path = path.trim_start_matches('/').to_string();
        if controllers.split(',').any(|c| c == "memory") {
            (Some(path), v2)
        } else if controllers.is_empty() {
            (v1, Some(path))
        } else {
            (v1, v2)
        }
    });
    let file = match (v1, v2) {
        (Some(p), _) => Path::new("/sys/fs/cgroup/memory")
            .join(p)
            .join("memory.limit_in_bytes"),
        (None, Some(p)) => Path::new("/sys/fs/cgroup").join(p).join("memory.max"),
        (None, None) => return None,
    };
    std::fs::read_to_string(file)
        .ok()
        .map(|s| s.trim().to_string())
}

fn annotation(executor: &str) -> String {
    format!("io.nestcache.executor={executor}")
}

#[test]
fn both_executors_run_with_a_pid_ns_seccomp_and_the_exit_code() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-executors");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    // PID 1 of its own namespace, seccomp in filter mode (2), and its exit code.
    let script = "echo pid=$$; grep '^Seccomp:' /proc/self/status; exit 7";
    for executor in EXECUTORS {
        let id = unique("c");
        let ann = annotation(executor);
        let out = ctr.run_rootfs(
            root.path(),
            &["--rm", "--seccomp", "--annotation", &ann],
            &id,
            &["/bin/sh", "-c", script],
        );
        assert_eq!(out.status.code(), Some(7), "{executor}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("pid=1\n"), "{executor}: {text}");
        assert!(text.contains("Seccomp:\t2"), "{executor}: {text}");
        assert!(
            !runc_state(&ctr.namespace, &id).exists(),
            "{executor}: runc's state of {id} left behind"
        );
    }
}

#[test]
fn both_executors_serve_limits_exec_and_signals() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-executors-exec");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    for executor in EXECUTORS {
        let id = unique("c");
        let _guard = TaskGuard {
            ctr: &ctr,
            id: id.clone(),
        };
        let ann = annotation(executor);
        let out = ctr.run_rootfs(
            root.path(),
            &["-d", "--memory-limit", LIMIT, "--annotation", &ann],
            &id,
            &["/bin/sleep", "1000"],
        );
        assert!(out.status.success(), "{executor}: {}", stderr(&out));
        let limit = memory_limit(ctr.task_pid(&id));
        assert_eq!(
            limit.as_deref(),
            Some(LIMIT),
            "{executor}: the cgroup's memory limit"
        );
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
        assert_eq!(exec.status.code(), Some(5), "{executor}: {}", stderr(&exec));
        assert_eq!(stdout(&exec), "in-exec\n", "{executor}");
        ctr.ok(&["task", "kill", "-s", "KILL", &id]);
        ctr.wait_for("SIGKILL to stop the task", || {
            ctr.task_status(&id).as_deref() == Some("STOPPED")
        });
        let rm = ctr.run(&["task", "rm", &id]);
        assert!(
            stderr(&rm).contains("exit code 137"),
            "{executor}: {}",
            stderr(&rm)
        );
        assert!(!runc_state(&ctr.namespace, &id).exists(), "{executor}");
        ctr.ok(&["container", "rm", &id]);
    }
}

#[test]
fn an_unknown_executor_is_refused_clearly() {
    testkit::require!(containerd, tool "ctr", tool "busybox");
    let ctr = Ctr::new("shim-executors-bad");
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let id = unique("c");
    let ann = annotation("youki-someday");
    let out = ctr.run_rootfs(
        root.path(),
        &["--rm", "--annotation", &ann],
        &id,
        &["/bin/true"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("io.nestcache.executor") && err.contains("runc-direct"),
        "{err}"
    );
    let _ = ctr.run(&["container", "rm", &id]);
}
