use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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
}

pub async fn run(_g: &Globals, _a: StageArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("stage")
}
