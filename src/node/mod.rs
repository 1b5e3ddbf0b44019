//! Node setup for Kubernetes, the same steps whether the DaemonSet in `deploy/` runs
//! them or an operator does by hand (`nestcache node install|uninstall|status`), modelled
//! on kata-deploy: install the shim and nestcache on the host, add the runtime to
//! containerd's config (a format-keeping TOML edit, with a backup), restart containerd
//! only when the config changed, make the store dir, label the node; and undo it all.
//!
//! Every host path is taken under `host_root` (`/` on the node, `/host` in the DaemonSet,
//! where the node's root is mounted). What install did is recorded in
//! `<host_root>/var/lib/nestcache/node.json`, so uninstall removes only that.

pub mod containerd_config;
pub mod kube;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

pub use containerd_config::{Config, Layout, RUNTIME_NAME};

/// The node label the RuntimeClass selects on.
pub const NODE_LABEL: &str = "nestcache.io/runtime";
pub const NODE_LABEL_VALUE: &str = "true";
pub const SHIM_BINARY: &str = "containerd-shim-nestcache-v2";
pub const CLI_BINARY: &str = "nestcache";
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
pub const DEFAULT_BIN_DIR: &str = "/usr/local/bin";
pub const DEFAULT_STORE: &str = "/var/lib/nestcache/store";
/// The shim's default store root: a store under it needs no shim config.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nestcache";
/// The shim's config (`store_roots`), written when the store lies elsewhere.
pub const SHIM_CONFIG: &str = "/etc/nestcache/shim.json";
const RECORD: &str = "/var/lib/nestcache/node.json";
const BACKUP_SUFFIX: &str = ".nestcache-backup";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("containerd config {file}: {message}")]
    ConfigParse { file: String, message: String },
    #[error("containerd config {file}: version {found} is not supported (2 or 3); convert it with `containerd config migrate`")]
    ConfigVersion { file: String, found: String },
    #[error("containerd config {file}: {key} must be {expected}")]
    ConfigShape {
        file: String,
        key: String,
        expected: &'static str,
    },
    #[error("containerd config {file}: runtime {name:?} exists with runtime_type {runtime_type:?}, not ours; remove it or pick another name")]
    RuntimeTaken {
        file: String,
        name: String,
        runtime_type: String,
    },
    #[error("not in a Kubernetes pod: {missing} is missing (label the node with `kubectl label node NODE {NODE_LABEL}={NODE_LABEL_VALUE}`)")]
    NotInCluster { missing: String },
    #[error("label {key} on node {node}: {message}")]
    Label {
        node: String,
        key: String,
        message: String,
    },
    #[error("restart containerd with `{command}`: {message}")]
    Restart { command: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(std::io::Error) -> NodeError {
    move |source| NodeError::Io {
        context: context(),
        source,
    }
}

/// What to install where; paths other than `host_root` and the sources are host paths.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub host_root: PathBuf,
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    pub store: PathBuf,
    /// The binaries to install (from the DaemonSet's image, or a build dir).
    pub shim_source: PathBuf,
    pub cli_source: PathBuf,
    /// Layout of a config file created from nothing.
    pub new_config_layout: Layout,
    /// argv that restarts containerd; empty: never restart (say so instead).
    pub restart: Vec<String>,
    /// Label this node through the API server (in a pod with the DaemonSet's RBAC).
    pub node_name: Option<String>,
}

