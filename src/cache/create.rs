//! Creating a cache: claim the name with the container record, start the keeper on a
//! tmpfs rootfs, and prove path identity with the nonce handshake; on any failure or
//! interruption undo all of it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::containerd::{Client, Mount, NewContainer, NewTask};
use crate::error::IoContext;
use crate::labels;
use crate::layout::{ContentLayout, StateLayout};
use crate::{Error, Result};

use super::remove::remove_meta;
use super::ttl::{check_ttl, deadline_secs};
use super::*;

/// How long the keeper may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// Creates cache `opts.name` and waits until its keeper has proven that it sees the
/// content dir nestcache sees. On any failure nothing of it is left behind.
pub async fn create(client: &Client, state: &StateLayout, opts: &CreateOptions) -> Result<Created> {
    validate_name(&opts.name)?;
    validate_path(&opts.path)?;
    if let Some(ttl) = opts.ttl {
        check_ttl(ttl)?;
    }
    let mut content_dir = opts.content_dir.clone();
    if let Some(existing) = lookup(client, &opts.name).await? {
        // A dead cache recreated by --reuse keeps the user's content dir it had.
        let prior = (!existing.content_dir_owned).then(|| existing.content_dir.clone());
        if let Some(reused) = reuse(client, opts, existing).await? {
            return Ok(reused);
        }
        content_dir = content_dir.or(prior);
    }
    // The container nestcache runs in is the cache when it can be (claim 7).
    let not_adopted = match opts.adopt {
        AdoptMode::Never => None,
        mode => match super::adopt::adopt(client, opts).await {
            Ok(created) => return Ok(created),
            Err(Error::Adopt(e)) if mode == AdoptMode::Auto && e.allows_fallback() => {
                tracing::info!("cache {}: not adopting this container: {e}", opts.name);
                Some(e.to_string())
            }
            Err(e) => return Err(e),
        },
    };
    // From here on SIGINT / SIGTERM / SIGHUP no longer kill the process: they make create undo
    // what it did and fail, so that an interrupted create leaves nothing behind.
    let mut signals = crate::signals::Signals::install()?;
    let dir = ContentDir::prepare(state, &opts.name, content_dir.as_deref())?;
    let keeper = keeper::install(state)?;
    let id = container_id(&opts.name);
    let expires_at = opts.ttl.map(|t| SystemTime::now() + t);
    let nonce = nonce()?;
    let spec = spec::keeper_spec(&spec::KeeperSpec {
        namespace: client.namespace(),
        container_id: &id,
        name: &opts.name,
        keeper_binary: &keeper,
        content_dir: &dir.path,
        target_path: &opts.path,
        nonce: &nonce,
    })?;
    let mut lbls: HashMap<String, String> = [
        (labels::ROLE, labels::ROLE_CACHE.to_string()),
        (labels::NAME, opts.name.clone()),
        (labels::PATH, path_str(&opts.path)?.to_string()),
        (labels::CONTENT_DIR, path_str(&dir.path)?.to_string()),
        (labels::CONTENT_DIR_OWNED, dir.owned.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(top) = &dir.created_top {
        lbls.insert(
            labels::CONTENT_DIR_CREATED.to_string(),
            path_str(top)?.to_string(),
        );
    }
    if let Some(e) = expires_at {
        lbls.insert(labels::EXPIRES.to_string(), rfc3339(e));
    }
    // The container record claims the name: of two concurrent creates, one gets
    // AlreadyExists here, before touching anything the other one uses.
    let created = client
        .create_container(NewContainer {
            id: id.clone(),
            labels: lbls,
            spec,
            // The keeper needs nothing but runc, whatever runtime the client defaults to.
            runtime: Some(labels::DEFAULT_RUNTIME.to_string()),
            runtime_options: None,
        })
        .await;
    if let Err(e) = created {
        // Lost a race with a concurrent create of the same name? Then the content dir may
        // be the winner's: leave it.
        if client.get_container(&id).await.is_ok_and(|c| c.is_some()) {
            return Err(taken(&opts.name, client.namespace()));
        }
        dir.undo();
        return Err(e);
    }
    let layout = ContentLayout::new(&dir.path);
    let meta = layout.cache_meta_dir(&opts.name);
    let started = tokio::select! {
        r = start(client, &id, opts, &meta, &nonce, expires_at, &dir.path) => r,
        e = signals.interrupted(format!("cache {:?} (deleted again)", opts.name)) => Err(e),
    };
    match started {
        Ok(()) => {
            let info = find(client, &opts.name).await?;
            Ok(Created {
                info,
                reused: false,
                adopted: false,
                not_adopted,
            })
        }
        Err(e) => {
            let _ = client.stop_and_delete_task(&id, STOP_GRACE).await;
            let _ = client.delete_container(&id).await;
            remove_meta(&layout, &opts.name);
            dir.undo();
            Err(e)
        }
    }
}

pub(super) fn taken(name: &str, namespace: &str) -> Error {
    Error::Invalid(format!(
        "cache name {name:?} is taken in namespace {namespace}: remove it with `nestcache cache rm {name}`, pick another name, or pass --reuse with the same --path"
    ))
}

/// `--reuse`: a running cache with the same path is returned as is; a half-dead one is
/// removed (keeping its content) so that it is created anew. Anything else is an error.
async fn reuse(
    client: &Client,
    opts: &CreateOptions,
    existing: CacheInfo,
) -> Result<Option<Created>> {
    if !opts.reuse {
        return Err(taken(&opts.name, client.namespace()));
    }
    if existing.path != opts.path {
        return Err(Error::Invalid(format!(
            "cache {:?} exists with path {}, not {}: --reuse needs the same --path",
            opts.name,
            existing.path.display(),
            opts.path.display()
        )));
    }
    if let Some(want) = &opts.content_dir {
        let want_abs = fs::canonicalize(want).unwrap_or_else(|_| want.clone());
        if want_abs != existing.content_dir {
            return Err(Error::Invalid(format!(
                "cache {:?} exists with content dir {}, not {}: --reuse needs the same --content-dir",
                opts.name,
                existing.content_dir.display(),
                want.display()
            )));
        }
    }
    if existing.is_running() {
        let info = match opts.ttl {
            Some(ttl) => touch(client, &opts.name, ttl).await?,
            None => existing,
        };
        return Ok(Some(Created {
            reused: true,
            adopted: info.adopted,
            info,
            not_adopted: None,
        }));
    }
    remove(
        client,
        &existing,
        RemoveOptions {
            keep_content: true,
            remove_user_content_dir: false,
        },
    )
    .await?;
    Ok(None)
}

/// Task create, start, handshake.
async fn start(
    client: &Client,
    id: &str,
    opts: &CreateOptions,
    meta: &Path,
    nonce: &str,
    expires_at: Option<SystemTime>,
    content_dir: &Path,
) -> Result<()> {
    fs::create_dir_all(meta).ctx(|| format!("create {}", meta.display()))?;
    let ack = meta.join("ack");
    match fs::remove_file(&ack) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", ack.display()), e)),
    }
    write_atomic(&meta.join("nonce"), nonce)?;
    write_atomic(
        &meta.join("deadline"),
        &deadline_secs(expires_at).to_string(),
    )?;

    // An empty tmpfs as the rootfs: runc creates the mount points (/proc, /dev, /keeper,
    // the target path) in it, then makes it read-only; nothing is written on the host.
    let rootfs = vec![Mount {
        r#type: "tmpfs".into(),
        source: "tmpfs".into(),
        options: vec!["mode=755".into(), "size=1m".into()],
        ..Default::default()
    }];
    client
        .create_task(NewTask {
            container_id: id.to_string(),
            rootfs,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            Error::Other(format!(
                "cache {:?}: containerd could not start the cache container: {e}; \
                 if containerd runs on another host or mount namespace than nestcache, the \
                 content dir {} and the state dir must exist at the same paths for both",
                opts.name,
                content_dir.display()
            ))
        })?;
    let wait = client.wait_task(id);
    client.start_task(id).await?;

    let limit = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if fs::read_to_string(&ack).is_ok_and(|s| s.trim() == nonce) {
            break;
        }
        if wait.is_finished() {
            let exit = wait.result().await?;
            return Err(handshake_failed(opts, content_dir, meta, exit.code));
        }
        if Instant::now() > limit {
            return Err(Error::Other(format!(
                "cache {:?}: the cache container did not acknowledge the handshake within {:?} (no {} with the nonce); the cache was deleted",
                opts.name,
                HANDSHAKE_TIMEOUT,
                ack.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The handshake is done; the nonce and the ack have no further use.
    let _ = fs::remove_file(&ack);
    let _ = fs::remove_file(meta.join("nonce"));
    Ok(())
}

fn handshake_failed(opts: &CreateOptions, content_dir: &Path, meta: &Path, code: u32) -> Error {
    match code {
        keeper::EXIT_OTHER_DIR => Error::Other(format!(
            "cache {:?}: nestcache and the cache container see different directories: nestcache wrote a nonce to {} but the container did not find it under {} (containerd resolves bind mounts on its own host). Mount the host directory at the same path where nestcache runs (e.g. a hostPath volume {} mounted at {} in the pod), or pass a --content-dir that is such a mount; the cache was deleted",
            opts.name,
            meta.join("nonce").display(),
            opts.path.display(),
            content_dir.display(),
            content_dir.display(),
        )),
        keeper::EXIT_NO_ACK => Error::Other(format!(
            "cache {:?}: the cache container could not write into {} (read-only or full?); the cache was deleted",
            opts.name,
            opts.path.display()
        )),
        c => Error::Other(format!(
            "cache {:?}: the cache container exited with code {c} during the handshake; the cache was deleted",
            opts.name
        )),
    }
}

/// The content dir of a cache being created, and whether this run made it.
struct ContentDir {
    path: PathBuf,
    /// nestcache's own (default, or created because it did not exist): `rm` deletes it.
    owned: bool,
    /// Created by this very run: a failed create deletes it again.
    created_now: bool,
    /// The topmost dir this run made (the content dir or a missing parent of it).
    created_top: Option<PathBuf>,
}

impl ContentDir {
    fn prepare(state: &StateLayout, name: &str, given: Option<&Path>) -> Result<ContentDir> {
        let (dir, owned_if_exists) = match given {
            Some(d) => (d.to_path_buf(), false),
            None => (state.default_content_dir(name), true),
        };
        let mut created_top = None;
        let created_now = match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => false,
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "content dir {} exists and is not a directory",
                    dir.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let top = topmost_missing(&dir);
                fs::create_dir_all(&dir).ctx(|| format!("create content dir {}", dir.display()))?;
                created_top =
                    Some(fs::canonicalize(&top).ctx(|| format!("resolve {}", top.display()))?);
                true
            }
            Err(e) => return Err(Error::io(format!("content dir {}", dir.display()), e)),
        };
        // containerd needs an absolute bind source; resolve symlinks so that the label
        // names the real directory.
        let path = fs::canonicalize(&dir).ctx(|| format!("resolve {}", dir.display()))?;
        Ok(ContentDir {
            path,
            owned: owned_if_exists || created_now,
            created_now,
            created_top,
        })
    }

    fn undo(&self) {
        if self.created_now {
            let _ = fs::remove_dir_all(&self.path);
            if let Some(top) = &self.created_top {
                super::remove::remove_created_parents(&self.path, top);
            }
        }
    }
}

/// The highest ancestor of `dir` (or `dir`) that does not exist yet.
fn topmost_missing(dir: &Path) -> PathBuf {
    let mut top = dir.to_path_buf();
    for a in dir.ancestors().skip(1) {
        if a.as_os_str().is_empty() || fs::symlink_metadata(a).is_ok() {
            break;
        }
        top = a.to_path_buf();
    }
    top
}

fn nonce() -> Result<String> {
    crate::fsutil::random_hex(16).ctx(|| "read /dev/urandom".into())
}
