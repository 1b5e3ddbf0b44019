//! The cache container lifecycle against a real containerd + runc: create, inspect, see
//! the content dir from inside, TTL, gc, rm leaving nothing behind, and bad input.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{unique, Env, PrivateContainerd};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn inspect(env: &Env, name: &str) -> Value {
    json(&env.ok(&["cache", "inspect", name, "--json"]))
}

fn pid_of(v: &Value) -> u32 {
    v["pid"].as_u64().expect("a pid") as u32
}

/// Polls `cond` every 100ms until it holds; panics with `what` after `limit` (a bound on
/// waiting, not a timing assertion).
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mountinfo_mentions(s: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .contains(s)
}

fn cache_names(env: &Env) -> Vec<String> {
    json(&env.ok(&["cache", "ls", "--json"]))
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| c["name"].as_str().expect("a name").to_string())
        .collect()
}

#[test]
fn lifecycle_create_inspect_see_rm() {
    testkit::require!(containerd);
    let env = Env::new("cache-life");
    let name = "life";
    let created = json(&env.ok(&["cache", "create", name, "--path", "/cache", "--json"]));
    assert_eq!(created["reused"], false);
    let v = inspect(&env, name);
    assert_eq!(v["status"], "running");
    assert_eq!(v["path"], "/cache");
    assert_eq!(v["content_dir_owned"], true);
    assert_eq!(v["expires"], Value::Null);
    let content = PathBuf::from(v["content_dir"].as_str().expect("content dir"));
    assert_eq!(
        content,
        std::fs::canonicalize(env.state_dir())
            .unwrap()
            .join("caches")
            .join(name)
    );
    let pid = pid_of(&v);
    let id = v["id"].as_str().expect("id").to_string();

    // A file written on the host side appears inside the cache container at the path.
    std::fs::write(content.join("hello.txt"), "hi from the host\n").unwrap();
    let inside = format!("/proc/{pid}/root/cache/hello.txt");
    assert_eq!(
        std::fs::read_to_string(&inside).unwrap(),
        "hi from the host\n"
    );
    // And the other way round.
    std::fs::write(format!("/proc/{pid}/root/cache/back.txt"), "back").unwrap();
    assert_eq!(
        std::fs::read_to_string(content.join("back.txt")).unwrap(),
        "back"
    );
    // The rootfs is read-only.
    assert!(std::fs::write(format!("/proc/{pid}/root/x"), "x").is_err());

    assert_eq!(cache_names(&env), vec![name.to_string()]);
    let table = env.ok(&["cache", "ls"]);
    assert!(table.contains(name) && table.contains("running"), "{table}");

    env.ok(&["cache", "rm", name]);
    // Nothing left: no cache, no task process, no content dir, no mount.
    assert!(cache_names(&env).is_empty());
    let err = env.fails(&["cache", "inspect", name]);
    assert!(err.contains("no cache named"), "{err}");
    assert!(!content.exists(), "content dir left behind");
    wait_for("the keeper to be gone", Duration::from_secs(10), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
    assert!(!mountinfo_mentions(&id), "a mount of {id} is left");
}

#[test]
fn ttl_expiry_then_gc() {
    testkit::require!(containerd);
    let env = Env::new("cache-ttl");
    let v = json(&env.ok(&[
        "cache", "create", "short", "--path", "/c", "--ttl", "2s", "--json",
    ]));
    assert!(v["expires"].is_string());
    let pid = pid_of(&v);
    let content = PathBuf::from(v["content_dir"].as_str().unwrap());
    // The keeper ends itself at its deadline.
    wait_for(
        "the keeper to exit at expiry",
        Duration::from_secs(60),
        || !Path::new(&format!("/proc/{pid}")).exists(),
    );
    let reaped = json(&env.ok(&["cache", "gc", "--json"]));
    let reaped = reaped.as_array().unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(reaped[0]["name"], "short");
    assert!(reaped[0]["reason"].as_str().unwrap().contains("expired"));
    assert!(!content.exists());
    assert!(cache_names(&env).is_empty());
}

#[test]
fn every_command_reaps_expired_caches() {
    testkit::require!(containerd);
    let env = Env::new("cache-reap");
    env.ok(&["cache", "create", "gone", "--path", "/c", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    // ls reaps before listing, and says so.
    let out = env.run(&["cache", "ls", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout)),
        serde_json::json!([])
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("removed cache gone (expired at"), "{err}");
    assert!(!env.state_dir().join("caches/gone").exists());
}

#[test]
fn touch_extends_the_ttl() {
    testkit::require!(containerd);
    let env = Env::new("cache-touch");
    let before = json(&env.ok(&[
        "cache", "create", "t", "--path", "/c", "--ttl", "6s", "--json",
    ]));
    env.ok(&["cache", "touch", "t", "--ttl", "1h"]);
    let after = inspect(&env, "t");
    assert!(after["expires"].as_str().unwrap() > before["expires"].as_str().unwrap());
    // Past the first deadline the keeper still runs: it re-read its deadline.
    let first = humantime::parse_rfc3339(before["expires"].as_str().unwrap()).unwrap();
    while std::time::SystemTime::now() < first + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let later = inspect(&env, "t");
    assert_eq!(later["status"], "running");
    assert_eq!(pid_of(&later), pid_of(&before));
    env.ok(&["cache", "rm", "t"]);
}

#[test]
fn user_content_dir_is_kept_unless_asked() {
    testkit::require!(containerd);
    let env = Env::new("cache-user");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("mine"), "keep me").unwrap();
    let v = json(&env.ok(&[
        "cache",
        "create",
        "u",
        "--path",
        "/data",
        "--content-dir",
        d,
        "--json",
    ]));
    assert_eq!(v["content_dir_owned"], false);
    let pid = pid_of(&v);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/root/data/mine")).unwrap(),
        "keep me"
    );
    env.ok(&["cache", "rm", "u"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine")).unwrap(),
        "keep me"
    );
    assert!(
        !dir.path().join(".nestcache").exists(),
        "handshake files left behind"
    );

    // --reuse of a dead cache recreates it on the same (user's) content dir.
    let v = json(&env.ok(&[
        "cache",
        "create",
        "u2",
        "--path",
        "/data",
        "--content-dir",
        d,
        "--json",
    ]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(&v) as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the keeper to die", Duration::from_secs(10), || {
        inspect(&env, "u2")["status"] == "stopped"
    });
    let again = json(&env.ok(&[
        "cache", "create", "u2", "--path", "/data", "--reuse", "--json",
    ]));
    assert_eq!(again["reused"], false);
    assert_eq!(again["status"], "running");
    assert_eq!(again["content_dir"], v["content_dir"]);
    assert_eq!(again["content_dir_owned"], false);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/root/data/mine", pid_of(&again))).unwrap(),
        "keep me"
    );
    env.ok(&["cache", "rm", "u2", "--remove-content-dir"]);
    assert!(!dir.path().exists());
}

