use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use nestcache::image::PlatformSpec;
use nestcache::source;
use nestcache::stage::{self, StageOptions};
use nestcache::store::Store;

use super::Globals;

/// Where a store command acts: a cache's content dir or a plain directory.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// The cache whose content dir to use
    #[arg(long)]
    pub cache: Option<String>,
    /// A plain store directory (no cache container)
    #[arg(long)]
    pub store: Option<PathBuf>,
}

impl Target {
    /// The content directory this target names.
    pub async fn dir(&self, g: &Globals) -> anyhow::Result<PathBuf> {
        match (&self.store, &self.cache) {
            (Some(dir), _) => Ok(dir.clone()),
            (None, Some(name)) => {
                let client = super::connect(g).await?;
                Ok(nestcache::cache::find(&client, name).await?.content_dir)
            }
            (None, None) => anyhow::bail!("pass --cache NAME or --store DIR"),
        }
    }

    /// Opens the target's existing store.
    /// Opens the target's existing store. A cache's content dir is a store from the
    /// start (empty until something is staged), so it is initialised rather than refused.
    pub async fn open_existing(&self, g: &Globals) -> anyhow::Result<Store> {
        let dir = self.dir(g).await?;
        if self.cache.is_some() {
            return Ok(Store::open_content_dir(&dir)?);
        }
        Ok(Store::open_existing(&dir)?)
    }
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF], docker://HOST/REPO[:TAG|@DIGEST], or a bare path
    pub source: String,
    #[command(flatten)]
    pub target: Target,
    /// Ref name to record in index.json
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// os/arch[/variant] (default: the host's)
    #[arg(long)]
    pub platform: Option<String>,
    /// Re-hash blobs already present instead of trusting them
    #[arg(long)]
    pub verify_existing: bool,
    /// Only write blobs; do not extract layers
    #[arg(long)]
    pub no_unpack: bool,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// docker:// source options (registry engineer).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry credentials USER:PASS (never printed)
    #[arg(long, env = "NESTCACHE_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// Auth file with {"auths": {HOST: {"auth": base64(USER:PASS)}}} (default: containers' auth.json, then ~/.docker/config.json)
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the registry's TLS
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Talk plain http to the registry (loopback test registries)
    #[arg(long)]
    pub insecure: bool,
}

impl RegistryArgs {
    pub fn source_options(&self) -> source::SourceOptions {
        source::SourceOptions {
            creds: self.creds.clone(),
            authfile: self.authfile.clone(),
            tls_ca: self.tls_ca.clone(),
            insecure: self.insecure,
        }
    }
}

pub async fn run(g: &Globals, a: StageArgs) -> anyhow::Result<ExitCode> {
    let platform = a
        .platform
        .as_deref()
        .map(str::parse::<PlatformSpec>)
        .transpose()?;
    let dir = a.target.dir(g).await?;
    let is_cache = a.target.cache.is_some();
    let opts = StageOptions {
        reference: a.reference.clone(),
        platform,
        verify_existing: a.verify_existing,
        no_unpack: a.no_unpack,
        progress: !a.json,
        ..Default::default()
    };
    let spec = a.source.clone();
    let source_opts = a.registry.source_options();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // The source first: a bad source must not leave a new empty store behind.
        let src = source::parse_with(&spec, &source_opts)?;
        let store = if is_cache {
            Store::open_content_dir(&dir)?
        } else {
            Store::open(&dir)?
        };
        Ok(stage::stage(&store, src.as_ref(), &opts)?)
    })
    .await
    .context("stage worker")??;
    if a.json {
        super::print_json(&report)?;
    } else {
        let reused = report.layers.iter().filter(|l| l.reused).count();
        println!(
            "staged {} ({}, {}) into {}: {} layers ({} reused), {} bytes written, {} reused, {:.2}s",
            report.reference,
            report.manifest_digest,
            report.platform,
            report.store,
            report.layers.len(),
            reused,
            report.bytes_written,
            report.bytes_reused,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
