use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use nestcache::cache::{self, AdoptMode, CacheInfo, CreateOptions, Created, RemoveOptions};
use nestcache::layout::StateLayout;

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
    /// Make the container nestcache runs in the cache (it must have a host dir mounted at
    /// PATH) or fail; without it, that is tried first and a cache container started when
    /// it is not possible
    #[arg(long, conflicts_with = "no_adopt")]
    pub adopt: bool,
    /// Always start a cache container
    #[arg(long)]
    pub no_adopt: bool,
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

fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("invalid --ttl {s:?}: {e} (examples: 90s, 30m, 2h)"))
}

pub async fn run(g: &Globals, c: CacheCmd) -> anyhow::Result<ExitCode> {
    // gc reaps expired caches itself and reports them; every other command reaps first.
    let client = match c {
        CacheCmd::Gc(_) => nestcache::env::connect(&super::connect_options(g)).await?,
        _ => super::connect(g).await?,
    };
    match c {
        CacheCmd::Create(a) => {
            let opts = CreateOptions {
                name: a.name,
                path: a.path,
                content_dir: a
                    .content_dir
                    .map(|d| super::absolute("--content-dir", &d))
                    .transpose()?,
                ttl: a
                    .ttl
                    .as_deref()
                    .or(super::config::loaded().default_ttl.as_deref())
                    .map(parse_ttl)
                    .transpose()?,
                reuse: a.reuse,
                adopt: match (a.adopt, a.no_adopt) {
                    (true, _) => AdoptMode::Require,
                    (_, true) => AdoptMode::Never,
                    _ => AdoptMode::Auto,
                },
            };
            let created = cache::create(&client, &StateLayout::new(&g.state_dir), &opts).await?;
            if a.json {
                super::print_json(&created)?;
            } else {
                println!("{}", created_line(&created));
            }
        }
        CacheCmd::Inspect(a) => {
            let i = cache::find(&client, &a.name).await?;
            if a.json {
                super::print_json(&i)?;
            } else {
                print_info(&i);
            }
        }
        CacheCmd::Ls(a) => {
            let all = cache::list(&client).await?;
            if a.json {
                super::print_json(&all)?;
            } else {
                print_table(&all);
            }
        }
        CacheCmd::Rm(a) => {
            let state = StateLayout::new(&g.state_dir);
            for id in
                nestcache::nested::manage::remove_exited_of_cache(&client, &state, &a.name).await?
            {
                println!("removed exited nested container {id}");
            }
            let removed_dir = cache::rm(
                &client,
                &a.name,
                RemoveOptions {
                    keep_content: a.keep_content,
                    remove_user_content_dir: a.remove_content_dir,
                },
            )
            .await?;
            // The cache's bridge, subnet and leases go with it.
            nestcache::network::remove_network(
                &nestcache::network::NetLayout::new(&g.state_dir),
                client.namespace(),
                &a.name,
            )
            .await?;
            println!(
                "removed cache {}{}",
                a.name,
                if removed_dir {
                    " and its content dir"
                } else {
                    ""
                }
            );
        }
        CacheCmd::Gc(a) => {
            let state = StateLayout::new(&g.state_dir);
            let orphans = nestcache::nested::reap_orphans(&client, &state).await;
            for id in &orphans {
                eprintln!(
                    "nestcache: removed orphaned nested container {id} (its `run --rm` is gone)"
                );
            }
            let reaped = cache::gc(&client).await?;
            if a.json {
                super::print_json(&reaped)?;
            } else if reaped.is_empty() && orphans.is_empty() {
                println!("nothing to collect");
            } else {
                for r in &reaped {
                    println!("removed cache {}: {}", r.name, r.reason);
                }
            }
        }
        CacheCmd::Touch(a) => {
            let i = cache::touch(&client, &a.name, parse_ttl(&a.ttl)?).await?;
            println!(
                "cache {} now expires {}",
                i.name,
                i.expires.as_deref().unwrap_or("never")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cache create` did, in one line: adopted this container, reused, or started a
/// cache container (and why this container could not be the cache).
fn created_line(created: &Created) -> String {
    let i = &created.info;
    let what = match (created.reused, created.adopted) {
        (true, _) => "reused".to_string(),
        (false, true) => format!(
            "adopted: this container {} (namespace {}) is the cache",
            i.id, i.namespace
        ),
        (false, false) => format!("created: cache container {}", i.id),
    };
    let why = created
        .not_adopted
        .as_deref()
        .map_or(String::new(), |r| format!(" (not adopted: {r})"));
    format!(
        "cache {} {what}{why}: {} at {} (pid {}), expires {}",
        i.name,
        i.content_dir.display(),
        i.path.display(),
        i.pid.map_or("-".into(), |p| p.to_string()),
        i.expires.as_deref().unwrap_or("never"),
    )
}

fn print_info(i: &CacheInfo) {
    println!("name:         {}", i.name);
    println!("namespace:    {}", i.namespace);
    println!(
        "container:    {}{}",
        i.id,
        if i.adopted {
            " (adopted: rm removes its labels only)"
        } else {
            ""
        }
    );
    println!("path:         {}", i.path.display());
    println!(
        "content dir:  {}{}",
        i.content_dir.display(),
        if i.content_dir_owned {
            " (created by nestcache)"
        } else {
            ""
        }
    );
    println!("status:       {}", i.status_word());
    println!(
        "pid:          {}",
        i.pid.map_or("-".into(), |p| p.to_string())
    );
    println!("created:      {}", i.created.as_deref().unwrap_or("-"));
    println!(
        "expires:      {}{}",
        i.expires.as_deref().unwrap_or("never"),
        if i.expired { " (expired)" } else { "" }
    );
}

fn print_table(all: &[CacheInfo]) {
    println!(
        "{:<24} {:<9} {:>8} {:<20} {:<21} CONTENT DIR",
        "NAME", "STATUS", "PID", "PATH", "EXPIRES"
    );
    for i in all {
        println!(
            "{:<24} {:<9} {:>8} {:<20} {:<21} {}",
            i.name,
            i.status_word(),
            i.pid.map_or("-".into(), |p| p.to_string()),
            i.path.display(),
            i.expires.as_deref().unwrap_or("never"),
            i.content_dir.display()
        );
    }
}
