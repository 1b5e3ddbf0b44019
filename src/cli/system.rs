use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Report the embedded containerd
    Status(JsonArg),
    /// Stop the embedded containerd
    Stop(JsonArg),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_g: &Globals, _c: SystemCmd) -> anyhow::Result<ExitCode> {
    super::not_yet("system")
}
