use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use nestcache::store::describe_problems;
use nestcache::unpack::{ensure_unpacked, Limits};

use super::stage::Target;
use super::Globals;

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Re-hash every blob; report corrupt or missing ones
    Check(CheckArgs),
    /// Remove unreferenced blobs, layers and stale ingest files
    Gc(CheckArgs),
    /// Extract the layers of an image already staged
    Unpack(UnpackArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    pub reference: String,
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Globals, c: StoreCmd) -> anyhow::Result<ExitCode> {
    match c {
        StoreCmd::Check(a) => {
            let store = a.target.open_existing(g).await?;
            let report = tokio::task::spawn_blocking(move || store.check())
                .await
                .context("check worker")??;
            if a.json {
                super::print_json(&report)?;
            } else {
                for line in describe_problems(&report) {
                    println!("{line}");
                }
                println!(
                    "{}: {} blobs ({} bytes) re-hashed, {} refs walked: {}",
                    report.store,
                    report.blobs_checked,
                    report.bytes_checked,
                    report.refs_checked,
                    if report.ok { "ok" } else { "PROBLEMS FOUND" }
                );
            }
            if report.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                if !a.json {
                    eprintln!(
                        "nestcache: store {} has {} corrupt and {} missing blobs",
                        report.store,
                        report.corrupt.len(),
                        report.missing.len()
                    );
                }
                Ok(ExitCode::from(1))
            }
        }
        StoreCmd::Gc(a) => {
            let store = a.target.open_existing(g).await?;
            // Leases are roots; one ends here only once its containerd confirms that its
            // container is gone (and the process that took it has exited).
            let verdicts = nestcache::cache::leases::classify(store.leases()?).await;
            for (l, why) in &verdicts.live {
                tracing::debug!("lease {} kept: {why}", l.id);
            }
            let stale = verdicts.stale;
            let report = tokio::task::spawn_blocking(move || store.gc_reclaiming(&stale))
                .await
                .context("gc worker")??;
            if a.json {
                super::print_json(&report)?;
            } else {
                println!(
                    "removed {} blobs ({} bytes), {} extracted layers, {} temp files; {} leases kept, {} reclaimed",
                    report.blobs_removed,
                    report.bytes_freed,
                    report.layers_removed,
                    report.temp_files_removed,
                    report.leases_kept,
                    report.leases_reclaimed
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCmd::Unpack(a) => {
            let store = a.target.open_existing(g).await?;
            let reference = a.reference.clone();
            let (img, dirs) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let _writer = store.writer_lock()?;
                let img = store.resolve(&reference, None)?;
                let dirs = ensure_unpacked(&store, &img, &Limits::default())?;
                Ok((img, dirs))
            })
            .await
            .context("unpack worker")??;
            if a.json {
                super::print_json(&serde_json::json!({
                    "reference": a.reference,
                    "manifest_digest": img.manifest_digest,
                    "layers": dirs,
                }))?;
            } else {
                println!(
                    "unpacked {} ({}): {} layers",
                    a.reference,
                    img.manifest_digest,
                    dirs.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
