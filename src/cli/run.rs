use std::process::ExitCode;

use clap::Args;

use super::Globals;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The cache to run from
    #[arg(long)]
    pub cache: String,
    /// Stage this source first
    #[arg(long)]
    pub stage: Option<String>,
    /// Image ref or manifest digest in the cache's store
    pub image: String,
    /// Command and arguments (replace the image's Cmd)
    #[arg(last = true)]
    pub command: Vec<String>,
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    #[arg(long)]
    pub entrypoint: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "none")]
    pub net: String,
    #[arg(long)]
    pub read_only: bool,
    #[arg(short = 'i', long)]
    pub interactive: bool,
    #[arg(short = 't', long)]
    pub tty: bool,
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub rm_cache: bool,
    #[arg(long)]
    pub no_mount_cache: bool,
    #[arg(long)]
    pub cache_rw: bool,
    /// runc (through containerd's runc shim) or shim (containerd-shim-nestcache-v2)
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    #[arg(long)]
    pub json: bool,
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub container: String,
    #[arg(long, default_value = "10s")]
    pub timeout: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub container: String,
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub container: String,
    #[arg(short = 'f', long)]
    pub follow: bool,
}

pub async fn run(_g: &Globals, _a: RunArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("run")
}
pub async fn verify(_g: &Globals, _a: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("verify")
}
pub async fn ps(_g: &Globals, _a: PsArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("ps")
}
pub async fn stop(_g: &Globals, _a: StopArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("stop")
}
pub async fn rm(_g: &Globals, _a: RmArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("rm")
}
pub async fn logs(_g: &Globals, _a: LogsArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("logs")
}
