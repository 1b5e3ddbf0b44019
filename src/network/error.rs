//! What can go wrong with a nested container's network, each one line naming the object.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A CNI plugin answered with an error result (or exited without one).
    #[error("CNI {command} of {plugin} for {container} failed: {msg}{}", details_suffix(.details))]
    Plugin {
        plugin: String,
        command: &'static str,
        container: String,
        code: u64,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin:?} not found in {}", dirs_list(.dirs))]
    PluginMissing { plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI network config {}: {why}", .file.display())]
    Config { file: PathBuf, why: String },
    #[error("host port {ip}:{port}/{proto} is {holder}")]
    PortInUse {
        ip: String,
        port: u16,
        proto: String,
        holder: String,
    },
    #[error("no free /{prefix} subnet left in the pool {pool} (set NESTCACHE_SUBNET_POOL): every one is used by the host's routes or another cache's network")]
    NoSubnet { pool: String, prefix: u8 },
    #[error("network namespace {}: {why}", .path.display())]
    Netns { path: PathBuf, why: String },
    #[error("{what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network of nested container {container}: {why}")]
    Container { container: String, why: String },
}

fn details_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

impl NetworkError {
    pub fn file(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NetworkError::File {
            what,
            path: path.into(),
            source,
        }
    }
}