#[test]
fn keep_content_and_reuse() {
    testkit::require!(containerd);
    let env = Env::new("cache-keep");
    env.ok(&["cache", "create", "k", "--path", "/c"]);
    let v = inspect(&env, "k");
    let content = PathBuf::from(v["content_dir"].as_str().unwrap());
    std::fs::write(content.join("f"), "data").unwrap();

    // --reuse with the same path returns the running cache untouched.
    let again = json(&env.ok(&["cache", "create", "k", "--path", "/c", "--reuse", "--json"]));
    assert_eq!(again["reused"], true);
    assert_eq!(pid_of(&again), pid_of(&v));
    let err = env.fails(&["cache", "create", "k", "--path", "/other", "--reuse"]);
    assert!(err.contains("--reuse needs the same --path"), "{err}");

    env.ok(&["cache", "rm", "k", "--keep-content"]);
    assert_eq!(std::fs::read_to_string(content.join("f")).unwrap(), "data");
    // Created again, it finds its content.
    env.ok(&["cache", "create", "k", "--path", "/c"]);
    let v = inspect(&env, "k");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{}/root/c/f", pid_of(&v))).unwrap(),
        "data"
    );
    env.ok(&["cache", "rm", "k"]);
    assert!(!content.exists());
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    testkit::require!(containerd);
    let env = Env::new("cache-bad");
    let one_line = |err: &str| {
        assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    };

    let err = env.fails(&["cache", "inspect", "nope"]);
    assert!(err.contains("no cache named \"nope\""), "{err}");
    one_line(&err);
    let err = env.fails(&["cache", "rm", "nope"]);
    assert!(err.contains("no cache named"), "{err}");
    let err = env.fails(&["cache", "touch", "nope", "--ttl", "1m"]);
    assert!(err.contains("no cache named"), "{err}");

    for bad in ["Bad/Name", "x-", "a..b", &"n".repeat(65)] {
        let err = env.fails(&["cache", "create", bad, "--path", "/c"]);
        assert!(err.contains("invalid cache name"), "{bad}: {err}");
        one_line(&err);
    }
    for bad in ["relative", "/", "/a/../b", "/proc/x"] {
        let err = env.fails(&["cache", "create", "p", "--path", bad]);
        assert!(err.contains("invalid --path"), "{bad}: {err}");
    }
    let err = env.fails(&["cache", "create", "p", "--path", "/c", "--ttl", "soon"]);
    assert!(err.contains("invalid --ttl"), "{err}");
    for ttl in ["0s", "100000years"] {
        let err = env.fails(&["cache", "create", "p", "--path", "/c", "--ttl", ttl]);
        assert!(err.contains("--ttl"), "{ttl}: {err}");
        one_line(&err);
    }

    let file = tempfile::NamedTempFile::new().unwrap();
    let err = env.fails(&[
        "cache",
        "create",
        "f",
        "--path",
        "/c",
        "--content-dir",
        file.path().to_str().unwrap(),
    ]);
    assert!(err.contains("is not a directory"), "{err}");
    one_line(&err);

    // Nothing of the failed creates was left.
    assert!(cache_names(&env).is_empty());
    assert!(!env.state_dir().join("caches/p").exists());

    env.ok(&["cache", "create", "dup", "--path", "/c"]);
    let err = env.fails(&["cache", "create", "dup", "--path", "/c"]);
    assert!(err.contains("is taken"), "{err}");
    one_line(&err);
    assert_eq!(cache_names(&env), vec!["dup".to_string()]);
    env.ok(&["cache", "rm", "dup"]);
}