impl NodeOptions {
    /// A host path as this process sees it.
    pub fn host(&self, p: &Path) -> PathBuf {
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// What install did, for uninstall to undo.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub config: PathBuf,
    /// The config file did not exist before install.
    pub config_created: bool,
    pub binaries: Vec<PathBuf>,
    pub store: PathBuf,
    pub labelled_node: Option<String>,
    /// The shim config file install wrote ([`SHIM_CONFIG`]), if the store needed one.
    #[serde(default)]
    pub shim_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub what: String,
    pub changed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub steps: Vec<Step>,
    pub config_changed: bool,
    pub restarted: bool,
}

impl Report {
    fn step(&mut self, changed: bool, what: String) {
        self.steps.push(Step { what, changed });
    }
}

pub fn install(o: &NodeOptions) -> Result<Report, NodeError> {
    let mut r = Report {
        steps: vec![],
        config_changed: false,
        restarted: false,
    };
    let mut record = Record {
        config: o.config.clone(),
        store: o.store.clone(),
        ..load_record(o)?.unwrap_or_default()
    };
    for (src, name) in [(&o.shim_source, SHIM_BINARY), (&o.cli_source, CLI_BINARY)] {
        let dest = o.bin_dir.join(name);
        let changed = install_binary(src, &o.host(&dest))?;
        r.step(changed, format!("binary {}", dest.display()));
        if !record.binaries.contains(&dest) {
            record.binaries.push(dest);
        }
    }
    let store = o.host(&o.store);
    crate::store::Store::open(&store).map_err(|e| NodeError::Io {
        context: format!("store {}", store.display()),
        source: std::io::Error::other(e.to_string()),
    })?;
    r.step(false, format!("store {}", o.store.display()));
    let file = o.host(&o.config);
    let (text, existed) = read_config(&file)?;
    let mut config = Config::parse(&file.display().to_string(), &text, o.new_config_layout)?;
    let shim_config = write_shim_config(o, &mut record, &mut r)?;
    let added = config.add_runtime()?;
    let pointed = config.set_shim_config(shim_config.as_deref())?;
    if added || pointed {
        if existed {
            backup(&file, &text)?;
        } else {
            record.config_created = true;
        }
        write_atomic(&file, config.render().as_bytes())?;
        r.config_changed = true;
    }
    r.step(
        r.config_changed,
        format!(
            "runtime {RUNTIME_NAME} in {} (config version {})",
            o.config.display(),
            config.layout().version()
        ),
    );
    save_record(o, &record)?;
    if r.config_changed {
        r.restarted = restart(o)?;
    }
    if let Some(node) = &o.node_name {
        kube::ApiServer::in_cluster()?.label_node(node, NODE_LABEL, Some(NODE_LABEL_VALUE))?;
        record.labelled_node = Some(node.clone());
        save_record(o, &record)?;
        r.step(
            true,
            format!("label {NODE_LABEL}={NODE_LABEL_VALUE} on node {node}"),
        );
    }
    Ok(r)
}

pub fn uninstall(o: &NodeOptions, remove_store: bool) -> Result<Report, NodeError> {
    let mut r = Report {
        steps: vec![],
        config_changed: false,
        restarted: false,
    };
    let record = load_record(o)?;
    let node = o
        .node_name
        .clone()
        .or_else(|| record.as_ref().and_then(|x| x.labelled_node.clone()));
    if let Some(node) = node {
        // The label goes first: no new pod is scheduled here while the runtime leaves.
        kube::ApiServer::in_cluster()?.label_node(&node, NODE_LABEL, None)?;
        r.step(true, format!("label {NODE_LABEL} removed from node {node}"));
    }
    let config_path = record
        .as_ref()
        .map_or(o.config.clone(), |x| x.config.clone());
    let file = o.host(&config_path);
    let (text, existed) = read_config(&file)?;
    if existed {
        let mut config = Config::parse(&file.display().to_string(), &text, o.new_config_layout)?;
        if config.remove_runtime() {
            let rest = config.render();
            let created = record.as_ref().is_some_and(|x| x.config_created);
            if created && rest.trim() == format!("version = {}", config.layout().version()) {
                std::fs::remove_file(&file)
                    .map_err(io_err(|| format!("remove {}", file.display())))?;
            } else {
                write_atomic(&file, rest.as_bytes())?;
            }
            r.config_changed = true;
        }
        r.step(
            r.config_changed,
            format!("runtime {RUNTIME_NAME} out of {}", config_path.display()),
        );
        drop_backup_if_same(&file, &mut r)?;
    }
    if r.config_changed {
        r.restarted = restart(o)?;
    }
    let binaries = record.as_ref().map_or_else(
        || vec![o.bin_dir.join(SHIM_BINARY), o.bin_dir.join(CLI_BINARY)],
        |x| x.binaries.clone(),
    );
    for b in binaries {
        let removed = remove_if_present(&o.host(&b))?;
        r.step(removed, format!("binary {} removed", b.display()));
    }
    if let Some(c) = record.as_ref().and_then(|x| x.shim_config.clone()) {
        let removed = remove_if_present(&o.host(&c))?;
        r.step(removed, format!("shim config {} removed", c.display()));
    }
    if remove_store {
        let store = record.as_ref().map_or(o.store.clone(), |x| x.store.clone());
        let removed = match std::fs::remove_dir_all(o.host(&store)) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(|| format!("remove {}", store.display()))(e)),
        };
        r.step(removed, format!("store {} removed", store.display()));
    }
    remove_if_present(&o.host(Path::new(RECORD)))?;
    Ok(r)
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub binaries: Vec<(PathBuf, bool)>,
    pub config: PathBuf,
    pub config_version: Option<i64>,
    pub runtime_configured: bool,
    pub store: PathBuf,
    pub store_present: bool,
    pub record: Option<Record>,
    /// Installed binaries, runtime configured, store present.
    pub installed: bool,
}

pub fn status(o: &NodeOptions) -> Result<Status, NodeError> {
    let record = load_record(o)?;
    let binaries: Vec<_> = [SHIM_BINARY, CLI_BINARY]
        .iter()
        .map(|n| {
            let p = o.bin_dir.join(n);
            let present = o.host(&p).is_file();
            (p, present)
        })
        .collect();
    let file = o.host(&o.config);
    let (text, existed) = read_config(&file)?;
    let parsed = if existed {
        Some(Config::parse(
            &file.display().to_string(),
            &text,
            o.new_config_layout,
        )?)
    } else {
        None
    };
    let runtime_configured = parsed.as_ref().is_some_and(Config::has_runtime);
    let store_present = o.host(&o.store).join("oci-layout").is_file();
    Ok(Status {
        installed: binaries.iter().all(|b| b.1) && runtime_configured && store_present,
        binaries,
        config: o.config.clone(),
        config_version: parsed.map(|c| c.layout().version()),
        runtime_configured,
        store: o.store.clone(),
        store_present,
        record,
    })
}

