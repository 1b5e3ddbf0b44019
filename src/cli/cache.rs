use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Create a cache container exposing a host content dir at PATH
    Create(CreateArgs),
    /// Show one cache
    Inspect(NameJson),
    /// List caches
    Ls(JsonOnly),
    /// Stop and delete a cache
    Rm(RmArgs),
    /// Delete expired and half-created caches
    Gc(JsonOnly),
    /// Extend a cache's TTL
    Touch(TouchArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    /// Target path inside the cache container (and nested containers)
    #[arg(long)]
    pub path: PathBuf,
    /// Host content directory (default: <state-dir>/caches/NAME)
    #[arg(long)]
    pub content_dir: Option<PathBuf>,
    /// Time to live, e.g. 30m, 2h
    #[arg(long)]
    pub ttl: Option<String>,
    /// Reuse an existing cache of that name if its path matches
    #[arg(long)]
    pub reuse: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NameJson {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonOnly {
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub name: String,
    /// Keep the content dir
    #[arg(long)]
    pub keep_content: bool,
    /// Also remove a user-supplied --content-dir
    #[arg(long)]
    pub remove_content_dir: bool,
}

#[derive(Debug, Args)]
pub struct TouchArgs {
    pub name: String,
    #[arg(long)]
    pub ttl: String,
}

pub async fn run(_g: &Globals, _c: CacheCmd) -> anyhow::Result<ExitCode> {
    super::not_yet("cache")
}
