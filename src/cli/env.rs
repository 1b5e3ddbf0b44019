use std::process::ExitCode;

use clap::Args;

use super::Globals;

#[derive(Debug, Args)]
pub struct EnvArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Globals, a: EnvArgs) -> anyhow::Result<ExitCode> {
    let r = nestcache::env::report(&super::connect_options(g)).await;
    if a.json {
        super::print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    let or_none = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or("not found".to_string(), |p| p.display().to_string())
    };
    println!(
        "environment:     {}",
        if r.kubernetes.detected {
            "kubernetes"
        } else {
            "local"
        }
    );
    for e in &r.kubernetes.evidence {
        println!("  evidence:      {e}");
    }
    println!("address:         {} ({})", r.address, r.address_source);
    let answer = if r.answering {
        format!("yes, containerd {}", or_none(&r.containerd_version))
    } else if r.would_start_embedded {
        "not running; nestcache starts it when needed".to_string()
    } else {
        format!("no: {}", or_none(&r.error))
    };
    println!("answering:       {answer}");
    println!("namespace:       {}", r.namespace);
    println!("embedded:        {}", if r.embedded { "yes" } else { "no" });
    println!("state dir:       {}", r.state_dir.display());
    println!(
        "containerd:      {} {}",
        path(&r.containerd.path),
        or_none(&r.containerd.version)
    );
    println!(
        "runc:            {} {}",
        path(&r.runc.path),
        or_none(&r.runc.version)
    );
    println!(
        "overlayfs:       {}",
        if r.overlayfs { "yes" } else { "no" }
    );
    Ok(ExitCode::SUCCESS)
}
