//! `nestcache run` and friends against a real containerd + runc: a cache container, an
//! image made by mkimage and staged into the cache, nested containers run from it.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::nested::{lines, stderr, stdout, Fixture};
use testkit::{Env, PrivateContainerd};

#[test]
fn image_entrypoint_cmd_env_workdir_user_and_their_overrides() {
    testkit::require!(containerd);
    let f = Fixture::new("run-config");
    let img = f.small("cfg", |c| {
        c.entrypoint = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo args: \"$@\"; echo FOO=$FOO; pwd; id -un".into(),
            "sh".into(),
        ]);
        c.cmd = Some(vec!["a".into(), "b".into()]);
        c.env.push("FOO=image".into());
        c.working_dir = Some("/tmp".into());
        c.user = Some("app".into());
    });
    assert_eq!(
        lines(&f.ok(&["--rm", &img])),
        ["args: a b", "FOO=image", "/tmp", "app"]
    );
    // Arguments replace Cmd, keep the Entrypoint; -e, -w, -u override the config.
    assert_eq!(
        lines(&f.ok(&["--rm", "-e", "FOO=flag", "-w", "/etc", "-u", "root", &img, "--", "x", "y"])),
        ["args: x y", "FOO=flag", "/etc", "root"]
    );
    // --entrypoint replaces the Entrypoint and drops the image's Cmd.
    assert_eq!(
        f.ok(&["--rm", "--entrypoint", "/bin/echo", &img, "--", "hello"]),
        "hello\n"
    );
    assert_eq!(f.ok(&["--rm", "--entrypoint", "/bin/pwd", &img]), "/tmp\n");
    f.assert_nothing_left();
}

#[test]
fn users_by_name_and_number_come_from_the_image() {
    testkit::require!(containerd);
    let f = Fixture::new("run-user");
    let img = f.small("users", |_| {});
    let id = |u: &str| f.ok(&["--rm", "-u", u, &img, "--", "sh", "-c", "id -u; id -g"]);
    assert_eq!(id("app"), "1000\n1000\n");
    assert_eq!(id("1000"), "1000\n1000\n");
    assert_eq!(id("nobody"), "65534\n65534\n");
    assert_eq!(id("app:nogroup"), "1000\n65534\n");
    assert_eq!(id("4242"), "4242\n0\n");
    assert_eq!(id("4242:4343"), "4242\n4343\n");
    // HOME comes from the image's passwd entry.
    assert_eq!(
        f.ok(&["--rm", "-u", "app", &img, "--", "sh", "-c", "echo $HOME"]),
        "/home/app\n"
    );
    // A name the image does not know is an error even if the host knows it.
    let e = f
        .env
        .fails(&f.args(&["--rm", "-u", "daemon", &img, "--", "true"]));
    assert!(e.contains("\"daemon\"") && e.contains("/etc/passwd"), "{e}");
    let e = f
        .env
        .fails(&f.args(&["--rm", "-u", "app:nosuchgroup", &img, "--", "true"]));
    assert!(e.contains("nosuchgroup") && e.contains("/etc/group"), "{e}");
    f.assert_nothing_left();
}

