//! The image a nested container runs: resolved in the cache's store (staged into it first
//! with `--stage`), its layers extracted, its user database read from those layers.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::PlatformSpec;
use crate::rootfs::{self, LayerStack};
use crate::source::SourceOptions;
use crate::stage::{stage, StageOptions};
use crate::store::{LeaseHolder, Store};
use crate::unpack::Limits;
use crate::user::UserDb;

/// /etc/passwd or /etc/group larger than this is refused (a hostile image's bomb).
const USER_DB_LIMIT: u64 = 4 << 20;

/// What `run` needs of the image.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub manifest_digest: Digest,
    /// The config's `config` section (Entrypoint, Cmd, Env, WorkingDir, User).
    pub config: Option<oci_spec::image::Config>,
    pub users: UserDb,
    /// Extracted layer dirs, bottom → top.
    pub layer_dirs: Vec<PathBuf>,
    /// The platform its config names.
    pub platform: PlatformSpec,
}

/// The lease a prepared image is taken under: its id and holder.
pub type LeaseFor = (String, LeaseHolder);

/// Where the image comes from and which of it: its name in the store, `--stage` and its
/// registry options, `--pull`, `--platform`.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    pub image: String,
    pub stage: Option<(String, SourceOptions)>,
    pub pull: Pull,
    /// `--platform`: the one to pick from an index, and a single-platform image of another
    /// is refused. None: the host's from an index, and any single-platform image.
    pub platform: Option<PlatformSpec>,
}

/// Resolves the requested image in the store at `content_dir` (staging it first), extracts
/// what is not extracted yet, reads the image's /etc/passwd and /etc/group, and leases the
/// manifest to `lease` before gc may run again (the caller releases it on failure).
pub async fn prepare(
    content_dir: &Path,
    request: &ImageRequest,
    lease: &LeaseFor,
) -> Result<PreparedImage> {
    let content_dir = content_dir.to_path_buf();
    let request = request.clone();
    let lease = lease.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&content_dir, &request, &lease))
        .await
        .map_err(|e| Error::Other(format!("preparing the image failed: {e}")))?
}

/// `--pull`: when `--stage SOURCE` is staged, as Docker's `--pull` decides when to pull.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pull {
    /// Stage only when IMAGE is not in the store yet (Docker's default).
    #[default]
    Missing,
    /// Stage every time (the source may have changed).
    Always,
    /// Never stage: IMAGE must be in the store.
    Never,
}

impl std::str::FromStr for Pull {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "missing" => Ok(Pull::Missing),
            "always" => Ok(Pull::Always),
            "never" => Ok(Pull::Never),
            other => Err(Error::Invalid(format!(
                "invalid --pull {other:?}: expected missing, always or never"
            ))),
        }
    }
}

fn prepare_blocking(
    content_dir: &Path,
    request: &ImageRequest,
    (lease_id, holder): &LeaseFor,
) -> Result<PreparedImage> {
    let ImageRequest {
        image,
        stage,
        pull,
        platform,
    } = request;
    let pull = *pull;
    let platform = platform.as_ref();
    let stage = stage.as_ref().filter(|_| pull != Pull::Never);
    let store = match stage {
        Some(_) => Store::open(content_dir)?,
        None => Store::open_existing(content_dir)?,
    };
    if let Some((source, source_options)) = stage {
        if pull == Pull::Always || store.resolve(image, platform).is_err() {
            stage_into(&store, source, source_options, image, platform)?;
        }
    }
    // From resolving to leasing, gc waits: what we resolve and extract is what we lease.
    let _gc = store.writer_lock()?;
    let resolved = store.resolve(image, platform).map_err(|e| match e {
        Error::Store(e) if e.is_not_found() => Error::NotFound(format!(
            "{e}; stage the image first (`nestcache stage` or `nestcache run --stage SOURCE`)"
        )),
        // Named as the user named it, not by its manifest digest.
        Error::PlatformMismatch { wanted, actual, .. } => Error::PlatformMismatch {
            image: image.clone(),
            wanted,
            actual,
        },
        other => other,
    })?;
    crate::unpack::ensure_unpacked(&store, &resolved, &Limits::default())?;
    // Re-derive the dirs through the shared lookup, which refuses anything missing.
    let layer_dirs = rootfs::layer_dirs(&store, &resolved)?;
    store.acquire_lease(lease_id, &resolved.manifest_digest, holder)?;
    let stack = LayerStack::new(layer_dirs.clone());
    let read = |p: &str| -> Result<Option<String>> {
        Ok(stack
            .read_file(p, USER_DB_LIMIT)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    Ok(PreparedImage {
        manifest_digest: resolved.manifest_digest.clone(),
        config: resolved.config.config().clone(),
        users: UserDb {
            passwd: read("/etc/passwd")?,
            group: read("/etc/group")?,
        },
        layer_dirs,
        platform: resolved.platform.clone(),
    })
}

/// `--stage SOURCE`: stages SOURCE, recorded under the name IMAGE (unless IMAGE is a
/// digest: then under the source's own ref).
fn stage_into(
    store: &Store,
    source: &str,
    opts: &SourceOptions,
    image: &str,
    platform: Option<&PlatformSpec>,
) -> Result<()> {
    let src = crate::source::parse_with(source, opts)?;
    let opts = StageOptions {
        reference: image.parse::<Digest>().is_err().then(|| image.to_string()),
        platform: platform.cloned(),
        progress: std::io::stderr().is_terminal(),
        ..Default::default()
    };
    stage(store, src.as_ref(), &opts)?;
    Ok(())
}
