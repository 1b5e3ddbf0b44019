use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::stage::Target;
use super::Globals;

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Re-hash every blob; report corrupt or missing ones
    Check(CheckArgs),
    /// Remove unreferenced blobs, layers and stale ingest files
    Gc(CheckArgs),
    /// Extract the layers of an image already staged
    Unpack(UnpackArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    pub reference: String,
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_g: &Globals, _c: StoreCmd) -> anyhow::Result<ExitCode> {
    super::not_yet("store")
}
