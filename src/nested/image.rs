//! The image a nested container runs: resolved in the cache's store (staged into it first
//! with `--stage`), its layers extracted, its user database read from those layers.

use std::path::{Path, PathBuf};

use super::user::UserDb;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// /etc/passwd or /etc/group larger than this is refused (a hostile image's bomb).
#[allow(dead_code)]
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
}

/// Resolves `image` in the store at `content_dir` (staging `stage` first), extracts what
/// is not extracted yet, and reads the image's /etc/passwd and /etc/group.
pub async fn prepare(
    content_dir: &Path,
    image: &str,
    stage: Option<&str>,
) -> Result<PreparedImage> {
    let content_dir = content_dir.to_path_buf();
    let image = image.to_string();
    let stage = stage.map(str::to_string);
    tokio::task::spawn_blocking(move || prepare_blocking(&content_dir, &image, stage.as_deref()))
        .await
        .map_err(|e| Error::Other(format!("preparing the image failed: {e}")))?
}

fn prepare_blocking(
    _content_dir: &Path,
    _image: &str,
    _stage: Option<&str>,
) -> Result<PreparedImage> {
    Err(Error::Other(
        "nestcache run needs the content store (issue 3), which has not landed yet".into(),
    ))
}
