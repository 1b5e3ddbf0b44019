//! Where nestcache runs and which containerd it talks to.
//!
//! Address order: `--address` / `CONTAINERD_ADDRESS` (used as given, never replaced),
//! else the system socket (`/run/containerd/containerd.sock`, overridable with
//! `NESTCACHE_SYSTEM_ADDRESS` for tests), else — on a local machine only — the embedded
//! containerd under the state dir, started if it does not run. In Kubernetes nestcache
//! never starts a containerd of its own: it needs the node's socket mounted into the pod.

pub mod embedded;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::containerd::{Client, DEFAULT_ADDRESS};
use crate::layout::StateLayout;
use crate::{Error, Result};

pub use embedded::Embedded;

/// Overrides the system socket probed before the embedded containerd (tests use it to
/// keep away from a machine's real containerd).
pub const SYSTEM_ADDRESS_ENV: &str = "NESTCACHE_SYSTEM_ADDRESS";
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const INSTALL_HINT: &str = "install them with `apt-get install -y containerd runc`";

/// How to reach containerd.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `--address` / `CONTAINERD_ADDRESS`.
    pub address: Option<String>,
    pub namespace: String,
    pub state_dir: PathBuf,
}

/// Kubernetes or not, and why nestcache thinks so.
#[derive(Debug, Clone, Serialize)]
pub struct Kubernetes {
    pub detected: bool,
    pub evidence: Vec<String>,
}

pub fn detect_kubernetes() -> Kubernetes {
    let mut evidence = Vec::new();
    if let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") {
        if !host.is_empty() {
            evidence.push(format!("KUBERNETES_SERVICE_HOST={host}"));
        }
    }
    if Path::new(SERVICE_ACCOUNT_DIR).is_dir() {
        evidence.push(format!("service-account dir {SERVICE_ACCOUNT_DIR} exists"));
    }
    Kubernetes {
        detected: !evidence.is_empty(),
        evidence,
    }
}

/// The system socket probed when no address is given.
pub fn system_address() -> String {
    std::env::var(SYSTEM_ADDRESS_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_string())
}

/// Connects as the address order says, starting the embedded containerd when allowed and
/// needed (and saying so on stderr).
pub async fn connect(opts: &ConnectOptions) -> Result<Client> {
    if let Some(a) = &opts.address {
        return Client::connect(a, &opts.namespace).await;
    }
    let system = system_address();
    let system_err = match Client::connect(&system, &opts.namespace).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    // What went wrong, without the generic advice that follows it.
    let why = match &system_err {
        Error::Containerd { message, .. } => {
            message.split("; ").next().unwrap_or_default().to_string()
        }
        e => e.to_string(),
    };
    // Someone else's containerd that we may not use: starting our own would hide that.
    if why.contains("ermission denied") {
        return Err(Error::Containerd {
            address: system,
            message: format!("{why}; run nestcache as root (or as a user allowed on that socket)"),
        });
    }
    let k8s = detect_kubernetes();
    if k8s.detected {
        return Err(Error::Containerd {
            address: system,
            message: format!(
                "{why}; this is Kubernetes ({}), where nestcache never starts a containerd of its own: mount the node's containerd socket into the pod and point --address / CONTAINERD_ADDRESS at it",
                k8s.evidence.join(", ")
            ),
        });
    }
    let emb = Embedded::new(&StateLayout::new(&opts.state_dir));
    let (client, started) = emb.ensure(&opts.namespace).await?;
    if started {
        eprintln!(
            "nestcache: no containerd answers at {system}; started an embedded containerd {} at {} (log {}; `nestcache system stop` stops it)",
            client.server_version(),
            emb.address(),
            emb.log_file().display()
        );
    }
    Ok(client)
}

/// Looks for a binary on PATH and in the usual sbin dirs (containerd and runc live in
/// /usr/sbin on some distributions, which a non-login PATH may lack).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// PATH plus the sbin/bin dirs containerd and runc are installed to.
pub fn search_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// containerd, its runc shim and runc must all be there to run a task; returns
/// containerd's path or names what is missing.
pub fn require_binaries() -> Result<PathBuf> {
    let missing: Vec<&str> = ["containerd", "containerd-shim-runc-v2", "runc"]
        .into_iter()
        .filter(|b| find_binary(b).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Other(format!(
            "no containerd answers and nestcache cannot start its own: {} not found on PATH; {INSTALL_HINT}",
            missing.join(", ")
        )));
    }
    find_binary("containerd")
        .ok_or_else(|| Error::Other(format!("containerd not found; {INSTALL_HINT}")))
}

/// A binary's path and the first line of `--version`.
#[derive(Debug, Clone, Serialize)]
pub struct Binary {
    pub path: Option<PathBuf>,
    pub version: Option<String>,
}

fn binary(name: &str) -> Binary {
    let path = find_binary(name);
    let version = path.as_ref().and_then(|p| {
        let out = std::process::Command::new(p)
            .arg("--version")
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_string)
    });
    Binary { path, version }
}

/// Whether the kernel offers overlayfs (listed in /proc/filesystems).
pub fn overlayfs_supported() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    })
}

/// `nestcache env`: everything the above decides, without starting anything.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kubernetes: Kubernetes,
    /// The address nestcache would use.
    pub address: String,
    /// `given` (--address / CONTAINERD_ADDRESS), `system`, or `embedded`.
    pub address_source: &'static str,
    pub answering: bool,
    pub containerd_version: Option<String>,
    /// Why the address does not answer.
    pub error: Option<String>,
    pub namespace: String,
    pub embedded: bool,
    /// True when no containerd answers and nestcache would start the embedded one.
    pub would_start_embedded: bool,
    pub state_dir: PathBuf,
    pub containerd: Binary,
    pub runc: Binary,
    pub overlayfs: bool,
}

pub async fn report(opts: &ConnectOptions) -> Report {
    let kubernetes = detect_kubernetes();
    let emb = Embedded::new(&StateLayout::new(&opts.state_dir));
    let (address, source) = match &opts.address {
        Some(a) => (a.clone(), "given"),
        None => (system_address(), "system"),
    };
    let mut r = Report {
        address,
        address_source: source,
        answering: false,
        containerd_version: None,
        error: None,
        namespace: opts.namespace.clone(),
        embedded: false,
        would_start_embedded: false,
        state_dir: opts.state_dir.clone(),
        containerd: binary("containerd"),
        runc: binary("runc"),
        overlayfs: overlayfs_supported(),
        kubernetes,
    };
    match Client::connect(&r.address, &opts.namespace).await {
        Ok(c) => {
            r.answering = true;
            r.containerd_version = Some(c.server_version().to_string());
            return r;
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    if opts.address.is_some() || r.kubernetes.detected {
        return r;
    }
    r.address = emb.address();
    r.address_source = "embedded";
    r.embedded = true;
    if emb.pid().is_some() {
        match Client::connect(&r.address, &opts.namespace).await {
            Ok(c) => {
                r.answering = true;
                r.containerd_version = Some(c.server_version().to_string());
                r.error = None;
            }
            Err(e) => r.error = Some(e.to_string()),
        }
    } else {
        r.would_start_embedded = true;
        r.error = None;
    }
    r
}
