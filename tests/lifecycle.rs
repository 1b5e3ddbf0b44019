//! The lifecycle after `run`, against a real containerd + runc: exec, kill, wait, inspect,
//! top, stats, stop/rm of several ids, ps filters and formats, events.

use std::io::{BufRead, BufReader, Write};
use std::process::{Output, Stdio};
use std::time::Duration;

use testkit::{unique, Env};

/// A cache with the `small` image staged, in an environment of its own.
struct Fixture {
    env: Env,
    cache: String,
    image: String,
    _images: tempfile::TempDir,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let env = Env::new(prefix);
        let cache = unique("c");
        env.ok(&[
            "cache", "create", &cache, "--path", "/cache", "--ttl", "30m",
        ]);
        let images = tempfile::tempdir().expect("temp dir");
        let spec = mkimage::preset("small").expect("preset");
        let layout = images.path().join("small");
        let built = spec.write_layout(&layout).expect("mkimage");
        let source = format!("oci:{}:{}", layout.display(), built.ref_name);
        env.ok(&["stage", "--cache", &cache, &source]);
        Fixture {
            env,
            cache,
            image: built.ref_name,
            _images: images,
        }
    }

    /// Starts `sleep 300` detached as `name`.
    fn sleeper(&self, name: &str) {
        let args = [
            "run",
            "--cache",
            &self.cache,
            "-d",
            "--name",
            name,
            &self.image,
            "--",
            "sleep",
            "300",
        ];
        self.env.ok(&args);
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.env.ok(args)).expect("JSON output")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let ids = self.env.run(&["ps", "-a", "-q"]);
        for id in String::from_utf8_lossy(&ids.stdout).lines() {
            self.env.run(&["rm", "-f", id]);
        }
        self.env.run(&["cache", "rm", &self.cache]);
    }
}

