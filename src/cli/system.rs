use std::process::ExitCode;

use clap::{Args, Subcommand};

use nestcache::env::Embedded;
use nestcache::layout::StateLayout;

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

pub async fn run(g: &Globals, c: SystemCmd) -> anyhow::Result<ExitCode> {
    let emb = Embedded::new(&StateLayout::new(&g.state_dir));
    match c {
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
