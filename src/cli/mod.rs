//! Argument parsing and printing. Each command family has its own file; handlers call the
//! library and print, and hold no logic of their own.

mod cache;
pub mod config;
mod container;
mod env;
pub mod exit;
mod images;
mod node;
mod output;
mod run;
mod run_flags;
mod shell;
mod stage;
mod store;
mod system;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use nestcache::layout::DEFAULT_STATE_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "nestcache",
    version,
    about = "Start nested containers from a file cache container, through containerd, with no Docker daemon"
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares.
#[derive(Debug, Clone, Args)]
pub struct Globals {
    /// containerd's gRPC socket (default: /run/containerd/containerd.sock, or the embedded one)
    #[arg(long, global = true, env = "CONTAINERD_ADDRESS")]
    pub address: Option<String>,
    /// containerd namespace
    #[arg(
        long,
        global = true,
        env = "CONTAINERD_NAMESPACE",
        default_value = "nestcache"
    )]
    pub namespace: String,
    /// nestcache's state directory (embedded containerd, default content dirs, nested containers)
    #[arg(long, global = true, env = "NESTCACHE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Less chatter: no `verified:` line or notices; `ps` prints only ids
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report the environment: Kubernetes or local, containerd, runc, overlayfs
    Env(env::EnvArgs),
    /// The embedded containerd: status, stop
    #[command(subcommand)]
    System(system::SystemCmd),
    /// Cache containers: create, inspect, ls, rm, gc, touch
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Stage an image into a cache's content dir (or a plain store directory)
    Stage(stage::StageArgs),
    /// Images in a store: ls, rm, tag
    #[command(subcommand)]
    Images(images::ImagesCmd),
    /// The content store: check, gc, unpack
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Run a nested container from a cache's store
    Run(Box<run::RunArgs>),
    /// Check that a nested container sees its cache's content
    Verify(run::VerifyArgs),
    /// List nested containers
    Ps(container::PsArgs),
    /// Run a command in a running nested container
    Exec(container::ExecArgs),
    /// Send a signal to nested containers (default KILL)
    Kill(container::KillArgs),
    /// Stop nested containers (SIGTERM, then SIGKILL after -t seconds)
    Stop(container::StopArgs),
    /// Remove nested containers
    Rm(container::RmArgs),
    /// Wait until nested containers stop; print their exit codes
    Wait(container::IdsArgs),
    /// Show nested containers' state, config, mounts and network as JSON
    Inspect(container::InspectArgs),
    /// Copy files between a running nested container and the host (CONTAINER:PATH)
    Cp(container::CpArgs),
    /// The processes of a running nested container
    Top(container::TopArgs),
    /// CPU, memory and pids of running nested containers, from their cgroups
    Stats(container::StatsArgs),
    /// containerd's events in nestcache's namespace, as they happen
    Events(container::EventsArgs),
    /// Print a detached nested container's output
    Logs(container::LogsArgs),
    /// Give an image another ref (`images tag`)
    Tag(images::TagArgs),
    /// containerd's logging binary for detached containers (run by the shim, not by hand)
    #[command(name = "__log-driver", hide = true)]
    LogDriver(container::LogDriverArgs),
    /// Removes a `run -d --rm` container once it exits (started by `run`, not by hand)
    #[command(name = "__watch-rm", hide = true)]
    WatchRm(container::WatchArgs),
    /// Print a shell completion script (bash, zsh, fish)
    Completion(shell::CompletionArgs),
    /// Write man pages (nestcache.1 and one per subcommand) into DIR
    Man(shell::ManArgs),
    /// List a nested container's published ports
    Port(run::PortArgs),
    /// Node setup for Kubernetes: install, uninstall, status
    #[command(subcommand)]
    Node(node::NodeCmd),
    /// Named volumes: create, ls, inspect, rm
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut g = cli.globals;
    // containerd resolves paths on its own (upper and work dirs, bind sources): every
    // path handed on must be absolute, so relative ones are made so here, at the edge.
    g.state_dir = absolute("--state-dir", &g.state_dir)?;
    match cli.command {
        Command::Env(a) => env::run(&g, a).await,
        Command::System(c) => system::run(&g, c).await,
        Command::Cache(c) => cache::run(&g, c).await,
        Command::Stage(a) => stage::run(&g, a).await,
        Command::Images(c) => images::run(&g, c).await,
        Command::Store(c) => store::run(&g, c).await,
        Command::Run(a) => run::run(&g, *a).await,
        Command::Verify(a) => run::verify(&g, a).await,
        Command::Ps(a) => container::ps(&g, a).await,
        Command::Exec(a) => container::exec(&g, a).await,
        Command::Kill(a) => container::kill(&g, a).await,
        Command::Stop(a) => container::stop(&g, a).await,
        Command::Rm(a) => container::rm(&g, a).await,
        Command::Wait(a) => container::wait(&g, a).await,
        Command::Inspect(a) => container::inspect(&g, a).await,
        Command::Cp(a) => container::cp(&g, a).await,
        Command::Top(a) => container::top(&g, a).await,
        Command::Stats(a) => container::stats(&g, a).await,
        Command::Events(a) => container::events(&g, a).await,
        Command::Logs(a) => container::logs(&g, a).await,
        Command::Tag(a) => images::run(&g, images::ImagesCmd::Tag(a)).await,
        Command::LogDriver(a) => container::log_driver(a),
        Command::WatchRm(a) => container::watch_rm(&g, a).await,
        Command::Completion(a) => shell::completion(a),
        Command::Man(a) => shell::man(a),
        Command::Port(a) => run::port(&g, a).await,
        Command::Node(c) => node::run(&g, c).await,
        Command::Volume(c) => volume::run(&g, c).await,
    }
}

