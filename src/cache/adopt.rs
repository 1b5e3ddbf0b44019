//! The first container as the cache (claim 7): when the container nestcache runs in has a
//! host directory bind-mounted at the target path, that container is labelled as the
//! cache (containerd's container Update, one `labels.<key>` field per label) and its host
//! directory is the content dir; no cache container is started. Removing such a cache
//! takes the labels away and never touches the container.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::containerd::Client;
use crate::labels;
use crate::{Error, Result};

use super::first::{self, Found};
use super::*;

/// Whether `cache create` tries to adopt the first container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AdoptMode {
    /// Adopt when possible, else start a cache container (and say why).
    #[default]
    Auto,
    /// Adopt or fail (`--adopt`).
    Require,
    /// Always start a cache container (`--no-adopt`).
    Never,
}

/// Why the first container could not be the cache.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("nestcache runs in no containerd container: {looked}")]
    NotFound { looked: String },
    #[error("this container {id} has no host directory bind-mounted at {path}")]
    NoMount { id: String, path: PathBuf },
    #[error("this container {id} mounts host directory {host_dir} at {path} read-only")]
    ReadOnly {
        id: String,
        host_dir: String,
        path: PathBuf,
    },
    #[error("this container {id} is already nestcache's {role} container (cache {name:?})")]
    Taken {
        id: String,
        role: String,
        name: String,
    },
    #[error("--content-dir {given} is not the host directory {host_dir} this container {id} mounts at {path}")]
    OtherContentDir {
        id: String,
        given: PathBuf,
        host_dir: String,
        path: PathBuf,
    },
    /// Fatal, never a reason to start a cache container instead: the host directory is
    /// there, at the wrong path.
    #[error("this container {id} mounts host directory {host_dir} at {path}, but at {host_dir} nestcache sees {seen}: containerd resolves the content dir on the host, so nestcache and containerd would see different directories. Mount the host directory at the same path ({host_dir} at {host_dir}) and pass --path {host_dir}, or pass --no-adopt")]
    PathIdentity {
        id: String,
        host_dir: String,
        path: PathBuf,
        seen: String,
    },
    #[error("labelling this container {id} in namespace {namespace}: {message}")]
    Label {
        id: String,
        namespace: String,
        message: String,
    },
}

impl AdoptError {
    /// Whether `cache create` without `--adopt` may start a cache container instead.
    pub fn allows_fallback(&self) -> bool {
        !matches!(self, AdoptError::PathIdentity { .. })
    }
}

/// Makes the first container cache `opts.name`. `Err(Error::Adopt(_))` when it cannot be.
pub(super) async fn adopt(client: &Client, opts: &CreateOptions) -> Result<Created> {
    let Found {
        client: ns_client,
        container,
    } = match first::find(client, &opts.path).await? {
        Ok(f) => f,
        Err(looked) => return Err(AdoptError::NotFound { looked }.into()),
    };
    let id = container.id.clone();
    if let Some(role) = container.label(labels::ROLE) {
        return Err(AdoptError::Taken {
            id,
            role: role.to_string(),
            name: container
                .label(labels::NAME)
                .unwrap_or_default()
                .to_string(),
        }
        .into());
    }
    let spec = container.spec()?;
    let Some((source, read_only)) = first::bind_at(&spec, &opts.path) else {
        return Err(AdoptError::NoMount {
            id,
            path: opts.path.clone(),
        }
        .into());
    };
    let ro = || AdoptError::ReadOnly {
        id: id.clone(),
        host_dir: source.clone(),
        path: opts.path.clone(),
    };
    if read_only || !writable(&opts.path) {
        return Err(ro().into());
    }
    if let Some(given) = &opts.content_dir {
        if std::fs::canonicalize(given).unwrap_or_else(|_| given.clone()) != Path::new(&source) {
            return Err(AdoptError::OtherContentDir {
                id,
                given: given.clone(),
                host_dir: source,
                path: opts.path.clone(),
            }
            .into());
        }
    }
    check_identity(&id, &source, &opts.path)?;
    label(&ns_client, &id, opts, &source).await?;
    // Two creates of one name may adopt two containers at once: the one that finds
    // another holder of the name steps back.
    let holders = ns_client
        .list_by_labels(&[
            (labels::ROLE, labels::ROLE_CACHE),
            (labels::NAME, &opts.name),
        ])
        .await?;
    let elsewhere = match lookup_here(client, &opts.name).await? {
        Some(other) => other.id != id || other.namespace != ns_client.namespace(),
        None => false,
    };
    if holders.len() > 1 || elsewhere {
        let _ = unlabel(&ns_client, &id).await;
        return Err(super::create::taken(&opts.name, client.namespace()));
    }
    let c = ns_client
        .get_container(&id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("container {id} vanished while it was adopted")))?;
    Ok(Created {
        info: info(&ns_client, c).await?,
        reused: false,
        adopted: true,
        not_adopted: None,
    })
}

/// The cache named `name` in the client's own namespace, if any.
async fn lookup_here(client: &Client, name: &str) -> Result<Option<CacheInfo>> {
    let found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_CACHE), (labels::NAME, name)])
        .await?;
    Ok(found
        .into_iter()
        .next()
        .map(|c| info_from_labels(client.namespace(), &c)))
}

/// containerd binds `source` (a host path); nestcache writes at `path`: they must be one
/// directory, as nestcache sees both.
fn check_identity(id: &str, source: &str, path: &Path) -> Result<()> {
    let key = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
    let seen = match (key(Path::new(source)), key(path)) {
        (Ok(a), Ok(b)) if a == b => return Ok(()),
        (Ok(_), Ok(_)) => "another directory".to_string(),
        (Err(e), _) => format!("nothing ({e})"),
        (_, Err(e)) => return Err(Error::io(format!("stat {}", path.display()), e)),
    };
    Err(AdoptError::PathIdentity {
        id: id.to_string(),
        host_dir: source.to_string(),
        path: path.to_path_buf(),
        seen,
    }
    .into())
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path; access(2) only reads it.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

async fn label(client: &Client, id: &str, opts: &CreateOptions, source: &str) -> Result<()> {
    let path = path_str(&opts.path)?;
    let expires = opts.ttl.map(|t| rfc3339(SystemTime::now() + t));
    let mut set = vec![
        (labels::ROLE, labels::ROLE_CACHE),
        (labels::NAME, opts.name.as_str()),
        (labels::PATH, path),
        (labels::CONTENT_DIR, source),
        (labels::CONTENT_DIR_OWNED, "false"),
        (labels::ADOPTED, "true"),
    ];
    if let Some(e) = &expires {
        set.push((labels::EXPIRES, e));
    }
    client
        .update_labels(id, &set)
        .await
        .map_err(|e| {
            AdoptError::Label {
                id: id.to_string(),
                namespace: client.namespace().to_string(),
                message: e.to_string(),
            }
            .into()
        })
        .map(|_| ())
}

/// Every label a cache may carry, cleared: the container is as it was before adoption.
pub(super) async fn unlabel(client: &Client, id: &str) -> Result<()> {
    let clear: Vec<(&str, &str)> = [
        labels::ROLE,
        labels::NAME,
        labels::PATH,
        labels::CONTENT_DIR,
        labels::CONTENT_DIR_OWNED,
        labels::CONTENT_DIR_CREATED,
        labels::EXPIRES,
        labels::ADOPTED,
    ]
    .into_iter()
    .map(|k| (k, ""))
    .collect();
    client.update_labels(id, &clear).await.map(|_| ())
}