/// A child killed when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn exec_inspect_top_stats_kill_wait() {
    let f = Fixture::new("lc-exec");
    f.sleeper("c1");

    // The exec'd process's streams stay apart and its exit code is ours.
    let o = f
        .env
        .run(&["exec", "c1", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (code(&o), text(&o.stdout), text(&o.stderr)),
        (Some(7), "out\n".into(), "err\n".into())
    );
    // Flags: env, workdir, a user of the container's own /etc/passwd.
    let o = f.env.ok(&[
        "exec",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "-u",
        "app",
        "c1",
        "sh",
        "-c",
        "echo $X $(pwd) $(id -u):$(id -g)",
    ]);
    assert_eq!(o, "1 /tmp 1000:1000\n");
    // -i passes stdin and closes it at its end.
    let mut child = f
        .env
        .cmd()
        .args(["exec", "-i", "c1", "wc", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn exec -i");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..1000 {
        writeln!(stdin, "line {i}").expect("write");
    }
    drop(stdin);
    let o = child.wait_with_output().expect("exec -i");
    assert_eq!(text(&o.stdout).trim(), "1000");
    let o = f.env.run(&["exec", "c1", "no-such-command"]);
    assert_eq!(code(&o), Some(127), "{}", text(&o.stderr));
    let o = f.env.run(&["exec", "c1", "/etc"]);
    assert_eq!(code(&o), Some(126), "{}", text(&o.stderr));
    let e = f.env.fails(&["exec", "-u", "ghost", "c1", "true"]);
    assert!(e.contains("ghost"), "{e}");
    let e = f.env.fails(&["exec", "nope", "true"]);
    assert!(e.contains("no nested container \"nope\""), "{e}");

    // inspect: Docker's field names, the same pid ps shows.
    let i = &f.json(&["inspect", "c1"])[0];
    let pid = i["State"]["Pid"].as_u64().expect("pid");
    assert!(
        pid > 0 && i["State"]["Status"] == "running" && i["State"]["Running"] == true,
        "{i}"
    );
    assert!(
        i["State"]["StartedAt"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{i}"
    );
    assert_eq!(i["Config"]["Image"], f.image.as_str());
    assert_eq!(i["Args"], serde_json::json!(["300"]));
    let cache = i["Mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["Destination"] == "/cache");
    assert!(cache.is_some_and(|m| m["RW"] == false), "{i}");
    assert_eq!(i["NetworkSettings"]["NetworkMode"], "none");
    assert_eq!(
        f.env
            .ok(&["inspect", "-f", "{{.State.Pid}} {{.Cache.Name}}", "c1"])
            .trim(),
        format!("{pid} {}", f.cache)
    );

    // top lists the task's processes, an exec'd one too while it runs.
    f.env.ok(&["exec", "-d", "c1", "sleep", "30"]);
    let rows = f.json(&["top", "c1", "--json"]);
    let cmds: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["cmd"].as_str())
        .collect();
    assert!(
        cmds.contains(&"sleep 300") && cmds.contains(&"sleep 30"),
        "{cmds:?}"
    );

    // stats from the cgroup: at least the two sleeps, some memory.
    let s = &f.json(&["stats", "--no-stream", "--json", "c1"])[0];
    assert!(s["pids"].as_u64().expect("pids") >= 2, "{s}");
    assert!(s["memory_usage"].as_u64().expect("memory") > 0, "{s}");

    // kill -s and wait: the code of a process ended by SIGKILL is 137.
    f.env.ok(&["kill", "-s", "SIGKILL", "c1"]);
    assert_eq!(f.env.ok(&["wait", "c1"]).trim(), "137");
    let i = &f.json(&["inspect", "c1"])[0];
    assert_eq!(
        (
            i["State"]["Status"].as_str(),
            i["State"]["ExitCode"].as_u64()
        ),
        (Some("exited"), Some(137))
    );
    let e = f.env.fails(&["kill", "c1"]);
    assert!(e.contains("not running"), "{e}");
    let e = f.env.fails(&["kill", "-s", "NOPE", "c1"]);
    assert!(e.contains("invalid signal"), "{e}");
}

#[test]
fn cp_both_ways_stays_inside_the_container() {
    let f = Fixture::new("lc-cp");
    f.sleeper("k1");
    // In the container: a tree, and a link that points at the host's view of a dir.
    let host = tempfile::tempdir().expect("temp dir");
    let outside = host.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let setup = format!(
        "mkdir -p /tmp/t/sub && echo a > /tmp/t/a && echo b > /tmp/t/sub/b && ln -s {} /tmp/esc",
        outside.display()
    );
    f.env.ok(&["exec", "k1", "sh", "-c", &setup]);

    // Out: a directory under its own name, contents and modes kept.
    let got = host.path().join("got");
    std::fs::create_dir(&got).expect("mkdir");
    f.env.ok(&["cp", "k1:/tmp/t", got.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read_to_string(got.join("t/sub/b")).expect("copied"),
        "b\n"
    );
    // In: a host file to a new name, then through the link — which resolves inside the
    // container (where the host's dir does not exist), never to the host's dir.
    let payload = host.path().join("payload");
    std::fs::write(&payload, "P").expect("write");
    f.env
        .ok(&["cp", payload.to_str().expect("utf-8"), "k1:/tmp/t/new"]);
    assert_eq!(f.env.ok(&["exec", "k1", "cat", "/tmp/t/new"]), "P");
    let e = f
        .env
        .fails(&["cp", payload.to_str().expect("utf-8"), "k1:/tmp/esc/x"]);
    assert!(e.contains("in the container"), "{e}");
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "wrote through the link"
    );
    let e = f
        .env
        .fails(&["cp", "k1:/nope", got.to_str().expect("utf-8")]);
    assert!(e.contains("/nope"), "{e}");
}

#[test]
fn several_ids_ps_filters_and_formats() {
    let f = Fixture::new("lc-many");
    f.sleeper("a1");
    f.sleeper("b1");
    let q = f.env.ok(&["ps", "-q"]);
    assert_eq!(q.lines().collect::<Vec<_>>(), ["a1", "b1"]);
    assert_eq!(f.env.ok(&["ps", "-q", "--filter", "name=b"]), "b1\n");
    let fmt = f.env.ok(&[
        "ps",
        "--format",
        "{{.ID}}|{{.State}}|{{.Image}}",
        "--filter",
        "id=a",
    ]);
    assert_eq!(fmt, format!("a1|running|{}\n", f.image));

    // `stop -t 0` stops both at once (sleep as PID 1 ignores SIGTERM: SIGKILL at once).
    let o = f.env.ok(&["stop", "-t", "0", "a1", "b1"]);
    assert_eq!(o, "a1\nb1\n");
    assert_eq!(f.env.ok(&["ps", "-q"]), "");
    assert_eq!(
        f.env.ok(&["ps", "-q", "--filter", "status=exited"]),
        "a1\nb1\n"
    );
    let e = f.env.fails(&["ps", "--filter", "colour=red"]);
    assert!(e.contains("unknown key"), "{e}");

    // rm of several ids: the good ones go, the bad one is named, exit 1.
    let o = f.env.run(&["rm", "a1", "nope", "b1"]);
    assert_eq!(code(&o), Some(1));
    assert_eq!(text(&o.stdout), "a1\nb1\n");
    assert!(text(&o.stderr).contains("nope"), "{}", text(&o.stderr));
    assert_eq!(f.env.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn events_show_a_run_from_create_to_exit() {
    let f = Fixture::new("lc-ev");
    let mut events = Killed(
        f.env
            .cmd()
            .args(["events", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn events"),
    );
    let out = events.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("event JSON"));
        }
    });
    // Subscribed once an event of ours comes through: touch the cache until one does.
    let subscribed = (0..50).any(|_| {
        f.env.ok(&["cache", "touch", &f.cache, "--ttl", "30m"]);
        rx.recv_timeout(Duration::from_millis(200)).is_ok()
    });
    assert!(subscribed, "no event seen after 50 cache touches");
    let id = "ev1";
    f.env.run(&[
        "run", "--cache", &f.cache, "--rm", "--name", id, &f.image, "--", "sh", "-c", "exit 3",
    ]);
    let mut seen = Vec::new();
    let mut exit = None;
    while let Ok(e) = rx.recv_timeout(Duration::from_secs(10)) {
        if e["id"] != id {
            continue;
        }
        seen.push(e["topic"].as_str().unwrap_or_default().to_string());
        if e["topic"] == "/tasks/exit" {
            exit = e["attributes"]["exit_status"].as_str().map(str::to_string);
        }
        if e["topic"] == "/containers/delete" {
            break;
        }
    }
    drop(events);
    assert_eq!(exit.as_deref(), Some("3"), "{seen:?}");
    for topic in [
        "/containers/create",
        "/tasks/create",
        "/tasks/start",
        "/tasks/delete",
    ] {
        assert!(
            seen.iter().any(|s| s == topic),
            "{topic} missing from {seen:?}"
        );
    }
}

#[test]
fn tag_normalised_refs_config_file_and_json_errors() {
    let f = Fixture::new("lc-cfg");
    // `tag` gives the image Docker's short name; the full spelling finds it too.
    f.env.ok(&["tag", &f.image, "busybox", "--cache", &f.cache]);
    let args = [
        "run",
        "--cache",
        &f.cache,
        "--rm",
        "docker.io/library/busybox:latest",
        "--",
        "echo",
        "hi",
    ];
    assert_eq!(f.env.ok(&args), "hi\n");
    let ls = f.env.ok(&["images", "ls", "--cache", &f.cache]);
    assert!(
        ls.contains(" kB") || ls.contains(" MB"),
        "human sizes: {ls}"
    );

    // The config file is below the environment: CONTAINERD_NAMESPACE (set by the test
    // env) wins over the file's namespace, the file's default_ttl applies.
    let home = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(home.path().join("nestcache")).expect("mkdir");
    std::fs::write(
        home.path().join("nestcache/config.toml"),
        "namespace = \"from-file\"\ndefault_ttl = \"7m\"\n",
    )
    .expect("write");
    let cache = unique("cfg");
    let out = f
        .env
        .cmd()
        .env("XDG_CONFIG_HOME", home.path())
        .args(["cache", "create", &cache, "--path", "/c", "--json"])
        .output()
        .expect("cache create");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let info: serde_json::Value =
        serde_json::from_str(&f.env.ok(&["cache", "inspect", &cache, "--json"])).expect("JSON");
    assert!(
        info["expires"].is_string(),
        "default_ttl from the file: {made} / {info}"
    );
    f.env.ok(&["cache", "rm", &cache]);
    std::fs::write(
        home.path().join("nestcache/config.toml"),
        "namespce = \"typo\"\n",
    )
    .expect("write");
    let out = f
        .env
        .cmd()
        .env("XDG_CONFIG_HOME", home.path())
        .args(["ps"])
        .output()
        .expect("ps");
    assert!(
        !out.status.success() && text(&out.stderr).contains("config.toml"),
        "{}",
        text(&out.stderr)
    );

    // --json: failures are an object on stdout too.
    let out = f.env.run(&["cache", "inspect", "nope", "--json"]);
    assert!(!out.status.success());
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("error JSON on stdout");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{e}"
    );

    // Completion scripts and man pages.
    let bash = f.env.ok(&["completion", "bash"]);
    assert!(
        bash.contains("complete") && bash.contains("exec"),
        "bash completion"
    );
    let man = tempfile::tempdir().expect("temp dir");
    f.env.ok(&["man", man.path().to_str().expect("utf-8")]);
    let page =
        std::fs::read_to_string(man.path().join("nestcache-exec.1")).expect("nestcache-exec.1");
    assert!(
        page.contains(".TH") && page.contains("interactive"),
        "{page}"
    );
}

#[test]
fn logs_keep_streams_apart_with_tail_since_and_times() {
    let f = Fixture::new("lc-logs");
    // containerd's runc shim and nestcache's both start the log driver (binary://).
    for runtime in ["runc", "shim"] {
        logs_of(&f, runtime, &format!("l-{runtime}"));
    }
}

fn logs_of(f: &Fixture, runtime: &str, id: &str) {
    let script = "echo err1 >&2; sleep 0.2; seq 1 5";
    let run = [
        "run",
        "--cache",
        &f.cache,
        "-d",
        "--runtime",
        runtime,
        "--name",
        id,
        &f.image,
        "--",
        "sh",
        "-c",
        script,
    ];
    f.env.ok(&run);
    assert_eq!(f.env.ok(&["wait", id]).trim(), "0");
    let o = f.env.run(&["logs", id]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        ("1\n2\n3\n4\n5\n".into(), "err1\n".into()),
        "{runtime}"
    );
    assert_eq!(
        f.env.ok(&["logs", "--tail", "2", id]),
        "4\n5\n",
        "{runtime}"
    );
    let o = f.env.run(&["logs", "-n", "0", id]);
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        (String::new(), String::new())
    );
    assert_eq!(
        f.env.ok(&["logs", "--since", "2099-01-01T00:00:00Z", id]),
        ""
    );
    assert_eq!(f.env.ok(&["logs", "--since", "1h", id]).lines().count(), 5);
    let stamped = f.env.ok(&["logs", "-t", "--tail", "1", id]);
    let (time, line) = stamped.trim_end().split_once(' ').expect("TIME LINE");
    assert!(
        time.starts_with("20") && time.ends_with('Z') && line == "5",
        "{runtime}: {stamped}"
    );
    let e = f.env.fails(&["logs", "--since", "yesterday", id]);
    assert!(e.contains("--since"), "{e}");
}

