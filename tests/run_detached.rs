//! Detached runs as Docker and nerdctl do them, against a real containerd + runc: `-d -t`
//! (a terminal whose output reaches `logs`) and `-d --rm` (removed when it exits, by a
//! watcher; by the orphan reaper if the watcher dies).

use std::time::{Duration, Instant};

use testkit::nested::{stdout, Fixture};

fn fixture(prefix: &str) -> (Fixture, String) {
    let f = Fixture::new(prefix);
    let img = f.small("detached", |_| {});
    (f, img)
}

/// Polls until no container, lease or volume is left: the watcher works in the
/// background, and removes the container record before its lease and volumes.
fn until_none_left(f: &Fixture) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = |d: std::path::PathBuf| std::fs::read_dir(d).map_or(0, |d| d.count());
    let left = || {
        (
            f.ps().len(),
            names(f.content.join(".nestcache/leases")),
            names(f.env.state_dir().join("volumes")),
        )
    };
    while left() != (0, 0, 0) {
        assert!(Instant::now() < deadline, "still there: {:?}", left());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn detached_with_a_terminal_logs_its_console() {
    testkit::require!(containerd);
    let (f, img) = fixture("det-tty");
    for runtime in ["runc", "shim"] {
        let name = format!("tty-{runtime}");
        let script = "tty; echo out; echo err >&2";
        f.ok(&[
            "-d",
            "-t",
            "--runtime",
            runtime,
            "--name",
            &name,
            &img,
            "sh",
            "-c",
            script,
        ]);
        assert_eq!(f.env.ok(&["wait", &name]).trim(), "0");
        // One console carries both streams, with the terminal's CR LF line ends.
        let out = f.env.run(&["logs", &name]);
        let text = stdout(&out).replace("\r\n", "\n");
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines.len() == 3 && lines[0].starts_with("/dev/pts/"),
            "{runtime}: {text:?}"
        );
        assert_eq!(lines[1..], ["out", "err"], "{runtime}");
        f.env.ok(&["rm", &name]);
    }
    f.assert_nothing_left();
}

#[test]
fn detached_rm_is_removed_when_it_exits() {
    testkit::require!(containerd);
    let (f, img) = fixture("det-rm");
    // With an anonymous volume, which goes with it.
    f.ok(&[
        "-d", "--rm", "--name", "gone", "-v", "/data", &img, "sh", "-c", "exit 3",
    ]);
    until_none_left(&f);
    testkit::leaks::assert_no_leaks(&f.env, &f.content);
    assert_eq!(f.env.ok(&["volume", "ls", "-q"]), "");

    // A watcher that dies leaves the container to the reaper: once its task has exited,
    // the next command removes it.
    f.ok(&["-d", "--rm", "--name", "orphan", &img, "sleep", "300"]);
    let labels: serde_json::Value =
        serde_json::from_str(&f.env.ok(&["inspect", "-f", "{{.Config.Labels}}", "orphan"]))
            .expect("labels JSON");
    let owner = labels["io.nestcache.owner"].as_str().expect("owner label");
    let pid: i32 = owner.split(':').next().unwrap().parse().expect("owner pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("watcher cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__watch-rm"),
        "the owner is not the watcher: {cmdline:?}"
    );
    // SAFETY: kill(2) on the watcher this test's run started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // Still running: the reaper leaves a live container alone.
    f.env.ok(&["ps"]);
    assert_eq!(f.ps().len(), 1, "{:?}", f.ps());
    // Once it has exited, any command (here the polling `ps`) reaps it.
    f.env.ok(&["kill", "orphan"]);
    until_none_left(&f);
    testkit::leaks::assert_no_leaks(&f.env, &f.content);
}
