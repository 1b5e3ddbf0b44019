//! `ctr` against a real containerd whose PATH has containerd-shim-nestcache-v2
//! (scripts/test.sh arranges that, as [`crate::PrivateContainerd`] does), its events, and
//! a guard that removes a task whatever the test's outcome.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use crate::containerd::{containerd_address, unique};

pub const RUNTIME: &str = "io.containerd.nestcache.v2";

/// How long a test waits for something containerd does asynchronously before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

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

/// A config file for nestcache's shim (`ctr run --runtime-config-path FILE`) allowing
/// `io.nestcache.store` under `roots` only.
pub fn shim_config(dir: &Path, roots: &[&Path]) -> PathBuf {
    let path = dir.join(format!("{}.json", unique("shim-config")));
    let roots: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let text = serde_json::json!({ "store_roots": roots }).to_string();
    std::fs::write(&path, text).expect("write shim config");
    path
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

/// Kills and deletes a task and its container when dropped, so a test that fails half-way
/// leaves no task (and no shim) running. Never panics.
pub struct TaskGuard<'a> {
    pub ctr: &'a Ctr,
    pub id: String,
}

impl<'a> TaskGuard<'a> {
    /// One guard for each id.
    pub fn each<S: AsRef<str>>(ctr: &'a Ctr, ids: &[S]) -> Vec<TaskGuard<'a>> {
        ids.iter()
            .map(|id| TaskGuard {
                ctr,
                id: id.as_ref().to_string(),
            })
            .collect()
    }
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
