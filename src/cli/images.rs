use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::stage::Target;
use super::Globals;

#[derive(Debug, Subcommand)]
pub enum ImagesCmd {
    /// List images (ref, digest, size, layers, platform)
    Ls(LsArgs),
    /// Remove a ref
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub reference: String,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(_g: &Globals, _c: ImagesCmd) -> anyhow::Result<ExitCode> {
    super::not_yet("images")
}
