//! The first container as the cache (claim 7), with nestcache run *inside* a container
//! made with ctr that has containerd's socket, the built nestcache and host dirs mounted:
//! a host dir at the target path makes that container the cache (labels only, and `rm`
//! and `gc` never touch the container); without one a cache container is started and
//! `create` says why; a host dir mounted at another path fails loudly.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use testkit::ctr::Ctr;
use testkit::{unique, Env};

/// The first container: `sleep` on a rootfs of the host's /usr, with the socket, the
/// state dir and nestcache (at /nestcache) bound in, plus `binds` (host, container).
struct First {
    ctr: Ctr,
    id: String,
    /// The bound state dir, where an exec's output files go.
    state: PathBuf,
    _rootfs: tempfile::TempDir,
}

impl First {
    fn start(env: &Env, binds: &[(&Path, &Path)]) -> First {
        let ctr = Ctr {
            address: env.address.clone(),
            namespace: env.namespace.clone(),
        };
        let rootfs = tempfile::tempdir().unwrap();
        for (link, to) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(to, rootfs.path().join(link)).unwrap();
        }
        let socket = PathBuf::from(env.address.trim_start_matches("unix://"));
        let nestcache = testkit::cargo_bin("nestcache");
        let state = env.state_dir().to_path_buf();
        let mut mounts = vec![
            (Path::new("/usr"), Path::new("/usr"), "ro"),
            (&socket, &socket, "rw"),
            (&state, &state, "rw"),
            (&nestcache, Path::new("/nestcache"), "ro"),
        ];
        mounts.extend(binds.iter().map(|(h, c)| (*h, *c, "rw")));
        let id = unique("first");
        let mut args: Vec<String> = ["run", "-d", "--rootfs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (k, v) in [
            ("CONTAINERD_ADDRESS", env.address.as_str()),
            ("CONTAINERD_NAMESPACE", env.namespace.as_str()),
            ("NESTCACHE_STATE_DIR", state.to_str().unwrap()),
            ("NESTCACHE_NET", "none"),
        ] {
            args.push("--env".into());
            args.push(format!("{k}={v}"));
        }
        for (src, dst, mode) in mounts {
            args.push("--mount".into());
            args.push(format!(
                "type=bind,src={},dst={},options=rbind:{mode}",
                src.display(),
                dst.display()
            ));
        }
        // `--rootfs` is a switch: the rootfs dir takes the image's place.
        args.push(rootfs.path().display().to_string());
        args.push(id.clone());
        args.extend(["/usr/bin/sleep".to_string(), "600".to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ctr.ok(&argv);
        First {
            ctr,
            id,
            state,
            _rootfs: rootfs,
        }
    }

    /// `nestcache ARGS` inside the first container. Its output comes back through files
    /// in the bound state dir, not the exec's fifos: containerd 1.6's runc shim (which
    /// runs the first container) can publish an exec's exit before its output is copied,
    /// and ctr then printed nothing once in CI under load.
    fn nestcache(&self, args: &[&str]) -> Output {
        let exec_id = unique("x");
        let (out, err) = (
            self.state.join(format!("{exec_id}.out")),
            self.state.join(format!("{exec_id}.err")),
        );
        let (out_s, err_s) = (out.to_str().unwrap(), err.to_str().unwrap());
        let mut argv = vec![
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            &self.id,
            "/usr/bin/sh",
            "-c",
            r#"out=$1 err=$2; shift 2; exec /nestcache "$@" >"$out" 2>"$err""#,
            "sh",
            out_s,
            err_s,
        ];
        argv.extend_from_slice(args);
        let mut o = self.ctr.run(&argv);
        let take = |p: &Path| {
            let bytes = std::fs::read(p).unwrap_or_default();
            let _ = std::fs::remove_file(p);
            bytes
        };
        o.stdout = take(&out);
        // ctr's own complaints (an exec that could not start) stay after the process's.
        let ctr_err = std::mem::take(&mut o.stderr);
        o.stderr = [take(&err), ctr_err].concat();
        o
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.nestcache(args);
        assert!(
            out.status.success(),
            "nestcache {args:?} in the first container failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.nestcache(args);
        assert!(
            !out.status.success(),
            "nestcache {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // ctr task exec passes the process's stdout and stderr through.
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The container's io.nestcache.* labels, from `ctr containers info`.
    fn our_labels(&self) -> serde_json::Map<String, Value> {
        let info: Value = serde_json::from_str(&self.ctr.ok(&["containers", "info", &self.id]))
            .expect("ctr containers info is JSON");
        info["Labels"]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with("io.nestcache."))
            .collect()
    }

    fn running(&self) -> bool {
        self.ctr.task_status(&self.id).as_deref() == Some("RUNNING")
    }
}

impl Drop for First {
    fn drop(&mut self) {
        self.ctr.remove(&self.id);
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn host_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("nc-adopt-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[test]
fn a_first_container_with_a_host_dir_at_the_path_becomes_the_cache() {
    testkit::require!(containerd, root);
    let env = Env::new("adopt");
    let host = host_dir();
    let h = host.path();
    std::fs::write(h.join("prepared"), "by the job\n").unwrap();
    let first = First::start(&env, &[(h, h)]);
    let hs = h.to_str().unwrap();

    let created = json(&first.ok(&["cache", "create", "job", "--path", hs, "--json"]));
    assert_eq!(created["adopted"], true, "{created}");
    assert_eq!(created["id"], first.id.as_str(), "{created}");
    assert_eq!(created["content_dir"], hs);
    assert_eq!(created["status"], "running");
    let labels = first.our_labels();
    assert_eq!(labels["io.nestcache.role"], "cache", "{labels:?}");
    assert_eq!(labels["io.nestcache.name"], "job");
    assert_eq!(labels["io.nestcache.path"], hs);
    assert_eq!(labels["io.nestcache.content-dir"], hs);
    assert_eq!(labels["io.nestcache.adopted"], "true");

    // The host sees it as a cache like any other, and a nested container runs from it
    // with the first container's host dir at the path.
    let v = json(&env.ok(&["cache", "inspect", "job", "--json"]));
    assert_eq!(v["adopted"], true);
    assert_eq!(v["id"], first.id.as_str());
    let fx = testkit::nested::Fixture {
        env,
        cache: "job".into(),
        content: h.to_path_buf(),
        images: tempfile::tempdir().unwrap(),
    };
    let image = fx.small("small", |_| {});
    let cat = format!("{hs}/prepared");
    assert_eq!(fx.ok(&["--rm", &image, "cat", &cat]), "by the job\n");

    // gc finds nothing to collect: the container is running; a second create of the name
    // is refused, --reuse returns it.
    assert_eq!(fx.env.ok(&["cache", "gc"]).trim(), "nothing to collect");
    let e = first.fails(&["cache", "create", "job", "--path", hs]);
    assert!(e.contains("is taken"), "{e}");
    let again = json(&first.ok(&["cache", "create", "job", "--path", hs, "--reuse", "--json"]));
    assert_eq!(
        (again["reused"].clone(), again["adopted"].clone()),
        (true.into(), true.into())
    );

    // rm takes the labels, never the container or the host dir.
    let out = fx.env.ok(&["cache", "rm", "job"]);
    assert!(out.contains("removed cache job"), "{out}");
    assert!(first.our_labels().is_empty(), "{:?}", first.our_labels());
    assert!(first.running(), "the first container keeps running");
    assert!(h.join("prepared").is_file(), "the host dir is the job's");
    assert!(fx
        .env
        .fails(&["cache", "inspect", "job"])
        .contains("no cache named"));
}

#[test]
fn an_expired_adopted_cache_loses_its_labels_and_keeps_its_container() {
    testkit::require!(containerd, root);
    let env = Env::new("adopt-ttl");
    let host = host_dir();
    let h = host.path();
    let first = First::start(&env, &[(h, h)]);
    let hs = h.to_str().unwrap();
    let created = json(&first.ok(&[
        "cache", "create", "brief", "--path", hs, "--ttl", "1s", "--json",
    ]));
    assert_eq!(created["adopted"], true, "{created}");
    assert!(first.our_labels().contains_key("io.nestcache.expires"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = env.ok(&["cache", "gc", "--json"]);
    assert!(out.contains("brief"), "{out}");
    assert!(first.our_labels().is_empty(), "{:?}", first.our_labels());
    assert!(first.running());
}

#[test]
fn without_a_mount_at_the_path_a_cache_container_is_started_and_create_says_why() {
    testkit::require!(containerd, root);
    let env = Env::new("adopt-no");
    let host = host_dir();
    let h = host.path();
    let first = First::start(&env, &[(h, h)]);
    let hs = h.to_str().unwrap();

    let e = first.fails(&["cache", "create", "strict", "--path", "/cache", "--adopt"]);
    assert!(
        e.contains(&format!(
            "this container {} has no host directory bind-mounted at /cache",
            first.id
        )),
        "{e}"
    );
    assert!(first.our_labels().is_empty());

    let out = first.ok(&[
        "cache",
        "create",
        "c",
        "--path",
        "/cache",
        "--content-dir",
        hs,
    ]);
    assert!(
        out.starts_with("cache c created: cache container nc-cache-c (not adopted: this container"),
        "{out}"
    );
    let v = json(&env.ok(&["cache", "inspect", "c", "--json"]));
    assert_eq!(v["adopted"], false);
    assert_eq!(v["id"], "nc-cache-c");
    assert!(
        first.our_labels().is_empty(),
        "the first container is left alone"
    );
    env.ok(&["cache", "rm", "c"]);

    // On the host, outside any container: a cache container, and why.
    let created = json(&env.ok(&["cache", "create", "h", "--path", "/cache", "--json"]));
    assert_eq!(created["adopted"], false);
    assert!(created["not_adopted"].as_str().is_some(), "{created}");
    let none = json(&env.ok(&[
        "cache",
        "create",
        "n",
        "--path",
        "/cache",
        "--no-adopt",
        "--json",
    ]));
    assert!(none.get("not_adopted").is_none(), "{none}");
    env.ok(&["cache", "rm", "h"]);
    env.ok(&["cache", "rm", "n"]);
}

/// Path identity (issue 15, item 6): containerd binds a host path; when the host dir is
/// mounted at another path inside the container, nestcache and containerd would see
/// different directories, and create fails loudly, adopting or not.
#[test]
fn a_host_dir_mounted_at_another_path_fails_loudly() {
    testkit::require!(containerd, root);
    let env = Env::new("adopt-path");
    let (a, b) = (host_dir(), host_dir());
    // Host dir a appears at b's path inside the container; on the host b is another dir.
    let first = First::start(&env, &[(a.path(), b.path())]);
    let bs = b.path().to_str().unwrap();

    let e = first.fails(&["cache", "create", "wrong", "--path", bs]);
    assert!(
        e.contains(&format!(
            "mounts host directory {} at {bs}",
            a.path().display()
        )) && e.contains("nestcache and containerd would see different directories"),
        "{e}"
    );
    assert!(first.our_labels().is_empty(), "nothing labelled");

    // A cache container with that dir as its content dir: the keeper's handshake fails.
    let e = first.fails(&[
        "cache",
        "create",
        "wrong2",
        "--path",
        "/cache",
        "--content-dir",
        bs,
        "--no-adopt",
    ]);
    assert!(
        e.contains("nestcache and the cache container see different directories"),
        "{e}"
    );
    let left = env.ok(&["cache", "ls", "--json"]);
    assert_eq!(json(&left), serde_json::json!([]), "nothing left: {left}");
    assert_eq!(
        std::fs::read_dir(b.path()).unwrap().count(),
        0,
        "nothing written into the host's {bs}"
    );
}
