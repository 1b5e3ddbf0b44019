//! Faults around running nested containers (issue 12, items 1-3 and 14), against a real
//! containerd + runc: gc while a container runs, a `run --rm` killed with SIGKILL, `cache
//! rm` with nested containers, containerd restarted during a foreground run, 20
//! concurrent runs, relative paths. Each test ends with `store check` clean and a leak
//! check (containers, tasks, mounts, state dirs, shims, temp files, leases).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::leaks::{assert_namespace_empty, assert_no_leaks, names_in};
use testkit::{unique, Env, PrivateContainerd};

/// A cache with the `small` image staged, in an environment of its own.
struct Fixture {
    env: Env,
    cache: String,
    content: PathBuf,
    image: String,
    _images: tempfile::TempDir,
}

/// Waits in the container until the test creates `go` in the cache.
const WAIT_FOR_GO: &str = "while [ ! -e /cache/go ]; do sleep 0.05; done";

impl Fixture {
    fn new(prefix: &str) -> Self {
        Self::in_env(Env::new(prefix))
    }

    fn in_env(env: Env) -> Self {
        let cache = unique("c");
        env.ok(&[
            "cache", "create", &cache, "--path", "/cache", "--ttl", "30m",
        ]);
        let info: serde_json::Value =
            serde_json::from_str(&env.ok(&["cache", "inspect", &cache, "--json"]))
                .expect("cache inspect --json");
        let content = PathBuf::from(info["content_dir"].as_str().expect("content_dir"));
        let images = tempfile::tempdir().expect("temp dir");
        let mut spec = mkimage::preset("small").expect("preset");
        spec.ref_name = "faults".into();
        let layout = images.path().join("faults");
        let built = spec.write_layout(&layout).expect("mkimage");
        let source = format!("oci:{}:{}", layout.display(), built.ref_name);
        env.ok(&["stage", "--cache", &cache, &source]);
        Fixture {
            env,
            cache,
            content,
            image: built.ref_name,
            _images: images,
        }
    }

    /// `nestcache run --cache C ARGS...`, stdout piped.
    fn spawn(&self, args: &[&str]) -> (Child, BufReader<ChildStdout>) {
        self.spawn_with(args, Stdio::null())
    }

    /// [`Fixture::spawn`] with that stdin.
    fn spawn_with(&self, args: &[&str], stdin: Stdio) -> (Child, BufReader<ChildStdout>) {
        let mut cmd = self.env.cmd();
        // NESTCACHE_TEST_LOG=nestcache=debug: the run's log in the failure message.
        if let Ok(log) = std::env::var("NESTCACHE_TEST_LOG") {
            cmd.env("RUST_LOG", log);
        }
        let mut child = cmd
            .args(["run", "--cache", &self.cache])
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nestcache run");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        (child, out)
    }

    fn go(&self) {
        std::fs::write(self.content.join("go"), b"").expect("write go");
    }

    fn ctr(&self, args: &[&str]) -> String {
        ctr(&self.env, args)
    }

