use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use nestcache::image::PlatformSpec;
use nestcache::signals::{self, Signals};
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

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_with_units() {
        assert_eq!(super::parse_size("32GiB"), Ok(32 << 30));
        assert_eq!(super::parse_size("500M"), Ok(500 << 20));
        assert_eq!(super::parse_size("1000"), Ok(1000));
        assert!(super::parse_size("12 parsecs").is_err());
        assert!(super::parse_size("-1").is_err());
        assert!(super::parse_size("99999999999T").is_err());
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
    /// Refuse a layer whose descriptor declares more bytes than this (e.g. 32GiB, 500MiB, 1000000)
    #[arg(long, env = "NESTCACHE_MAX_LAYER_SIZE", value_parser = parse_size, default_value = "32GiB")]
    pub max_layer_size: u64,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// A byte count: a number, optionally with a binary unit (KiB, MiB, GiB, TiB; K/M/G/T).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number, optionally with KiB/MiB/GiB/TiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        u => {
            return Err(format!(
                "{s:?}: unknown unit {u:?} (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
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
    /// Longest a manifest or token fetch may take in all (retries and redirects included)
    #[arg(long, env = "NESTCACHE_REGISTRY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub registry_timeout: Duration,
    /// A blob download must average --registry-min-rate over every window this long; also the longest wait for any read or for an answer's headers
    #[arg(long, env = "NESTCACHE_REGISTRY_STALL_WINDOW", value_parser = humantime::parse_duration, default_value = "30s")]
    pub registry_stall_window: Duration,
    /// Bytes per second a blob download must average over each stall window
    #[arg(long, env = "NESTCACHE_REGISTRY_MIN_RATE", default_value_t = 1024)]
    pub registry_min_rate: u64,
}

impl RegistryArgs {
    pub fn source_options(&self) -> source::SourceOptions {
        source::SourceOptions {
            creds: self.creds.clone(),
            authfile: self.authfile.clone(),
            tls_ca: self.tls_ca.clone(),
            insecure: self.insecure,
            deadlines: source::registry::Deadlines {
                document: self.registry_timeout,
                stall_window: self.registry_stall_window,
                min_rate: self.registry_min_rate,
                ..Default::default()
            },
            registries: super::config::loaded().registry_settings(),
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
        progress: !a.json && !g.quiet,
        max_layer_size: Some(a.max_layer_size),
        ..Default::default()
    };
    let spec = a.source.clone();
    let source_opts = a.registry.source_options();
    // A signal no longer kills the process: the temp files go first (below).
    let mut signals = Signals::install()?;
    let work = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        // The source first: a bad source must not leave a new empty store behind.
        let src = source::parse_with(&spec, &source_opts)?;
        let store = if is_cache {
            Store::open_content_dir(&dir)?
        } else {
            Store::open(&dir)?
        };
        Ok(stage::stage(&store, src.as_ref(), &opts)?)
    });
    let report = tokio::select! {
        r = work => r.context("stage worker")??,
        sig = signals.recv() => {
            // The worker is still writing: its temp files go now, and the process with it.
            let n = nestcache::store::temp::remove_live();
            eprintln!(
                "nestcache: stage interrupted by {}: removed {n} temp files; nothing was half-written",
                signals::name(sig)
            );
            std::process::exit(signals::exit_code(sig));
        }
    };
    if a.json {
        super::print_json(&report)?;
    } else {
        let reused = report.layers.iter().filter(|l| l.reused).count();
        println!(
            "staged {} ({}, {}) into {}: {} layers ({} reused), {} written, {} reused, {:.2}s",
            report.reference,
            report.manifest_digest,
            report.platform,
            report.store,
            report.layers.len(),
            reused,
            super::output::human_size(report.bytes_written),
            super::output::human_size(report.bytes_reused),
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