/// `path` made absolute against the current directory (not resolved: no symlinks are
/// followed, nothing needs to exist yet).
pub fn absolute(what: &str, path: &std::path::Path) -> anyhow::Result<PathBuf> {
    if path.as_os_str().is_empty() {
        anyhow::bail!("{what}: empty path");
    }
    std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("{what} {}: cannot make it absolute: {e}", path.display()))
}

/// Parses the command line, then fills what flags and environment left unset from the
/// config file (see `config.rs`).
pub fn parse(is_run: bool) -> Result<Cli, ParseFailure> {
    use clap::{CommandFactory, FromArgMatches};
    let m = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|cli| (m, cli)));
    let (m, mut cli) = match m {
        Ok(found) => found,
        Err(e) => return Err(ParseFailure::Usage(usage_error(e, is_run))),
    };
    let file =
        config::load(&config::files(|k| std::env::var(k).ok())).map_err(ParseFailure::Config)?;
    config::apply(&mut cli.globals, &m, file);
    Ok(cli)
}

/// Why the command line did not become a [`Cli`].
pub enum ParseFailure {
    /// Help, version or a bad command line: printed already; exit with this code.
    Usage(ExitCode),
    /// The config file is unreadable or malformed.
    Config(anyhow::Error),
}

/// Prints clap's answer (and with `--json` an error object) and picks the exit code:
/// help and version 0, a bad command line `run`'s 125 or clap's 2.
fn usage_error(e: clap::Error, is_run: bool) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let code = if is_run {
        exit::RUN_FAILED
    } else {
        e.exit_code().clamp(0, 255) as u8
    };
    if json_requested() {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        let message = first.trim_start_matches("error: ");
        println!(
            "{}",
            serde_json::json!({"error": {"message": message, "exit_code": code}})
        );
    }
    let _ = e.print();
    ExitCode::from(code)
}

/// `RUST_LOG` controls logs; they go to stderr and are silent by default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An error chain on one line: "what: why: root cause".
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        // Library errors often already embed their source's text; skip exact repeats.
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// With `--json`, a failure is also an object on stdout, so a script reading stdout
/// always gets JSON: `{"error": {"message": "...", "exit_code": N}}`.
pub fn print_json_error(e: &anyhow::Error, exit_code: u8) {
    let v = serde_json::json!({"error": {"message": one_line(e), "exit_code": exit_code}});
    println!("{v}");
}

/// Whether `--json` was asked for (before any `--` that starts a container's command).
pub fn json_requested() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// The library's connection options from the global flags.
pub fn connect_options(g: &Globals) -> nestcache::env::ConnectOptions {
    nestcache::env::ConnectOptions {
        address: g.address.clone().filter(|a| !a.is_empty()),
        namespace: g.namespace.clone(),
        state_dir: g.state_dir.clone(),
    }
}

/// Connects to containerd (starting the embedded one when allowed and needed) and reaps
/// expired caches on the way: every command that talks to containerd goes through here.
pub async fn connect(g: &Globals) -> anyhow::Result<nestcache::containerd::Client> {
    let started = std::time::Instant::now();
    let client = nestcache::env::connect(&connect_options(g)).await?;
    let connected = started.elapsed();
    let state = nestcache::layout::StateLayout::new(&g.state_dir);
    for id in nestcache::nested::reap_orphans(&client, &state).await {
        eprintln!("nestcache: removed orphaned nested container {id} (its `run --rm` is gone)");
    }
    for r in nestcache::cache::reap_expired(&client).await {
        if !g.quiet {
            eprintln!("nestcache: removed cache {} ({})", r.name, r.reason);
        }
    }
    // Networks of containers whose task is gone (a crash, a containerd restart) and of
    // caches that are gone.
    let state = nestcache::layout::StateLayout::new(&g.state_dir);
    for what in nestcache::nested::network::reap(&client, &state).await {
        tracing::info!("released the {what}");
    }
    tracing::debug!(
        connect_ms = format!("{:.1}", connected.as_secs_f64() * 1e3),
        reap_ms = format!("{:.1}", (started.elapsed() - connected).as_secs_f64() * 1e3),
        "connected"
    );
    Ok(client)
}
