use std::process::ExitCode;

use clap::Args;

use super::Globals;

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(_g: &Globals, _a: EnvArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("env")
}
