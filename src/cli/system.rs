use std::process::ExitCode;

use clap::{Args, Subcommand};

use nestcache::env::Embedded;
use nestcache::layout::StateLayout;
use nestcache::nested::system;

use super::output::human_size;

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Report the embedded containerd
    Status(JsonArg),
    /// Stop the embedded containerd
    Stop(JsonArg),
    /// Disk usage of images (the caches' stores), nested containers and volumes
    Df(JsonArg),
    /// Remove stopped nested containers, unreferenced content (-a: unused images) and
    /// (--volumes) unused anonymous volumes; nothing in use
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove every image no container uses, not only unreferenced content
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Also remove anonymous volumes no container uses
    #[arg(long)]
    pub volumes: bool,
    /// Do not ask for confirmation
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Globals, c: SystemCmd) -> anyhow::Result<ExitCode> {
    let emb = Embedded::new(&StateLayout::new(&g.state_dir));
    match c {
        SystemCmd::Df(a) => return df(g, a).await,
        SystemCmd::Prune(a) => return prune(g, a).await,
        SystemCmd::Status(a) => {
            let s = emb.status(&g.namespace).await;
            if a.json {
                super::print_json(&s)?;
            } else {
                match s.pid {
                    Some(pid) => println!(
                        "embedded containerd: running, pid {pid}, {} at {}",
                        if s.answering {
                            format!(
                                "answering (containerd {})",
                                s.version.as_deref().unwrap_or("?")
                            )
                        } else {
                            "NOT answering".to_string()
                        },
                        s.socket.display()
                    ),
                    None => println!("embedded containerd: not running ({})", s.dir.display()),
                }
                println!("config: {}", s.config.display());
                println!("log:    {}", s.log.display());
            }
        }
        SystemCmd::Stop(a) => {
            let s = emb.stop()?;
            if a.json {
                super::print_json(&s)?;
            } else if let Some(pid) = s.pid {
                println!(
                    "stopped the embedded containerd (pid {pid}{}); cache tasks it runs keep running, and it picks them up when it starts again",
                    if s.killed { ", killed after the grace period" } else { "" }
                );
            } else {
                println!("the embedded containerd was not running");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `system df`: Docker's table (TYPE TOTAL ACTIVE SIZE RECLAIMABLE), or its rows as JSON.
async fn df(g: &Globals, a: JsonArg) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let rows = system::disk_usage(&client, &StateLayout::new(&g.state_dir)).await?;
    if a.json {
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}{:<10}{:<10}{:<10}RECLAIMABLE",
        "TYPE", "TOTAL", "ACTIVE", "SIZE"
    );
    for r in rows {
        let share = match r.size {
            0 => String::new(),
            s => format!(" ({}%)", r.reclaimable * 100 / s),
        };
        println!(
            "{:<16}{:<10}{:<10}{:<10}{}{share}",
            r.kind,
            r.total,
            r.active,
            human_size(r.size),
            human_size(r.reclaimable)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `system prune`: asks first (Docker's warning) unless `-f`.
async fn prune(g: &Globals, a: PruneArgs) -> anyhow::Result<ExitCode> {
    if !a.force {
        let mut what = vec!["  - all stopped nested containers"];
        if a.volumes {
            what.push("  - all anonymous volumes not used by at least one container");
        }
        what.push(if a.all {
            "  - all images without at least one container associated to them"
        } else {
            "  - all content no image ref or container reaches"
        });
        eprintln!(
            "WARNING! This will remove:\n{}\n\nAre you sure you want to continue? [y/N] ",
            what.join("\n")
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            // Docker's answer to "no": nothing done, exit 0.
            return Ok(ExitCode::SUCCESS);
        }
    }
    let client = super::connect(g).await?;
    let opts = system::PruneOptions {
        all_images: a.all,
        volumes: a.volumes,
    };
    let r = system::prune(&client, &StateLayout::new(&g.state_dir), opts).await?;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    for (title, list) in [
        ("Deleted Containers:", &r.containers_deleted),
        ("Deleted Images:", &r.images_deleted),
        ("Deleted Volumes:", &r.volumes_deleted),
    ] {
        if !list.is_empty() {
            println!("{title}\n{}\n", list.join("\n"));
        }
    }
    println!("Total reclaimed space: {}", human_size(r.space_reclaimed));
    Ok(ExitCode::SUCCESS)
}
