use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use nestcache::node::{self, Layout, NodeOptions};

use super::Globals;

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Install the shim and nestcache, add the runtime to containerd's config, label the node
    Install(InstallArgs),
    /// Undo install: label, runtime entry, binaries (the store stays unless --remove-store)
    Uninstall(UninstallArgs),
    /// What is installed on this node
    Status(NodeArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Where the node's root is mounted (the DaemonSet mounts it at /host)
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// containerd's config file (a host path)
    #[arg(long, default_value = node::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Where the binaries go (a host path on containerd's PATH)
    #[arg(long, default_value = node::DEFAULT_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// The node's store (a host path; pods name it in io.nestcache.store)
    #[arg(long, default_value = node::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Config version for a config file created from nothing (2: containerd 1.x, 3: 2.x)
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    pub config_version: u8,
    /// Command that restarts containerd, split on spaces
    #[arg(long, default_value = "systemctl restart containerd")]
    pub restart_command: String,
    /// Never restart containerd (print that it must be restarted instead)
    #[arg(long)]
    pub no_restart: bool,
    /// Label (and on uninstall unlabel) this node through the API server
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The shim binary to install (default: beside this nestcache)
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// After installing, stay and run `store gc` on the node's store at this interval
    /// (the DaemonSet does; ends on SIGTERM)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub gc_every: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Remove the store too (every image staged on this node)
    #[arg(long)]
    pub remove_store: bool,
    /// After uninstalling, stay until SIGTERM (a DaemonSet's container must not exit)
    #[arg(long)]
    pub stay: bool,
}

fn options(a: &NodeArgs, shim: Option<PathBuf>) -> anyhow::Result<NodeOptions> {
    let cli_source = std::env::current_exe().context("path of this nestcache binary")?;
    let shim_source = shim.unwrap_or_else(|| cli_source.with_file_name(node::SHIM_BINARY));
    Ok(NodeOptions {
        host_root: a.host_root.clone(),
        config: a.config.clone(),
        bin_dir: a.bin_dir.clone(),
        store: a.store.clone(),
        shim_source,
        cli_source,
        new_config_layout: if a.config_version == 3 {
            Layout::V3
        } else {
            Layout::V2
        },
        restart: if a.no_restart {
            vec![]
        } else {
            a.restart_command
                .split_whitespace()
                .map(String::from)
                .collect()
        },
        node_name: a.node_name.clone().filter(|n| !n.is_empty()),
    })
}

fn print_report(r: &node::Report, json: bool) -> anyhow::Result<()> {
    if json {
        return super::print_json(r);
    }
    for s in &r.steps {
        println!(
            "{} {}",
            if s.changed { "changed  " } else { "unchanged" },
            s.what
        );
    }
    if r.config_changed && !r.restarted {
        println!("containerd's config changed: restart containerd for it to take effect");
    } else if r.restarted {
        println!("containerd restarted");
    }
    Ok(())
}

pub async fn run(_g: &Globals, c: NodeCmd) -> anyhow::Result<ExitCode> {
    match c {
        NodeCmd::Install(a) => {
            let o = options(&a.node, a.shim)?;
            let r = node::install(&o)?;
            print_report(&r, a.node.json)?;
            if let Some(every) = a.gc_every {
                gc_loop(o.host(&o.store), every).await?;
            }
        }
        NodeCmd::Uninstall(a) => {
            let o = options(&a.node, None)?;
            print_report(&node::uninstall(&o, a.remove_store)?, a.node.json)?;
            if a.stay {
                wait_for_term().await?;
            }
        }
        NodeCmd::Status(a) => {
            let s = node::status(&options(&a, None)?)?;
            if a.json {
                super::print_json(&s)?;
            } else {
                for (p, present) in &s.binaries {
                    println!(
                        "binary   {}: {}",
                        p.display(),
                        if *present { "present" } else { "missing" }
                    );
                }
                let version = s
                    .config_version
                    .map_or("no file".into(), |v| format!("version {v}"));
                println!(
                    "config   {} ({version}): runtime {} {}",
                    s.config.display(),
                    node::RUNTIME_NAME,
                    if s.runtime_configured {
                        "configured"
                    } else {
                        "missing"
                    }
                );
                println!(
                    "store    {}: {}",
                    s.store.display(),
                    if s.store_present {
                        "present"
                    } else {
                        "missing"
                    }
                );
                println!(
                    "node:    {}",
                    if s.installed {
                        "installed"
                    } else {
                        "not installed"
                    }
                );
            }
            if !s.installed {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_term() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// The DaemonSet's steady state: the store collected on a schedule until SIGTERM.
async fn gc_loop(store: PathBuf, every: Duration) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        let s = store.clone();
        let result = tokio::task::spawn_blocking(move || {
            nestcache::store::Store::open_existing(&s).and_then(|st| st.gc())
        })
        .await
        .context("gc worker")?;
        // One failed round is reported and retried next time; the node keeps its runtime.
        match result {
            Ok(r) => eprintln!(
                "nestcache: store gc {}: {} blobs, {} layers removed, {} bytes freed",
                store.display(),
                r.blobs_removed,
                r.layers_removed,
                r.bytes_freed
            ),
            Err(e) => eprintln!("nestcache: store gc {}: {e}", store.display()),
        }
    }
}