/// The path-identity failure: nestcache sees a different directory at the content dir's
/// path than containerd does (here: a tmpfs mounted over it in nestcache's own mount
/// namespace, as in a pod without the host dir mounted at the same path).
#[test]
fn handshake_fails_when_paths_differ() {
    testkit::require!(containerd);
    let env = Env::new("cache-hs");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let script = format!(
        "mount -t tmpfs nestcache-test {d} && exec {} cache create hs --path /cache --content-dir {d}",
        env!("CARGO_BIN_EXE_nestcache")
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("CONTAINERD_ADDRESS", &env.address)
        .env("CONTAINERD_NAMESPACE", &env.namespace)
        .env("NESTCACHE_STATE_DIR", env.state_dir())
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "create should fail: {err}");
    assert!(err.contains("see different directories"), "{err}");
    assert!(
        err.contains("Mount the host directory at the same path"),
        "{err}"
    );
    assert!(cache_names(&env).is_empty(), "the cache was not deleted");
    // containerd's view of the dir was not written to.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn rm_and_gc_clean_half_created_caches() {
    testkit::require!(containerd);
    let env = Env::new("cache-half");
    // A dead keeper: the cache is half-alive; gc removes it.
    let v = json(&env.ok(&["cache", "create", "dead", "--path", "/c", "--json"]));
    let pid = pid_of(&v);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the keeper to die", Duration::from_secs(10), || {
        inspect(&env, "dead")["status"] == "stopped"
    });
    let err = env.fails(&["cache", "touch", "dead", "--ttl", "1m"]);
    assert!(err.contains("no running task"), "{err}");
    let reaped = json(&env.ok(&["cache", "gc", "--json"]));
    assert_eq!(reaped.as_array().unwrap().len(), 1, "{reaped}");
    assert!(cache_names(&env).is_empty());

    // A container record with no task at all (a create interrupted before the task):
    // rm removes it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = nestcache::containerd::Client::connect(&env.address, &env.namespace)
            .await
            .unwrap();
        let labels = [
            ("io.nestcache.role", "cache"),
            ("io.nestcache.name", "half"),
            ("io.nestcache.path", "/c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        client
            .create_container(nestcache::containerd::NewContainer {
                id: nestcache::cache::container_id("half"),
                labels,
                spec: oci_spec::runtime::Spec::default(),
                runtime: None,
                runtime_options: None,
            })
            .await
            .unwrap();
    });
    assert_eq!(inspect(&env, "half")["status"], Value::Null);

    // A task created but never started (nestcache killed between the two calls).
    let keeper = std::fs::canonicalize(env.state_dir())
        .unwrap()
        .join("keeper/keeper");
    let content = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let client = nestcache::containerd::Client::connect(&env.address, &env.namespace)
            .await
            .unwrap();
        let id = nestcache::cache::container_id("unstarted");
        let spec = nestcache::cache::spec::keeper_spec(&nestcache::cache::spec::KeeperSpec {
            namespace: &env.namespace,
            container_id: &id,
            name: "unstarted",
            keeper_binary: &keeper,
            content_dir: content.path(),
            target_path: Path::new("/c"),
            nonce: "x",
        })
        .unwrap();
        let labels = [
            ("io.nestcache.role", "cache"),
            ("io.nestcache.name", "unstarted"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        client
            .create_container(nestcache::containerd::NewContainer {
                id: id.clone(),
                labels,
                spec,
                runtime: None,
                runtime_options: None,
            })
            .await
            .unwrap();
        client
            .create_task(nestcache::containerd::NewTask {
                container_id: id,
                rootfs: vec![nestcache::containerd::Mount {
                    r#type: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["size=1m".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
    });
    assert_eq!(inspect(&env, "unstarted")["status"], "created");
    env.ok(&["cache", "rm", "unstarted"]);
    assert!(
        content.path().is_dir(),
        "a directory nestcache did not create was removed"
    );
    // Young and taskless: gc leaves it alone (it could be a create in progress).
    env.ok(&["cache", "gc"]);
    assert_eq!(cache_names(&env), vec!["half".to_string()]);
    env.ok(&["cache", "rm", "half"]);
    assert!(cache_names(&env).is_empty());
}

#[test]
fn containerd_stopped_between_two_commands() {
    testkit::require!(containerd);
    let ctd = PrivateContainerd::start();
    let mut env = Env::new("cache-down");
    env.address = ctd.address.clone();
    let name = unique("down");
    env.ok(&["cache", "create", &name, "--path", "/c"]);
    let pid = pid_of(&inspect(&env, &name));

    ctd.stop();
    let err = env.fails(&["cache", "inspect", &name]);
    assert!(err.contains(&ctd.address), "{err}");
    assert!(err.contains("nothing answers"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // The keeper outlives containerd (its shim does); after a restart all is as before.
    ctd.restart();
    let v = inspect(&env, &name);
    assert_eq!(v["status"], "running");
    assert_eq!(pid_of(&v), pid);
    env.ok(&["cache", "rm", &name]);
    assert!(cache_names(&env).is_empty());
}

#[test]
fn rm_refuses_while_a_nested_container_runs_from_the_cache() {
    testkit::require!(containerd);
    use nestcache::cache::spec::{keeper_spec, KeeperSpec};
    use nestcache::containerd::{Client, Mount, NewContainer, NewTask};

    let env = Env::new("cache-used");
    let v = json(&env.ok(&["cache", "create", "used", "--path", "/c", "--json"]));
    let content = PathBuf::from(v["content_dir"].as_str().unwrap());
    // A stand-in for a nested container: labelled as running from cache "used", its
    // process another keeper (with its own handshake files) so it stays up.
    let meta = content.join(".nestcache/cache/user");
    std::fs::create_dir_all(&meta).unwrap();
    std::fs::write(meta.join("nonce"), "n1").unwrap();
    let keeper = std::fs::canonicalize(env.state_dir())
        .unwrap()
        .join("keeper/keeper");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(Client::connect(&env.address, &env.namespace))
        .unwrap();
    let id = "nested-user";
    let spec = keeper_spec(&KeeperSpec {
        namespace: &env.namespace,
        container_id: id,
        name: "user",
        keeper_binary: &keeper,
        content_dir: &content,
        target_path: Path::new("/c"),
        nonce: "n1",
    })
    .unwrap();
    let labels = [
        ("io.nestcache.role", "nested"),
        ("io.nestcache.name", "used"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    rt.block_on(async {
        client
            .create_container(NewContainer {
                id: id.into(),
                labels,
                spec,
                runtime: None,
                runtime_options: None,
            })
            .await
            .unwrap();
        client
            .create_task(NewTask {
                container_id: id.into(),
                rootfs: vec![Mount {
                    r#type: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["size=1m".into()],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        client.start_task(id).await.unwrap();
    });

    let err = env.fails(&["cache", "rm", "used"]);
    assert!(
        err.contains("in use by running nested container(s) nested-user"),
        "{err}"
    );
    assert!(content.is_dir());

    rt.block_on(async {
        client
            .stop_and_delete_task(id, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(client.delete_container(id).await.unwrap());
    });
    env.ok(&["cache", "rm", "used"]);
    assert!(!content.exists());
}

/// SIGTERM at any moment of a create: afterwards there is either a whole running cache or
/// nothing at all (no container, no content dir).
#[test]
fn interrupted_create_leaves_all_or_nothing() {
    testkit::require!(containerd);
    let env = Env::new("cache-int");
    for (i, delay_ms) in [0u64, 20, 50, 100, 150, 200, 300, 500]
        .into_iter()
        .enumerate()
    {
        let name = format!("int{i}");
        let mut child = env
            .cmd()
            .args(["cache", "create", &name, "--path", "/c"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = child.wait().unwrap();
        let content = env.state_dir().join("caches").join(&name);
        let names = cache_names(&env);
        if status.success() {
            assert_eq!(names, vec![name.clone()], "delay {delay_ms}ms");
            assert_eq!(inspect(&env, &name)["status"], "running");
            env.ok(&["cache", "rm", &name]);
        } else {
            assert!(names.is_empty(), "delay {delay_ms}ms: left {names:?}");
            assert!(!content.exists(), "delay {delay_ms}ms: content dir left");
        }
    }
}