/// The shim allows stores only under its store roots ([`DEFAULT_STATE_DIR`] unless its
/// config says otherwise): a store elsewhere gets a [`SHIM_CONFIG`] that allows it (and
/// the default), which the runtime's `ConfigPath` names. Returns that path (a host path)
/// when the store needs it; a config an earlier install wrote for another store goes.
fn write_shim_config(
    o: &NodeOptions,
    record: &mut Record,
    r: &mut Report,
) -> Result<Option<String>, NodeError> {
    let path = PathBuf::from(SHIM_CONFIG);
    if o.store.starts_with(DEFAULT_STATE_DIR) {
        if let Some(old) = record.shim_config.take() {
            let removed = remove_if_present(&o.host(&old))?;
            r.step(removed, format!("shim config {} removed", old.display()));
        }
        return Ok(None);
    }
    let store = o.store.to_str().ok_or_else(|| NodeError::Io {
        context: format!("store {}", o.store.display()),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "path is not UTF-8"),
    })?;
    let roots = serde_json::json!({ "store_roots": [DEFAULT_STATE_DIR, store] });
    let text = format!("{roots:#}\n");
    let file = o.host(&path);
    let same = std::fs::read(&file).ok().as_deref() == Some(text.as_bytes());
    if !same {
        write_atomic(&file, text.as_bytes())?;
    }
    r.step(
        !same,
        format!(
            "shim config {} (store_roots {DEFAULT_STATE_DIR}, {})",
            path.display(),
            o.store.display()
        ),
    );
    record.shim_config = Some(path.clone());
    Ok(Some(SHIM_CONFIG.to_string()))
}

/// Copies `src` to `dest` (mode 0755) by rename when their contents differ.
fn install_binary(src: &Path, dest: &Path) -> Result<bool, NodeError> {
    let new = std::fs::read(src).map_err(io_err(|| format!("read {}", src.display())))?;
    if std::fs::read(dest).ok().as_deref() == Some(new.as_slice()) {
        return Ok(false);
    }
    write_atomic(dest, &new)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err(|| format!("chmod {}", dest.display())))?;
    Ok(true)
}

fn read_config(file: &Path) -> Result<(String, bool), NodeError> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok((t, true)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((String::new(), false)),
        Err(e) => Err(io_err(|| format!("read {}", file.display()))(e)),
    }
}

fn backup_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

/// The config as it was before nestcache first touched it; a later install keeps it.
fn backup(file: &Path, text: &str) -> Result<(), NodeError> {
    let b = backup_path(file);
    if b.exists() {
        return Ok(());
    }
    write_atomic(&b, text.as_bytes())
}

/// After uninstall the backup is dropped when the config is back to it; when someone
/// changed the config meanwhile, it stays, and the report says where.
fn drop_backup_if_same(file: &Path, r: &mut Report) -> Result<(), NodeError> {
    let b = backup_path(file);
    let Ok(saved) = std::fs::read(&b) else {
        return Ok(());
    };
    let now = std::fs::read(file).unwrap_or_default();
    if now == saved || now.trim_ascii_end() == saved.trim_ascii_end() {
        remove_if_present(&b)?;
        r.step(
            true,
            format!("backup {} removed (config is back to it)", b.display()),
        );
    } else {
        r.step(
            false,
            format!(
                "backup {} kept: the config changed since install",
                b.display()
            ),
        );
    }
    Ok(())
}

/// Writes durably through a temp file and rename ([`crate::fsutil::write_atomic`]),
/// keeping an existing file's mode.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), NodeError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(io_err(|| format!("create {}", dir.display())))?;
    crate::fsutil::write_atomic(path, data)
        .map_err(io_err(|| format!("replace {}", path.display())))
}

fn remove_if_present(p: &Path) -> Result<bool, NodeError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(|| format!("remove {}", p.display()))(e)),
    }
}

fn load_record(o: &NodeOptions) -> Result<Option<Record>, NodeError> {
    let p = o.host(Path::new(RECORD));
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| NodeError::Io {
                context: format!("parse {}", p.display()),
                source: std::io::Error::other(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(|| format!("read {}", p.display()))(e)),
    }
}

fn save_record(o: &NodeOptions, r: &Record) -> Result<(), NodeError> {
    let text = serde_json::to_vec_pretty(r).map_err(std::io::Error::other);
    let text = text.map_err(io_err(|| "serialize node record".into()))?;
    write_atomic(&o.host(Path::new(RECORD)), &text)
}

/// Runs the restart command; false when there is none (the caller says to restart).
fn restart(o: &NodeOptions) -> Result<bool, NodeError> {
    let Some((cmd, args)) = o.restart.split_first() else {
        return Ok(false);
    };
    let command = o.restart.join(" ");
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| NodeError::Restart {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NodeError::Restart {
            command,
            message: format!("{}: {}", out.status, err.trim()),
        });
    }
    Ok(true)
}