    /// Waits until the task of `id` has stopped (the process exited).
    fn wait_stopped(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tasks = self.ctr(&["tasks", "ls"]);
            if tasks
                .lines()
                .any(|l| l.starts_with(id) && l.contains("STOPPED"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never stopped:\n{tasks}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn nested_ids(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .lines()
            .filter(|l| !l.starts_with("nc-cache-"))
            .map(str::to_string)
            .collect()
    }

    fn store_gc(&self) -> String {
        self.env.ok(&["store", "gc", "--cache", &self.cache])
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Best effort, never a panic: the test may have failed with containerd stopped.
        let listed = Command::new("ctr")
            .args(["--address", &self.env.address])
            .args(["--namespace", &self.env.namespace])
            .args(["containers", "ls", "-q"])
            .output();
        let Ok(listed) = listed else { return };
        let listed = String::from_utf8_lossy(&listed.stdout);
        for id in listed.lines().filter(|l| !l.starts_with("nc-cache-")) {
            self.env.run(&["rm", "-f", id]);
        }
        self.env.run(&["cache", "rm", &self.cache]);
    }
}

fn ctr(env: &Env, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .args(["--address", &env.address, "--namespace", &env.namespace])
        .args(args)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn line(out: &mut BufReader<ChildStdout>) -> String {
    let mut l = String::new();
    out.read_line(&mut l).expect("read a line of output");
    l
}

fn rest(mut out: BufReader<ChildStdout>) -> String {
    let mut s = String::new();
    out.read_to_string(&mut s).expect("read the output");
    s
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `images rm` + `store gc` while a container runs from the image: its rootfs stays whole
/// (`find / -xdev` counts the same before and after), the image is freed once it is gone.
fn gc_during_a_run(runtime: &str) {
    let f = Fixture::new("gc-run");
    let script = format!("find / -xdev | wc -l; {WAIT_FOR_GO}; find / -xdev | wc -l");
    let (mut child, mut out) = f.spawn(&[
        "--rm",
        "--runtime",
        runtime,
        &f.image,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let before = line(&mut out);
    assert!(
        before.trim().parse::<u32>().is_ok_and(|n| n > 10),
        "{before:?}"
    );

    let refused = f
        .env
        .fails(&["images", "rm", &f.image, "--cache", &f.cache]);
    assert!(refused.contains("in use by"), "{refused}");
    f.env
        .ok(&["images", "rm", "--force", &f.image, "--cache", &f.cache]);
    let gc = f.store_gc();
    assert!(
        gc.starts_with("removed 0 blobs (0 bytes), 0 extracted layers"),
        "{gc}"
    );
    f.go();
    let after = line(&mut out);
    assert_eq!(
        before, after,
        "the rootfs changed under the running container"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "{}", stderr_of(&mut child));

    // Removed with --rm: its lease went with it, so gc now frees the image.
    let gc = f.store_gc();
    assert!(!gc.starts_with("removed 0 blobs"), "{gc}");
    assert_no_leaks(&f.env, &f.content);
}

#[test]
fn gc_during_a_run_keeps_its_rootfs() {
    testkit::require!(containerd);
    gc_during_a_run("runc");
}

#[test]
fn gc_during_a_shim_run_keeps_its_rootfs() {
    testkit::require!(containerd, tool "containerd-shim-nestcache-v2");
    gc_during_a_run("shim");
}

/// SIGKILL of a foreground `run --rm`: the container runs on (as Docker's does when its
/// client dies); once its process has exited, the next command reaps it completely.
#[test]
fn a_killed_run_rm_is_reaped_by_the_next_command() {
    testkit::require!(containerd);
    let f = Fixture::new("orphan");
    let script = format!("echo up; {WAIT_FOR_GO}");
    let (mut child, mut out) = f.spawn(&["--rm", &f.image, "--", "sh", "-c", &script]);
    assert_eq!(line(&mut out), "up\n");
    child.kill().expect("SIGKILL nestcache run");
    child.wait().expect("wait");
    let ids = f.nested_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");

    // Still running: nobody reaps it yet.
    let ps = f.env.ok(&["ps", "--json"]);
    assert!(ps.contains(&ids[0]), "{ps}");
    f.go();
    f.wait_stopped(&ids[0]);
    // A gc of the store alone (no command that reaps) keeps its layers: containerd says
    // its container exists (stopped, its rootfs still mounted).
    let store = f.content.to_string_lossy().into_owned();
    let gc = f.env.ok(&["store", "gc", "--store", &store]);
    assert!(gc.contains("1 leases kept, 0 reclaimed"), "{gc}");

    let out = f.env.run(&["ps", "-a", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("removed orphaned nested container {}", ids[0])),
        "{err}"
    );
    assert_no_leaks(&f.env, &f.content);
}

/// `cache rm` refuses while a nested container of the cache runs and removes exited ones
/// with the cache; the content dir never goes from under a container.
#[test]
fn cache_rm_with_nested_containers() {
    testkit::require!(containerd);
    let f = Fixture::new("cache-rm");
    let id = unique("n");
    f.env.ok(&[
        "run", "--cache", &f.cache, "-d", "--name", &id, &f.image, "--", "sleep", "1000",
    ]);
    let err = f.env.fails(&["cache", "rm", &f.cache]);
    assert!(err.contains(&id), "{err}");
    assert!(f.content.join("layers").is_dir());
    f.env.ok(&["stop", "--timeout", "1s", &id]);
    let out = f.env.ok(&["cache", "rm", &f.cache]);
    assert!(
        out.contains(&format!("removed exited nested container {id}")),
        "{out}"
    );
    assert!(!f.content.exists(), "content dir left");
    assert!(names_in(&f.env.state_dir().join("containers")).is_empty());
    assert_namespace_empty(&f.env);
}

/// containerd stopped during a foreground run (the process even exits meanwhile) and
/// started again: the output and the real exit code are kept, nothing is left.
///
/// Under load the process prints "one" before containerd's answer to StartTask reached
/// nestcache, so the restart often loses that answer too: the start must then be
/// recognised as done, not failed.
#[test]
fn containerd_restarted_during_a_foreground_run() {
    testkit::require!(containerd);
    let (ctd, f) = fixture_with_own_containerd("ctd-restart");
    let script = format!("echo one; {WAIT_FOR_GO}; echo two; exit 3");
    let (mut child, mut out) = f.spawn(&["--rm", &f.image, "--", "sh", "-c", &script]);
    assert_eq!(line(&mut out), "one\n");
    ctd.stop();
    f.go();
    ctd.restart();
    let output = rest(out);
    let status = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(output, "two\n", "{err}");
    assert_eq!(status.code(), Some(3), "{err}");
    assert_no_leaks(&f.env, &f.content);
}

/// A containerd of the test's own (it is stopped and restarted) with a cache on it.
fn fixture_with_own_containerd(prefix: &str) -> (PrivateContainerd, Fixture) {
    let ctd = PrivateContainerd::start();
    let mut env = Env::new(prefix);
    env.address = ctd.address.clone();
    (ctd, Fixture::in_env(env))
}

/// How long the test leaves containerd down after acting, so that nestcache tries (and,
/// without reconnecting, fails) its call meanwhile. Not an assertion: a slower nestcache
/// makes the test pass without exercising the reconnect, never fail.
const DOWN_FOR: Duration = Duration::from_millis(500);

/// SIGTERM to a foreground `run` while containerd is down: queued, passed on once
/// containerd is back; the process's answer to it and its exit code arrive.
#[test]
fn a_signal_while_containerd_is_down_is_passed_on_after() {
    testkit::require!(containerd);
    let (ctd, f) = fixture_with_own_containerd("ctd-signal");
    let script = "trap 'echo got TERM; exit 7' TERM; echo one; while :; do sleep 0.05; done";
    let (mut child, mut out) = f.spawn(&["--rm", &f.image, "--", "sh", "-c", script]);
    assert_eq!(line(&mut out), "one\n");
    ctd.stop();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM nestcache run");
    std::thread::sleep(DOWN_FOR);
    ctd.restart();
    let output = rest(out);
    let status = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(output, "got TERM\n", "{err}");
    assert_eq!(status.code(), Some(7), "{err}");
    assert_no_leaks(&f.env, &f.content);
}

/// `run -i` whose stdin ends while containerd is down: the data reaches the process
/// (the FIFO needs no containerd), the end of stdin is passed on once it is back.
#[test]
fn stdin_ending_while_containerd_is_down_is_closed_after() {
    testkit::require!(containerd);
    let (ctd, f) = fixture_with_own_containerd("ctd-stdin");
    let script = "echo one; cat; echo done; exit 4";
    let (mut child, mut out) = f.spawn_with(
        &["--rm", "-i", &f.image, "--", "sh", "-c", script],
        Stdio::piped(),
    );
    let mut stdin = child.stdin.take().expect("stdin");
    assert_eq!(line(&mut out), "one\n");
    ctd.stop();
    std::io::Write::write_all(&mut stdin, b"x\n").expect("write stdin");
    drop(stdin);
    assert_eq!(line(&mut out), "x\n");
    std::thread::sleep(DOWN_FOR);
    ctd.restart();
    let output = rest(out);
    let status = child.wait().expect("wait");
    let err = stderr_of(&mut child);
    assert_eq!(output, "done\n", "{err}");
    assert_eq!(status.code(), Some(4), "{err}");
    assert_no_leaks(&f.env, &f.content);
}

/// Concurrent deletes of one exited task on the runc shim a cache's containers share, as
/// `stop` and the `run --rm` that waited for it make: none fails, the task is gone
/// ("failed to delete task: ttrpc: closed" once made `run --rm` fail).
#[test]
fn concurrent_deletes_of_one_task_all_succeed() {
    testkit::require!(containerd);
    let f = Fixture::new("del-race");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = rt
        .block_on(nestcache::containerd::Client::connect(
            &f.env.address,
            &f.env.namespace,
        ))
        .expect("connect");
    for _ in 0..4 {
        let id = unique("d");
        let run = ["run", "--cache", &f.cache, "-d", "--name", &id, &f.image];
        f.env.ok(&[&run[..], &["--", "true"]].concat());
        f.wait_stopped(&id);
        let deletes: Vec<_> = (0..8)
            .map(|_| {
                let (client, id) = (client.clone(), id.clone());
                rt.spawn(async move { client.delete_task(&id).await })
            })
            .collect();
        let results: Vec<_> = deletes
            .into_iter()
            .map(|d| rt.block_on(d).expect("join"))
            .collect();
        // Every one succeeds; which got the exit status is the race's (containerd may
        // close the shim connection before even the winner's answer is read).
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let state = rt.block_on(client.task_state(&id)).expect("task state");
        assert!(state.is_none(), "{state:?}");
        f.env.ok(&["rm", &id]);
    }
    assert_no_leaks(&f.env, &f.content);
}

/// 20 concurrent `run --rm` on one cache, with `store gc` running among them: every run
/// sees its whole rootfs and nothing is left behind.
#[test]
fn twenty_concurrent_runs_and_gc_leave_nothing() {
    testkit::require!(containerd);
    let f = Fixture::new("twenty");
    let runs: Vec<_> = (0..20)
        .map(|_| f.spawn(&["--rm", &f.image, "--", "sh", "-c", "find / -xdev | wc -l"]))
        .collect();
    for _ in 0..3 {
        f.store_gc();
    }
    let mut counts = Vec::new();
    for (mut child, out) in runs {
        counts.push(rest(out));
        let status = child.wait().expect("wait");
        assert!(status.success(), "{}", stderr_of(&mut child));
    }
    assert!(counts.iter().all(|c| c == &counts[0]), "{counts:?}");
    assert_no_leaks(&f.env, &f.content);
}

/// Relative `--state-dir` and `--content-dir` are made absolute; `cache rm` removes the
/// parents `cache create` made for the content dir, and only those.
#[test]
fn relative_paths_and_created_parents() {
    testkit::require!(containerd);
    let env = Env::new("paths");
    let cwd = tempfile::tempdir().expect("cwd");
    std::fs::create_dir(cwd.path().join("keep")).expect("mkdir keep");
    let cache = unique("c");
    let rel = |args: &[&str]| {
        let out = env
            .cmd()
            .current_dir(cwd.path())
            .env("NESTCACHE_STATE_DIR", "state")
            .args(args)
            .output()
            .expect("spawn nestcache");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for content in ["a/b/c", "keep/x/y"] {
        rel(&[
            "cache",
            "create",
            &cache,
            "--path",
            "/cache",
            "--content-dir",
            content,
        ]);
        let info: serde_json::Value =
            serde_json::from_str(&rel(&["cache", "inspect", &cache, "--json"])).expect("json");
        let dir = PathBuf::from(info["content_dir"].as_str().expect("content_dir"));
        assert!(dir.is_absolute() && dir.ends_with(content), "{dir:?}");
        let mut spec = mkimage::preset("small").expect("preset");
        spec.ref_name = "rel".into();
        let layout = cwd.path().join("image");
        spec.write_layout(&layout).expect("mkimage");
        rel(&["stage", "--cache", &cache, "oci:image:rel"]);
        assert_eq!(
            rel(&["run", "--rm", "--cache", &cache, "rel", "--", "echo", "ok"]),
            "ok\n"
        );
        assert!(cwd.path().join("state/containers").is_dir());
        assert!(names_in(&cwd.path().join("state/containers")).is_empty());
        assert_no_leaks(&env, &dir);
        rel(&["cache", "rm", &cache]);
        std::fs::remove_dir_all(&layout).expect("rm image");
    }
    assert!(!cwd.path().join("a").exists(), "created parents left");
    assert!(
        cwd.path().join("keep").is_dir(),
        "a parent that existed went"
    );
    assert!(!cwd.path().join("keep/x").exists(), "created parents left");
    assert_namespace_empty(&env);
}
