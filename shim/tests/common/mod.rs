//! Helpers for the shim's tests: `ctr` against a real containerd whose PATH has
//! containerd-shim-nestcache-v2 (scripts/test.sh arranges that, or a private containerd
//! started here), a busybox-static rootfs laid out on disk, and a nestcache store with a
//! one-layer busybox image staged and extracted.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.nestcache.v2";

/// How long a test waits for something containerd does asynchronously before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn shim_binary() -> &'static str {
    env!("CARGO_BIN_EXE_containerd-shim-nestcache-v2")
}

/// A name unique to this process and call, safe for containerd ids and namespaces.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The test run's containerd (scripts/test.sh). Tests that need one fail loudly without.
pub fn containerd_address() -> String {
    std::env::var("CONTAINERD_ADDRESS").expect(
        "CONTAINERD_ADDRESS is not set: run the tests with scripts/test.sh, which starts a private containerd with the shim on its PATH",
    )
}

/// `ctr` bound to one containerd and one namespace of the test's own.
pub struct Ctr {
    pub address: String,
    pub namespace: String,
}

impl Ctr {
    pub fn new(prefix: &str) -> Ctr {
        Ctr::at(&containerd_address(), prefix)
    }

    pub fn at(address: &str, prefix: &str) -> Ctr {
        Ctr {
            address: address.to_string(),
            namespace: unique(prefix),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn ctr")
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --runtime nestcache --rootfs ROOTFS [extra] ID CMD...`
    pub fn run_rootfs(&self, rootfs: &Path, extra: &[&str], id: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.extend(["--rootfs", rootfs.to_str().expect("utf-8 path"), id]);
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// The task's status column in `ctr task ls` (None when there is no task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols.first() == Some(&id)).then(|| cols.get(2).unwrap_or(&"").to_string())
        })
    }

    pub fn task_pid(&self, id: &str) -> u32 {
        let out = self.ok(&["task", "ls"]);
        out.lines()
            .skip(1)
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols.first() == Some(&id))
                    .then(|| cols[1].parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no task {id} in:\n{out}"))
    }

    /// Polls until `f` holds; panics with `what` after PATIENCE.
    pub fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills (if needed) and deletes the task and container; ignores what is gone.
    pub fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-s", "KILL", id]);
        self.wait_for(&format!("task {id} to stop"), || {
            !matches!(self.task_status(id).as_deref(), Some("RUNNING"))
        });
        let _ = self.run(&["task", "rm", id]);
        let _ = self.run(&["container", "rm", id]);
    }

    /// Starts `ctr events` for this namespace; lines arrive on the receiver.
    pub fn events(&self) -> Events {
        let mut child = self
            .cmd()
            .arg("events")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr events");
        let stdout = child.stdout.take().expect("ctr events stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let events = Events { child, rx };
        events.wait_subscribed(self);
        events
    }
}

pub struct Events {
    child: Child,
    pub rx: Receiver<String>,
}

impl Events {
    /// `ctr events` subscribes some time after it starts; a test that acts before that
    /// misses its first events. A probe namespace is created until its event comes back.
    fn wait_subscribed(&self, ctr: &Ctr) {
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < PATIENCE, "ctr events never subscribed");
            let probe = unique("events-probe");
            let _ = ctr.run(&["namespaces", "create", &probe]);
            let seen = (0..10).any(|_| {
                matches!(self.rx.recv_timeout(Duration::from_millis(50)), Ok(l) if l.contains(&probe))
            });
            let _ = ctr.run(&["namespaces", "remove", &probe]);
            if seen {
                return;
            }
        }
    }

    /// Collects event lines until one contains every string of `until`; panics after
    /// PATIENCE.
    pub fn collect_until(&self, until: &[&str]) -> Vec<String> {
        let start = Instant::now();
        let mut lines = Vec::new();
        loop {
            let left = PATIENCE.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    let done = until.iter().all(|u| l.contains(u));
                    lines.push(l);
                    if done {
                        return lines;
                    }
                }
                Err(_) => panic!("no event matching {until:?}; got:\n{}", lines.join("\n")),
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: apt-get install busybox-static (scripts/install-deps.sh does)")
}

/// Lays out a busybox-static root: /bin/busybox + applets, and the dirs runc mounts on.
pub fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs dir");
    }
    std::fs::copy(busybox(), root.join("bin/busybox")).expect("copy busybox");
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "false", "ls", "ps", "id", "tty", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
}

/// A nestcache store holding `ref_name`: a one-layer busybox image (built with umoci),
/// staged and extracted. Returns the image's manifest digest.
pub fn store_with_busybox(work: &Path, store: &Path, ref_name: &str) -> String {
    let rootfs = work.join("rootfs");
    busybox_rootfs(&rootfs);
    std::fs::write(rootfs.join("etc/nestcache-test"), format!("{ref_name}\n")).expect("marker");
    let layout = work.join("layout");
    let layer = work.join("layer.tar");
    let image = format!("{}:{ref_name}", layout.display());
    let sh = |args: &[&str]| {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/install-deps.sh installs it)", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&["umoci", "init", "--layout", layout.to_str().unwrap()]);
    sh(&["umoci", "new", "--image", &image]);
    sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap(),
        "-cf",
        layer.to_str().unwrap(),
        ".",
    ]);
    sh(&[
        "umoci",
        "raw",
        "add-layer",
        "--image",
        &image,
        layer.to_str().unwrap(),
    ]);
    sh(&[
        "umoci",
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        "PATH=/bin",
    ]);
    let st = nestcache::store::Store::open(store).expect("open store");
    let source = nestcache::source::parse(&format!("oci:{image}")).expect("parse source");
    let report = nestcache::stage::stage(&st, &*source, &Default::default()).expect("stage");
    report.manifest_digest
}

/// Every mount point whose path contains `needle` (from /proc/self/mountinfo).
pub fn mounts_containing(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.contains(needle))
        .map(str::to_string)
        .collect()
}

/// A containerd of the test's own (for restarts), with the shim on its PATH.
pub struct PrivateContainerd {
    pub dir: PathBuf,
    pub address: String,
    path: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/containerd.sh")
}

impl PrivateContainerd {
    pub fn start() -> PrivateContainerd {
        let dir = tempfile::Builder::new()
            .prefix("nc-shim-ctd-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir bin");
        std::os::unix::fs::symlink(shim_binary(), bin.join("containerd-shim-nestcache-v2"))
            .expect("link shim");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = PrivateContainerd {
            dir,
            address: String::new(),
            path,
        };
        c.address = c.script("start").trim().to_string();
        c
    }

    fn script(&self, action: &str) -> String {
        let out = Command::new(script())
            .arg(action)
            .arg(&self.dir)
            .env("PATH", &self.path)
            .output()
            .expect("run scripts/containerd.sh");
        assert!(
            out.status.success(),
            "containerd.sh {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    pub fn restart(&self) {
        self.stop();
        self.script("start");
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills and deletes a task and its container when dropped, so a test that fails half-way
/// leaves no task (and no shim) running. Never panics.
pub struct TaskGuard<'a> {
    pub ctr: &'a Ctr,
    pub id: String,
}

impl Drop for TaskGuard<'_> {
    fn drop(&mut self) {
        let _ = self.ctr.run(&["task", "kill", "-s", "KILL", &self.id]);
        for _ in 0..50 {
            let out = self.ctr.run(&["task", "rm", &self.id]);
            if out.status.success() || String::from_utf8_lossy(&out.stderr).contains("not found") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.ctr.run(&["container", "rm", &self.id]);
    }
}