#[test]
fn stdin_pipe_reaches_the_process_with_i() {
    testkit::require!(containerd);
    let f = Fixture::new("run-stdin");
    let img = f.small("stdin", |_| {});
    let mut child = f
        .env
        .cmd()
        .args(f.args(&["--rm", "-i", &img, "--", "sh", "-c", "wc -c; echo done"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(&vec![b'x'; 100_000]).expect("write stdin");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&stdout(&out)), ["100000", "done"]);
    // Without -i the process reads end-of-file at once.
    assert_eq!(f.ok(&["--rm", &img, "--", "wc", "-c"]).trim(), "0");
    f.assert_nothing_left();
}

#[test]
fn exit_codes_0_1_and_137() {
    testkit::require!(containerd);
    let f = Fixture::new("run-exit");
    let img = f.small("exit", |_| {});
    assert_eq!(f.run(&["--rm", &img, "--", "true"]).status.code(), Some(0));
    assert_eq!(f.run(&["--rm", &img, "--", "false"]).status.code(), Some(1));
    assert_eq!(
        f.run(&["--rm", &img, "--", "sh", "-c", "exit 42"])
            .status
            .code(),
        Some(42)
    );
    // SIGKILL: the process is killed from outside (PID 1 ignores it from inside).
    let child = f.spawn(&["--rm", "--name", "killed", &img, "--", "sleep", "60"]);
    f.wait_running("killed");
    f.env.ok(&["stop", "--timeout", "0s", "killed"]);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    f.assert_nothing_left();
}

#[test]
fn sigterm_is_forwarded_to_the_task() {
    testkit::require!(containerd);
    let f = Fixture::new("run-signal");
    let img = f.small("signal", |_| {});
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done";
    let child = f.spawn(&["--rm", "--name", "sig", &img, "--", "sh", "-c", script]);
    f.wait_running("sig");
    // Give the shell a moment to install its trap after it printed nothing yet.
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(lines(&stdout(&out)), ["ready", "got TERM"]);
    f.assert_nothing_left();
}

#[test]
fn the_cache_is_mounted_read_only_and_verified() {
    testkit::require!(containerd);
    let f = Fixture::new("run-cache");
    let img = f.small("cache", |_| {});
    let out = f.run(&["--rm", &img, "--", "ls", "/cache"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    for name in ["blobs", "index.json", "oci-layout"] {
        assert!(listed.lines().any(|l| l == name), "{name} not in {listed}");
    }
    assert!(
        stderr(&out).contains("verified: the nested container sees the cache's content dir"),
        "{}",
        stderr(&out)
    );
    // Read-only by default; --cache-rw writes through to the host's content dir.
    let out = f.run(&["--rm", &img, "--", "touch", "/cache/written"]);
    assert!(!out.status.success());
    assert!(!f.content.join("written").exists());
    f.ok(&["--rm", "--cache-rw", &img, "--", "touch", "/cache/written"]);
    assert!(f.content.join("written").exists());
    std::fs::remove_file(f.content.join("written")).expect("rm");
    // --no-mount-cache: nothing there, nothing verified.
    let out = f.run(&["--rm", "--no-mount-cache", &img, "--", "ls", "/cache"]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("verified"), "{}", stderr(&out));
    // --json reports the verification.
    let report: serde_json::Value =
        serde_json::from_str(&f.ok(&["--rm", "--json", &img, "--", "true"])).expect("json");
    assert_eq!(report["verification"]["ok"], true);
    assert_eq!(report["verification"]["same_directory"], true);
    assert_eq!(report["exit_code"], 0);
    f.assert_nothing_left();
}

#[test]
fn verification_fails_when_the_mount_is_gone() {
    testkit::require!(containerd);
    let f = Fixture::new("run-verify");
    let img = f.small("verify", |_| {});
    assert_eq!(
        f.ok(&["-d", "--name", "v1", &img, "--", "sleep", "60"])
            .trim(),
        "v1"
    );
    let pid = f.wait_running("v1");
    assert!(f.env.ok(&["verify", "v1"]).starts_with("verified"));
    // Take the mount away inside the container's mount namespace.
    let out = Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-m",
            "/bin/busybox",
            "umount",
            "/cache",
        ])
        .output()
        .expect("nsenter");
    assert!(out.status.success(), "{}", stderr(&out));
    let e = f.env.fails(&["verify", "v1"]);
    assert!(e.contains("mount verification failed"), "{e}");
    assert!(e.contains("missing"), "{e}");
    let v: serde_json::Value =
        serde_json::from_slice(&f.env.run(&["verify", "v1", "--json"]).stdout)
            .expect("verify --json");
    assert_eq!(v["ok"], false);
    f.env.ok(&["rm", "-f", "v1"]);
    // A container started without the cache has nothing to verify.
    f.ok(&[
        "-d",
        "--name",
        "v2",
        "--no-mount-cache",
        &img,
        "--",
        "sleep",
        "60",
    ]);
    f.wait_running("v2");
    let e = f.env.fails(&["verify", "v2"]);
    assert!(e.contains("--no-mount-cache"), "{e}");
    f.env.ok(&["rm", "-f", "v2"]);
    f.assert_nothing_left();
}

#[test]
fn detached_logs_ps_stop_rm() {
    testkit::require!(containerd);
    let f = Fixture::new("run-detach");
    let img = f.small("detach", |_| {});
    let script = "echo out; echo err >&2; sleep 60";
    f.ok(&["-d", "--name", "d1", &img, "--", "sh", "-c", script]);
    f.wait_running("d1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The streams stay apart: stdout to stdout, stderr to stderr.
        let o = f.env.run(&["logs", "d1"]);
        let logs = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        if logs.0 == "out\n" && logs.1 == "err\n" {
            break;
        }
        assert!(Instant::now() < deadline, "logs: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(f.env.ok(&["ps"]).contains("d1"));
    let e = f.env.fails(&["rm", "d1"]);
    assert!(e.contains("stop it first"), "{e}");
    f.env.ok(&["stop", "--timeout", "1s", "d1"]);
    assert!(!f.env.ok(&["ps"]).contains("d1"));
    let ps = f.ps();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["status"], "exited");
    assert_eq!(ps[0]["exit_code"], 137);
    f.env.ok(&["rm", "d1"]);
    // logs -f follows until the task has ended.
    f.ok(&[
        "-d",
        "--name",
        "d2",
        &img,
        "--",
        "sh",
        "-c",
        "echo a; sleep 1; echo b",
    ]);
    assert_eq!(f.env.ok(&["logs", "-f", "d2"]), "a\nb\n");
    f.env.ok(&["rm", "d2"]);
    let e = f.env.fails(&["logs", "d1"]);
    assert!(e.contains("d1"), "{e}");
    // -i makes no sense detached (-d --rm is tests/run_detached.rs's).
    assert!(f
        .env
        .fails(&f.args(&["-d", "-i", &img]))
        .contains("--detach"));
    f.assert_nothing_left();
}

#[test]
fn rm_leaves_nothing_and_keep_leaves_the_container() {
    testkit::require!(containerd);
    let f = Fixture::new("run-rm");
    let img = f.small("rm", |_| {});
    f.ok(&["--rm", &img, "--", "sh", "-c", "echo x > /tmp/x"]);
    f.assert_nothing_left();
    // Without --rm the container and its upper dir stay until `nestcache rm`.
    f.ok(&[
        "--name",
        "kept",
        &img,
        "--",
        "sh",
        "-c",
        "echo kept > /tmp/x",
    ]);
    let upper = f.containers_dir().join("kept/upper/tmp/x");
    assert_eq!(std::fs::read_to_string(&upper).expect("upper"), "kept\n");
    let ps = f.ps();
    assert_eq!(
        (ps[0]["id"].as_str(), ps[0]["exit_code"].as_u64()),
        (Some("kept"), Some(0))
    );
    let e = f
        .env
        .fails(&f.args(&["--name", "kept", &img, "--", "true"]));
    assert!(e.contains("already exists"), "{e}");
    f.env.ok(&["rm", "kept"]);
    f.assert_nothing_left();
}

#[test]
fn twenty_concurrent_runs_share_layers_with_own_upper_dirs() {
    testkit::require!(containerd);
    let f = Fixture::new("run-many");
    let mut spec = mkimage::preset("features").expect("preset");
    spec.ref_name = "many".into();
    let img = f.stage(spec);
    let layers_dir = f.content.join("layers");
    let snapshot = || -> Vec<(String, u64, i64)> {
        let mut v = Vec::new();
        for kind in ["diff", "chain"] {
            if let Ok(rd) = std::fs::read_dir(layers_dir.join(kind)) {
                for e in rd.flatten() {
                    let m = e.metadata().expect("stat layer");
                    v.push((
                        e.file_name().to_string_lossy().into_owned(),
                        m.ino(),
                        m.mtime(),
                    ));
                }
            }
        }
        v.sort();
        v
    };
    let before = snapshot();
    assert_eq!(before.len(), 3, "{before:?}");
    let children: Vec<(usize, Child)> = (0..20)
        .map(|i| {
            let name = format!("n{i}");
            let script = format!("echo {i} > /tmp/mine; cat /tmp/mine /etc/mkimage-release");
            (
                i,
                f.spawn(&["--name", &name, &img, "--", "sh", "-c", &script]),
            )
        })
        .collect();
    for (i, c) in children {
        let out = c.wait_with_output().expect("wait");
        assert!(out.status.success(), "run {i}: {}", stderr(&out));
        assert_eq!(lines(&stdout(&out)), [i.to_string().as_str(), "name=many"]);
    }
    // Not re-extracted: the same layer dirs (names, inodes, mtimes).
    assert_eq!(snapshot(), before);
    for i in 0..20 {
        let upper = f.containers_dir().join(format!("n{i}/upper/tmp/mine"));
        assert_eq!(
            std::fs::read_to_string(upper).expect("upper"),
            format!("{i}\n")
        );
    }
    for i in 0..20 {
        f.env.ok(&["rm", &format!("n{i}")]);
    }
    f.assert_nothing_left();
}

#[test]
fn a_120_layer_image_runs() {
    testkit::require!(containerd);
    let f = Fixture::new("run-layers");
    let mut spec = mkimage::preset("many-layers").expect("preset");
    spec.ref_name = "layers".into();
    let img = f.stage(spec);
    // The state dir's absolute lowerdirs overflow a page; containerd must get short ones.
    let out = f.ok(&[
        "--rm",
        &img,
        "--",
        "sh",
        "-c",
        "ls /layers | wc -l; cat /etc/mkimage-release",
    ]);
    assert_eq!(lines(&out), ["118", "name=layers"]);
    f.assert_nothing_left();
}

#[test]
fn clear_errors_unknown_image_cache_command() {
    testkit::require!(containerd);
    let f = Fixture::new("run-errors");
    let img = f.small("errs", |_| {});
    let e = f.env.fails(&f.args(&["--rm", "nosuchimage", "--", "true"]));
    assert!(e.contains("nosuchimage") && e.contains("stage"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = f
        .env
        .fails(&["run", "--cache", "nosuchcache", &img, "--", "true"]);
    assert!(e.contains("nosuchcache"), "{e}");
    let out = f.run(&["--rm", &img, "--", "/no/such/command"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("/no/such/command") && e.contains("cannot run"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let e = f.env.fails(&f.args(&["--rm", "--net", "macvlan", &img]));
    assert!(e.contains("--net"), "{e}");
    let e = f.env.fails(&f.args(&["--rm", "-v", "rel/dir:/x", &img]));
    assert!(e.contains("absolute"), "{e}");
    f.assert_nothing_left();
}

#[test]
fn volumes_and_read_only_rootfs() {
    testkit::require!(containerd);
    let f = Fixture::new("run-vol");
    let img = f.small("vol", |_| {});
    let host = tempfile::tempdir().expect("tmp");
    std::fs::write(host.path().join("in.txt"), "from host").expect("write");
    let v = format!("{}:/data", host.path().display());
    assert_eq!(
        f.ok(&[
            "--rm",
            "-v",
            &v,
            &img,
            "--",
            "sh",
            "-c",
            "cat /data/in.txt; echo out > /data/out.txt"
        ]),
        "from host"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out.txt")).expect("out"),
        "out\n"
    );
    let v = format!("{}:/data:ro", host.path().display());
    assert!(!f
        .run(&["--rm", "-v", &v, &img, "--", "touch", "/data/x"])
        .status
        .success());
    assert!(!f
        .run(&["--rm", "--read-only", &img, "--", "touch", "/x"])
        .status
        .success());
    f.assert_nothing_left();
}

#[test]
fn containerd_restarted_between_staging_and_running() {
    testkit::require!(containerd);
    let ctd = PrivateContainerd::start();
    let mut env = Env::new("run-restart");
    env.address = ctd.address.clone();
    let f = Fixture::in_env(env);
    let img = f.small("restart", |_| {});
    ctd.restart();
    assert_eq!(
        f.ok(&["--rm", &img, "--", "echo", "after restart"]),
        "after restart\n"
    );
    f.assert_nothing_left();
}

/// `run --stage` stages first, under the image name given.
#[test]
fn run_with_stage() {
    testkit::require!(containerd);
    let f = Fixture::new("run-stage");
    let mut spec = mkimage::preset("small").expect("preset");
    spec.ref_name = "src".into();
    let layout = f.images.path().join("src");
    spec.write_layout(&layout).expect("mkimage");
    let source = format!("oci:{}:src", layout.display());
    assert_eq!(
        f.ok(&["--rm", "--stage", &source, "staged", "--", "echo", "hi"]),
        "hi\n"
    );
    assert!(f
        .env
        .ok(&["images", "ls", "--cache", &f.cache])
        .contains("staged"));
    f.assert_nothing_left();
}

#[test]
fn tty_gets_a_terminal_of_our_size() {
    testkit::require!(containerd, tool "script");
    let f = Fixture::new("run-tty");
    let img = f.small("tty", |_| {});
    let cmd = format!(
        "stty cols 100 rows 30; {} run -t --rm --cache {} {img} -- sh -c 'tty; stty size < $(tty); exit 4'",
        env!("CARGO_BIN_EXE_nestcache"),
        f.cache
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("CONTAINERD_ADDRESS", &f.env.address)
        .env("CONTAINERD_NAMESPACE", &f.env.namespace)
        .env("NESTCACHE_STATE_DIR", f.env.state_dir())
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    assert!(text.contains("30 100"), "{text}");
    f.assert_nothing_left();
}

/// `--runtime shim`: nestcache's shim assembles the rootfs from the store annotations.
#[test]
fn shim_runtime_runs_from_the_store() {
    testkit::require!(containerd);
    if !shim_on_path() {
        return;
    }
    let f = Fixture::new("run-shim");
    let img = f.small("shim", |_| {});
    let out = f.run(&[
        "--rm",
        "--runtime",
        "shim",
        &img,
        "--",
        "sh",
        "-c",
        "ls /cache; id -u",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.lines().any(|l| l == "index.json"), "{text}");
    assert!(text.ends_with("0\n"), "{text}");
    assert!(stderr(&out).contains("verified"), "{}", stderr(&out));
    assert_eq!(
        f.run(&[
            "--rm",
            "--runtime",
            "shim",
            &img,
            "--",
            "sh",
            "-c",
            "exit 3"
        ])
        .status
        .code(),
        Some(3)
    );
    f.assert_nothing_left();
}

/// `--shim-linger`: the cache's shim stays after a `--rm` run, the next run joins it (no
/// new shim process), a run asking for no linger takes it away with its container, and
/// `cache rm` ends a lingering one.
#[test]
fn the_caches_shim_lingers_for_the_next_run() {
    testkit::require!(containerd);
    if !shim_on_path() {
        return;
    }
    let f = Fixture::new("run-linger");
    let img = f.small("linger", |_| {});
    let run = |linger: &str| {
        let out = f.run(&[
            "--rm",
            "--runtime",
            "shim",
            "--shim-linger",
            linger,
            &img,
            "--",
            "true",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // Not the cache container's own (runc) shim.
    let shims = || -> Vec<String> {
        let all = testkit::leaks::shims_of(&f.env.namespace);
        all.into_iter()
            .filter(|c| c.contains("containerd-shim-nestcache-v2"))
            .collect()
    };
    run("60000");
    let lingering = shims();
    assert_eq!(lingering.len(), 1, "the cache's shim stays: {lingering:?}");
    run("60000");
    // The same process: its command line names the first run's container.
    assert_eq!(
        shims(),
        lingering,
        "the second run joined the lingering shim"
    );
    let wait_gone = |what: &str| {
        // Well within the 60 s linger: only an ended shim is gone by then.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !shims().is_empty() {
            assert!(
                Instant::now() < deadline,
                "{what}: shim left: {:?}",
                shims()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    run("0");
    wait_gone("a run without linger");
    // `cache rm` ends the cache's lingering shim, not its linger.
    run("60000");
    assert_eq!(shims().len(), 1);
    f.env.ok(&["cache", "rm", &f.cache, "--keep-content"]);
    wait_gone("cache rm");
    f.assert_nothing_left();
    let bad = f.run(&["--rm", "--runtime", "shim", "--shim-linger", "soon", &img]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--shim-linger"), "{}", stderr(&bad));
}

fn shim_on_path() -> bool {
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join("containerd-shim-nestcache-v2").exists())
    });
    if !on_path {
        eprintln!(
            "skipped: containerd-shim-nestcache-v2 is not on PATH (scripts/test.sh puts it there)"
        );
    }
    on_path
}

#[test]
fn a_reader_that_goes_away_does_not_block_the_task() {
    testkit::require!(containerd);
    let f = Fixture::new("run-pipe");
    let img = f.small("pipe", |_| {});
    let script =
        "i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done; echo finished >&2";
    let mut child = f.spawn(&["--rm", &img, "--", "sh", "-c", script]);
    let mut first = [0u8; 7];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first).expect("read");
    assert_eq!(&first, b"line 0\n");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("finished"), "{}", stderr(&out));
    f.assert_nothing_left();
}

#[test]
fn rm_cache_removes_the_cache_afterwards() {
    testkit::require!(containerd);
    let f = Fixture::new("run-rmcache");
    let img = f.small("rmcache", |_| {});
    assert_eq!(
        f.ok(&["--rm", "--rm-cache", &img, "--", "echo", "last"]),
        "last\n"
    );
    let e = f.env.fails(&["cache", "inspect", &f.cache]);
    assert!(e.contains(&f.cache), "{e}");
    assert!(
        !f.content.exists(),
        "content dir {} left",
        f.content.display()
    );
    assert!(f
        .env
        .fails(&f.args(&["-d", "--rm-cache", &img]))
        .contains("--detach"));
}

#[test]
fn network_none_by_nestcache_net_host_on_request() {
    testkit::require!(containerd);
    let f = Fixture::new("run-net");
    let img = f.small("net", |_| {});
    let host_ns = std::fs::read_link("/proc/self/ns/net").expect("host net ns");
    let host_ns = host_ns.to_string_lossy();
    let ns = |extra: &[&str]| {
        let mut args = vec!["--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[img.as_str(), "--", "readlink", "/proc/self/ns/net"]);
        f.ok(&args).trim().to_string()
    };
    assert_ne!(ns(&[]), host_ns);
    assert_eq!(ns(&["--net", "host"]), host_ns);
    // Only loopback without host networking.
    let links = f.ok(&["--rm", &img, "--", "ls", "/sys/class/net"]);
    assert_eq!(lines(&links), ["lo"]);
    f.assert_nothing_left();
}
