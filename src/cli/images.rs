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
    /// Give an image another ref (as `docker tag`; SRC in any spelling, or a digest)
    Tag(TagArgs),
}

#[derive(Debug, Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
    #[command(flatten)]
    pub target_store: Target,
    #[arg(long)]
    pub json: bool,
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

pub async fn run(g: &Globals, c: ImagesCmd) -> anyhow::Result<ExitCode> {
    match c {
        ImagesCmd::Ls(a) => {
            let store = a.target.open_existing(g).await?;
            let images = store.list_images()?;
            if a.json {
                super::print_json(&images)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<40} {:<19} {:>12} {:>6}  PLATFORM",
                "REF", "DIGEST", "SIZE", "LAYERS"
            );
            for i in &images {
                let digest = i.digest.get(..19).unwrap_or(&i.digest);
                match &i.error {
                    None => println!(
                        "{:<40} {:<19} {:>12} {:>6}  {}",
                        i.reference,
                        digest,
                        super::output::human_size(i.size),
                        i.layers,
                        i.platform.as_deref().unwrap_or("-")
                    ),
                    Some(e) => println!("{:<40} {:<19} error: {e}", i.reference, digest),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ImagesCmd::Tag(a) => {
            let store = a.target_store.open_existing(g).await?;
            let d = store.tag(&a.source, &a.target)?;
            if a.json {
                super::print_json(
                    &serde_json::json!({"ref": a.target, "digest": d.digest().to_string()}),
                )?;
            } else {
                println!("{} -> {}", a.target, d.digest());
            }
            Ok(ExitCode::SUCCESS)
        }
        ImagesCmd::Rm(a) => {
            let store = a.target.open_existing(g).await?;
            let removed = store.remove_ref(&a.reference)?;
            println!(
                "removed {} ({}); run `nestcache store gc` to free its blobs",
                a.reference,
                removed.digest()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