#[test]
fn system_df_and_prune_never_take_what_is_in_use() {
    testkit::require!(containerd);
    let f = Fixture::new("lc-sys");
    // A second image nothing uses (another config, the same layer).
    let mut spec = mkimage::preset("small").expect("preset");
    spec.ref_name = "unused".into();
    spec.config.env.push("UNUSED=1".into());
    let layout = f._images.path().join("unused");
    spec.write_layout(&layout).expect("mkimage");
    let source = format!("oci:{}:unused", layout.display());
    f.env.ok(&["stage", "--cache", &f.cache, &source]);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "-q", "--cache", f.cache.as_str()];
        args.extend_from_slice(extra);
        f.env.ok(&args)
    };
    f.sleeper("busy");
    run(&["--name", "done", &f.image, "sh", "-c", "echo x > /x"]);
    run(&["--name", "anon", "-v", "/data", &f.image, "true"]);
    f.env.ok(&["rm", "anon"]);
    run(&["--rm", "-v", "keepme:/k", &f.image, "true"]);

    let df = f.json(&["system", "df", "--json"]);
    let row = |kind: &str| {
        let r = df.as_array().unwrap().iter().find(|r| r["Type"] == kind);
        let r = r.unwrap_or_else(|| panic!("no {kind} in {df}"));
        (
            r["TotalCount"].as_u64().unwrap(),
            r["Active"].as_u64().unwrap(),
        )
    };
    assert_eq!(row("Images"), (2, 1), "{df}");
    assert_eq!(row("Containers"), (2, 1), "{df}");
    assert_eq!(row("Local Volumes"), (2, 0), "{df}");
    assert_eq!(row("Build Cache"), (0, 0), "{df}");
    let images = &df[0];
    assert!(
        images["Reclaimable"].as_u64() < images["Size"].as_u64(),
        "{df}"
    );
    let table = f.env.ok(&["system", "df"]);
    assert!(
        table.starts_with("TYPE") && table.contains("Local Volumes"),
        "{table}"
    );

    // Asked and refused: nothing goes.
    let mut child = f
        .env
        .cmd()
        .args(["system", "prune"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prune");
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let o = child.wait_with_output().expect("prune");
    assert_eq!(code(&o), Some(0));
    assert!(
        text(&o.stderr).contains("WARNING! This will remove"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(f.json(&["ps", "-a", "--json"]).as_array().unwrap().len(), 2);

    let r = f.json(&["system", "prune", "-a", "--volumes", "-f", "--json"]);
    assert_eq!(r["containers_deleted"], serde_json::json!(["done"]), "{r}");
    assert_eq!(r["images_deleted"], serde_json::json!(["unused"]), "{r}");
    let vols = r["volumes_deleted"].as_array().unwrap();
    assert!(
        vols.len() == 1 && vols[0].as_str().unwrap().len() == 64,
        "{r}"
    );
    assert!(r["space_reclaimed"].as_u64() > Some(0), "{r}");
    // What is in use stays: the running container, its image, the named volume.
    f.env.ok(&["exec", "busy", "true"]);
    run(&["--rm", &f.image, "true"]);
    assert_eq!(f.env.ok(&["volume", "ls", "-q"]).trim(), "keepme");
    let content = f.json(&["cache", "inspect", &f.cache, "--json"]);
    let store = content["content_dir"].as_str().unwrap();
    f.env.ok(&["store", "check", "--store", store]);
    f.env.ok(&["volume", "rm", "keepme"]);
}
