//! The nested container: runtime spec from the image config, user resolution, the run
//! flow on containerd, mount verification, and ps/stop/rm/logs.
//!
//! - [`spec`]: the OCI runtime spec (containerd's defaults + image config + flags).
//! - [`user`]: `USER[:GROUP]` through the image's /etc/passwd and /etc/group.
//! - [`image`]: the image in the cache's store, staged and extracted if need be.
//! - [`network`]: the container's network planned, attached and reaped.
//! - [`run`]: the run flow; [`verify`]: mount verification; [`manage`]: ps/stop/rm/logs,
//!   kill, wait.
//! - [`exec`]: another process in a running container; [`inspect`]: the state scripts
//!   read; [`procs`]: top and stats from /proc and the cgroup; [`rootpath`]: paths inside
//!   a container's root, never escaping it.

pub mod copy;
pub mod exec;
pub mod exec_error;
pub mod filter;
pub mod image;
pub mod init;
pub mod inspect;
pub mod logs;
pub mod manage;
pub mod network;
pub mod procs;
pub mod rootpath;
pub mod run;
pub mod spec;
pub mod system;
pub mod verify;
pub mod volumes;
pub mod watch;

mod cleanup;
mod forward;
mod phases;
mod reap;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cache::CacheInfo;
use crate::containerd::Client;
use crate::error::{IoContext, Result};
use crate::labels;
use crate::layout::StateLayout;
use crate::process::ProcessStamp;
use crate::store::{LeaseHolder, Store};

pub use manage::NestedInfo;
pub use reap::reap_orphans;
pub use run::{run, Notice, RunOptions, RunReport};

/// Which runtime runs the nested container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's runc shim, with the overlay rootfs in the task-create request.
    Runc,
    /// nestcache's shim, which assembles the rootfs from the store itself.
    Shim,
}

impl Runtime {
    pub fn containerd_name(self) -> &'static str {
        match self {
            Runtime::Runc => labels::DEFAULT_RUNTIME,
            Runtime::Shim => labels::NESTCACHE_RUNTIME,
        }
    }
}

impl std::str::FromStr for Runtime {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "runc" => Ok(Runtime::Runc),
            "shim" => Ok(Runtime::Shim),
            other => Err(crate::Error::Invalid(format!(
                "invalid --runtime {other:?}: expected runc or shim"
            ))),
        }
    }
}

/// A detached container's JSON log (see [`logs`]), beside the raw `log`.
pub const JSON_LOG: &str = "log.json";

/// A detached task's output: through nestcache's log driver (streams apart, timestamps),
/// started as containerd's `binary://` logging program by either shim (containerd's runc
/// shim, nestcache's); a raw file when this process is not the nestcache binary.
pub fn detached_stdio(paths: &ContainerPaths) -> crate::containerd::io::Stdio {
    use crate::containerd::io::Stdio;
    let driver = std::env::current_exe().ok().filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("nestcache"))
    });
    match driver {
        Some(exe) => Stdio::log_binary(&exe, &paths.dir.join(JSON_LOG)),
        None => Stdio::log_file(&paths.log),
    }
}

/// Where one nested container's files live.
#[derive(Debug, Clone)]
pub struct ContainerPaths {
    /// `<state>/containers/<id>`: overlay links, upper, work, FIFOs, log.
    pub dir: PathBuf,
    pub log: PathBuf,
    /// The state dir, where the container's network (if any) is kept.
    pub state_root: PathBuf,
}

impl ContainerPaths {
    pub fn new(state: &StateLayout, id: &str) -> Self {
        ContainerPaths {
            dir: state.container_dir(id),
            log: state.container_log_file(id),
            state_root: state.root().to_path_buf(),
        }
    }
}

/// `nested-` and 12 random hex digits.
fn generate_id() -> Result<String> {
    let hex = crate::fsutil::random_hex(6).ctx(|| "read /dev/urandom".into())?;
    Ok(format!("nested-{hex}"))
}

/// The store lease a nested container started by the CLI holds: id and holder.
pub fn cli_lease(client: &Client, id: &str) -> image::LeaseFor {
    let holder = LeaseHolder::new(client.address(), client.namespace(), id);
    (holder.lease_id("cli"), holder)
}

/// Ends container `id`'s CLI lease in the store at `content_dir` (a missing store or
/// lease is fine: there is nothing left to keep).
fn release_lease(client: &Client, id: &str, content_dir: &Path) -> Result<()> {
    if content_dir.as_os_str().is_empty() {
        return Ok(());
    }
    let store = match Store::open_existing(content_dir) {
        Ok(s) => s,
        Err(crate::Error::Store(crate::store::StoreError::NoStore { .. })) => return Ok(()),
        Err(e) => return Err(e),
    };
    store.release_lease(&cli_lease(client, id).0)?;
    Ok(())
}

/// The labels of a nested container.
fn labels_for(
    cache: &CacheInfo,
    image_ref: &str,
    image: &image::PreparedImage,
    opts: &run::RunOptions,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = [
        (labels::ROLE, labels::ROLE_NESTED.to_string()),
        (labels::NAME, cache.name.clone()),
        (labels::PATH, cache.path.to_string_lossy().into_owned()),
        (
            labels::CONTENT_DIR,
            cache.content_dir.to_string_lossy().into_owned(),
        ),
        (labels::IMAGE, image_ref.to_string()),
        (labels::MANIFEST, image.manifest_digest.to_string()),
        (labels::MOUNT_CACHE, opts.mount_cache.to_string()),
        (labels::RM, opts.rm.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // A foreground run is waited for by this process, a `-d --rm` one by its watcher
    // (which takes this label over); the reaper needs to know when nobody waits any more.
    if let Some(me) = ProcessStamp::current().filter(|_| !opts.detach || opts.rm) {
        labels.insert(labels::OWNER.to_string(), me.to_label());
    }
    labels
}
