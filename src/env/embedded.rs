//! The embedded containerd: on a local machine where no containerd answers, nestcache
//! runs its own, everything under `<state>/containerd/` (config, root, state, sockets,
//! log, pid file), detached in its own session so it outlives the command that started
//! it, and reused by later commands. A lock file serializes concurrent starts.

use std::fs;
use std::io::Read as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::containerd::Client;
use crate::error::IoContext;
use crate::layout::StateLayout;
use crate::{Error, Result};

/// How long a fresh containerd may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it gets to exit on SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Unix socket paths hold at most 107 bytes (plus NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The embedded containerd's files.
#[derive(Debug, Clone)]
pub struct Embedded {
    dir: PathBuf,
}

/// `nestcache system status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid: Option<i32>,
    pub running: bool,
    pub answering: bool,
    pub version: Option<String>,
}

/// What `stop` did.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    pub pid: Option<i32>,
    pub was_running: bool,
    pub killed: bool,
}

impl Embedded {
    pub fn new(state: &StateLayout) -> Embedded {
        Embedded {
            dir: state.embedded_containerd_dir(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }

    fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// The address clients connect to.
    pub fn address(&self) -> String {
        self.socket().to_string_lossy().into_owned()
    }

    /// The pid of the embedded containerd if it is alive (its pid file names a live
    /// process started with this config, so a recycled pid is never taken for it).
    pub fn pid(&self) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = self.config_file();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == config.as_os_str().as_encoded_bytes());
        (ours && !is_zombie(pid)).then_some(pid)
    }

    pub async fn status(&self, namespace: &str) -> Status {
        let pid = self.pid();
        let client = match pid {
            Some(_) => Client::connect(&self.address(), namespace).await.ok(),
            None => None,
        };
        Status {
            dir: self.dir.clone(),
            config: self.config_file(),
            socket: self.socket(),
            log: self.log_file(),
            pid,
            running: pid.is_some(),
            answering: client.is_some(),
            version: client.map(|c| c.server_version().to_string()),
        }
    }

    /// Connects to the embedded containerd, starting it first if it does not run.
    /// Returns the client and whether this call started it.
    pub async fn ensure(&self, namespace: &str) -> Result<(Client, bool)> {
        let address = self.address();
        if address.len() + ".ttrpc".len() > MAX_SOCKET_PATH {
            return Err(Error::Invalid(format!(
                "the embedded containerd's socket {address} would be longer than {MAX_SOCKET_PATH} bytes; use a shorter --state-dir"
            )));
        }
        fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.lock_file())
            .ctx(|| format!("open {}", self.lock_file().display()))?;
        // Held until this function returns: one starter at a time.
        let _lock = tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        })
        .await
        .map_err(|e| Error::Other(format!("locking the embedded containerd: {e}")))?
        .map_err(|(_, e)| {
            Error::io(
                format!("lock {}", self.lock_file().display()),
                std::io::Error::from(e),
            )
        })?;

        if let Some(pid) = self.pid() {
            return match Client::connect(&address, namespace).await {
                Ok(c) => Ok((c, false)),
                Err(e) => Err(Error::Other(format!(
                    "the embedded containerd (pid {pid}) runs but does not answer: {e}; see {} or stop it with `nestcache system stop`",
                    self.log_file().display()
                ))),
            };
        }
        let client = self.start(namespace).await?;
        Ok((client, true))
    }

    async fn start(&self, namespace: &str) -> Result<Client> {
        let containerd = super::require_binaries()?;
        self.write_config()?;
        // A socket left by a containerd that died would make it fail to listen.
        for s in [self.socket(), self.dir.join("containerd.sock.ttrpc")] {
            let _ = fs::remove_file(s);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .ctx(|| format!("open {}", self.log_file().display()))?;
        let log2 = log
            .try_clone()
            .ctx(|| format!("open {}", self.log_file().display()))?;
        let mut cmd = Command::new(&containerd);
        cmd.arg("--config")
            .arg(self.config_file())
            .env("PATH", super::search_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .ctx(|| format!("start {}", containerd.display()))?;
        let pid = child.id();
        fs::write(self.pid_file(), format!("{pid}\n"))
            .ctx(|| format!("write {}", self.pid_file().display()))?;

        let limit = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = fs::remove_file(self.pid_file());
                return Err(Error::Other(format!(
                    "the embedded containerd exited at start ({status}); its log {} ends with: {}",
                    self.log_file().display(),
                    log_tail(&self.log_file())
                )));
            }
            if let Ok(c) = Client::connect(&self.address(), namespace).await {
                return Ok(c);
            }
            if Instant::now() > limit {
                return Err(Error::Other(format!(
                    "the embedded containerd (pid {pid}) did not answer on {} within {START_TIMEOUT:?}; see {}",
                    self.address(),
                    self.log_file().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// containerd's config: everything under our dir, the CRI plugin off (not needed, and
    /// it would try to own networking), the opt plugin moved off /opt/containerd.
    fn write_config(&self) -> Result<()> {
        let d = &self.dir;
        let q = |p: PathBuf| toml_string(&p.to_string_lossy());
        let config = format!(
            "# Generated by nestcache: the embedded containerd. Rewritten at every start.\n\
             version = 2\n\
             root = {}\n\
             state = {}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {}\n\
             [ttrpc]\n  address = {}\n\
             [debug]\n  address = {}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {}\n",
            q(d.join("root")),
            q(d.join("state")),
            q(self.socket()),
            q(d.join("containerd.sock.ttrpc")),
            q(d.join("debug.sock")),
            q(d.join("opt")),
        );
        fs::write(self.config_file(), config)
            .ctx(|| format!("write {}", self.config_file().display()))
    }

    /// Stops the embedded containerd (SIGTERM, SIGKILL after a grace period). Its tasks'
    /// shims keep running; a later start picks them up again.
    pub fn stop(&self) -> Result<Stopped> {
        // Not while another nestcache is starting it.
        let _lock = match fs::OpenOptions::new().write(true).open(self.lock_file()) {
            Ok(f) => Some(
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(
                    |(_, e)| {
                        Error::io(
                            format!("lock {}", self.lock_file().display()),
                            std::io::Error::from(e),
                        )
                    },
                )?,
            ),
            Err(_) => None,
        };
        let Some(pid) = self.pid() else {
            let _ = fs::remove_file(self.pid_file());
            return Ok(Stopped {
                pid: None,
                was_running: false,
                killed: false,
            });
        };
        let target = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        let mut killed = false;
        let limit = Instant::now() + STOP_TIMEOUT;
        while alive(pid) {
            if Instant::now() > limit && !killed {
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = fs::remove_file(self.pid_file());
        for s in [self.socket(), self.dir.join("containerd.sock.ttrpc")] {
            let _ = fs::remove_file(s);
        }
        Ok(Stopped {
            pid: Some(pid),
            was_running: true,
            killed,
        })
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() && !is_zombie(pid)
}

/// A zombie holds its pid until its parent reaps it, but it is gone.
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

/// The last line of a log, for a one-line error.
fn log_tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(empty)")
        .chars()
        .take(400)
        .collect()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
