//! `volume create|ls|inspect|rm`: named volumes in the state dir.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use nestcache::layout::StateLayout;
use nestcache::nested::volumes;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a named volume (nothing happens if it exists)
    Create(NameArgs),
    /// List named volumes and the nested containers using them
    Ls(LsArgs),
    /// Show named volumes as JSON
    Inspect(NamesArgs),
    /// Remove named volumes and their content (refused while in use)
    Rm(NamesArgs),
}

#[derive(Debug, Args)]
pub struct NameArgs {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[arg(long)]
    pub json: bool,
    /// Names only
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

pub async fn run(g: &Globals, c: VolumeCmd) -> anyhow::Result<ExitCode> {
    let state = StateLayout::new(&g.state_dir);
    match c {
        VolumeCmd::Create(a) => {
            volumes::ensure(&state, &a.name)?;
            println!("{}", a.name);
        }
        VolumeCmd::Ls(a) => {
            let client = super::connect(g).await?;
            let list = volumes::list(&client, &state).await?;
            if a.json {
                super::print_json(&list)?;
            } else if a.quiet {
                list.iter().for_each(|v| println!("{}", v.name));
            } else {
                println!("{:<24} {:<20} MOUNTPOINT", "NAME", "USED BY");
                for v in list {
                    let used = if v.used_by.is_empty() {
                        "-".into()
                    } else {
                        v.used_by.join(",")
                    };
                    println!("{:<24} {:<20} {}", v.name, used, v.mountpoint.display());
                }
            }
        }
        VolumeCmd::Inspect(a) => {
            let client = super::connect(g).await?;
            let mut out = Vec::new();
            for n in &a.names {
                out.push(volumes::inspect(&client, &state, n).await?);
            }
            super::print_json(&out)?;
        }
        VolumeCmd::Rm(a) => {
            let client = super::connect(g).await?;
            for n in &a.names {
                volumes::remove(&client, &state, n).await?;
                println!("{n}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
