//! The lifecycle of nested containers after `run`: `exec`, `kill`, `stop`, `rm`, `wait`,
//! `inspect`, `top`, `stats`, `events`, `ps`, `logs`. Commands taking several ids act on
//! each, report each, and exit 1 if any failed (as Docker does).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use nestcache::layout::StateLayout;
use nestcache::nested::{copy, exec, filter, inspect, manage, procs};

use super::output::{human_size, Template};
use super::Globals;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start the process and return (its output is discarded, as Docker does)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the caller's value)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// USER[:GROUP], names or ids, resolved through the container's /etc/passwd and /etc/group
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    pub container: String,
    /// The command and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send: a name (KILL, SIGTERM) or a number
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL (a duration such as 500ms is taken too)
    /// (default: the container's --stop-timeout, else 10)
    #[arg(short = 't', long = "time", visible_alias = "timeout")]
    pub time: Option<String>,
    #[arg(required = true)]
    pub containers: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill a running container first
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove its anonymous volumes too
    #[arg(short = 'v', long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
    /// A Go-template-like format applied to each (e.g. '{{.State.Pid}}'), or `json`
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// JSON (the default; accepted for uniformity)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// CONTAINER:PATH or a host path (`DIR/.` copies a directory's contents)
    pub src: String,
    /// CONTAINER:PATH or a host path
    pub dst: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Containers to measure (default: every running nested container)
    pub containers: Vec<String>,
    /// Print one reading and exit
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events about these containers
    #[arg(long = "filter-id", value_name = "ID")]
    pub ids: Vec<String>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show stopped containers too
    #[arg(short = 'a', long)]
    pub all: bool,
    /// KEY=VALUE: name, id, label, status, ancestor, cache (repeatable)
    #[arg(long)]
    pub filter: Vec<String>,
    /// A Go-template-like line per container ('{{.ID}}\t{{.Status}}'), or `json`
    #[arg(long)]
    pub format: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub container: String,
    /// Keep printing as the container writes
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines ("all" for every line)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Only lines since an RFC 3339 time or a duration back from now (10m)
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each line with its time (RFC 3339, nanoseconds)
    #[arg(short = 't', long)]
    pub timestamps: bool,
}

/// The log's streams to ours: stdout to stdout, stderr to stderr.
struct StdSink;

impl nestcache::nested::logs::Sink for StdSink {
    fn line(&mut self, stream: &str, text: &[u8]) -> nestcache::Result<()> {
        use std::io::Write;
        let r = if stream == "stderr" {
            let mut e = std::io::stderr().lock();
            e.write_all(text).and_then(|_| e.flush())
        } else {
            let mut o = std::io::stdout().lock();
            o.write_all(text).and_then(|_| o.flush())
        };
        r.map_err(|e| nestcache::Error::io("write the log", e))
    }
}

/// The hidden subcommand containerd's runc shim runs as the logging binary.
#[derive(Debug, Args)]
pub struct LogDriverArgs {
    pub log: std::path::PathBuf,
}

/// `__watch-rm ID`: started by `run -d --rm`, removes ID once its task exits.
#[derive(Debug, Args)]
pub struct WatchArgs {
    pub id: String,
}

pub async fn watch_rm(g: &Globals, a: WatchArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let client = nestcache::env::connect(&super::connect_options(g)).await?;
    let state = nestcache::layout::StateLayout::new(&g.state_dir);
    nestcache::nested::watch::watch(&client, &state, &a.id, |ready| {
        // `run` reads this one line and then goes; nothing more is written to stdout.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{ready}").and_then(|_| out.flush());
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub fn log_driver(a: LogDriverArgs) -> anyhow::Result<ExitCode> {
    nestcache::nested::logs::drive(&a.log)?;
    Ok(ExitCode::SUCCESS)
}

/// What happened to one id of a several-id command.
#[derive(Debug, Serialize)]
struct Outcome {
    id: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prints each outcome (ids on stdout, errors on stderr, or a JSON array) and the exit
/// code: 1 if any failed.
fn report(
    outcomes: Vec<Outcome>,
    json: bool,
    show: impl Fn(&Outcome) -> String,
) -> anyhow::Result<ExitCode> {
    let failed = outcomes.iter().any(|o| !o.ok);
    if json {
        super::print_json(&outcomes)?;
    } else {
        for o in &outcomes {
            match &o.error {
                Some(e) => eprintln!("nestcache: {}: {e}", o.id),
                None => println!("{}", show(o)),
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn outcome(id: &str, r: nestcache::Result<Option<u32>>) -> Outcome {
    match r {
        Ok(code) => Outcome {
            id: id.to_string(),
            ok: true,
            exit_code: code,
            error: None,
        },
        Err(e) => Outcome {
            id: id.to_string(),
            ok: false,
            exit_code: None,
            error: Some(e.to_string()),
        },
    }
}

pub async fn exec(g: &Globals, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let state = StateLayout::new(&g.state_dir);
    let opts = exec::ExecOptions {
        command: a.command,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        interactive: a.interactive,
        tty: a.tty,
        detach: a.detach,
    };
    let exit = match exec::exec(&client, &state, &a.container, &opts).await {
        Ok(exit) => exit,
        // The command could not be invoked: 126 / 127, as `docker exec`.
        Err(e @ nestcache::Error::Exec(_)) => {
            eprintln!("nestcache: {e}");
            return Ok(ExitCode::from(super::exit::for_run_error(&e)));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(super::output::exit_code(exit.map(|e| e.code).unwrap_or(0)))
}

pub async fn kill(g: &Globals, a: KillArgs) -> anyhow::Result<ExitCode> {
    let signal = manage::parse_signal(&a.signal)?;
    let client = super::connect(g).await?;
    let mut out = Vec::new();
    for id in &a.containers {
        out.push(outcome(
            id,
            manage::kill(&client, id, signal).await.map(|_| None),
        ));
    }
    report(out, a.json, |o| o.id.clone())
}

/// `-t 10` (seconds, as Docker) or a duration (`500ms`, `1m`).
pub fn parse_grace(s: &str) -> anyhow::Result<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|_| anyhow::anyhow!("invalid -t/--time {s:?}: seconds (10) or a duration (500ms)"))
}

pub async fn stop(g: &Globals, a: StopArgs) -> anyhow::Result<ExitCode> {
    let grace = a.time.as_deref().map(parse_grace).transpose()?;
    let client = super::connect(g).await?;
    let state = StateLayout::new(&g.state_dir);
    let mut out = Vec::new();
    for id in &a.containers {
        let r = manage::stop(&client, &state, id, grace).await;
        out.push(outcome(id, r.map(|e| e.map(|e| e.code))));
    }
    report(out, a.json, |o| o.id.clone())
}

pub async fn rm(g: &Globals, a: RmArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let state = StateLayout::new(&g.state_dir);
    let mut out = Vec::new();
    for id in &a.containers {
        let r = manage::remove(&client, &state, id, a.force, a.volumes).await;
        out.push(outcome(id, r.map(|_| None)));
    }
    report(out, a.json, |o| o.id.clone())
}

pub async fn wait(g: &Globals, a: IdsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let mut out = Vec::new();
    for id in &a.containers {
        out.push(outcome(id, manage::wait(&client, id).await.map(Some)));
    }
    // Docker prints each exit code, one per line.
    report(out, a.json, |o| o.exit_code.unwrap_or(0).to_string())
}

pub async fn inspect(g: &Globals, a: InspectArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let state = StateLayout::new(&g.state_dir);
    let mut found = Vec::new();
    let mut failed = false;
    for id in &a.containers {
        match inspect::inspect(&client, &state, id).await {
            Ok(i) => found.push(serde_json::to_value(i)?),
            Err(e) => {
                eprintln!("nestcache: {id}: {e}");
                failed = true;
            }
        }
    }
    match a.format.as_deref() {
        None | Some("json") => super::print_json(&found)?,
        Some(f) => {
            let t = Template::parse(f)?;
            for v in &found {
                println!("{}", t.render(v)?);
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn cp(g: &Globals, a: CpArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let r = copy::copy(&client, &a.src, &a.dst).await?;
    if a.json {
        super::print_json(&r)?;
    } else {
        for s in &r.skipped {
            eprintln!("nestcache: cp: skipped {s} (devices, fifos and sockets are not copied)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn top(g: &Globals, a: TopArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let rows = procs::top(&client, &a.container).await?;
    if a.json {
        super::print_json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:>8} {:>8} {:<20} {:>9}  CMD",
        "UID", "PID", "PPID", "STIME", "TIME"
    );
    for r in rows {
        let secs = r.cpu_seconds as u64;
        println!(
            "{:<8} {:>8} {:>8} {:<20} {:>9}  {}",
            r.uid,
            r.pid,
            r.ppid,
            r.stime.unwrap_or_default(),
            format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
            r.cmd
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stats(g: &Globals, a: StatsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    loop {
        let ids = if a.containers.is_empty() {
            manage::list(&client, false)
                .await?
                .into_iter()
                .filter(|c| c.is_running())
                .map(|c| c.id)
                .collect()
        } else {
            a.containers.clone()
        };
        let figures = procs::stats(&client, &ids, Duration::from_secs(1)).await?;
        if a.json {
            super::print_json(&figures)?;
        } else {
            if !a.no_stream && super::output::stdout_is_terminal() {
                // Clear the screen and go home, as `docker stats` redraws.
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "{:<24} {:>8} {:>22} {:>8} {:>6}",
                "ID", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"
            );
            for s in &figures {
                println!(
                    "{:<24} {:>7.2}% {:>22} {:>7.2}% {:>6}",
                    s.id,
                    s.cpu_percent,
                    format!(
                        "{} / {}",
                        human_size(s.memory_usage),
                        human_size(s.memory_limit)
                    ),
                    s.memory_percent,
                    s.pids
                );
            }
        }
        if a.no_stream {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

pub async fn events(g: &Globals, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let mut failed = None;
    client
        .subscribe_events(|e| {
            if !a.ids.is_empty() && !e.id.as_ref().is_some_and(|id| a.ids.contains(id)) {
                return true;
            }
            let line = if a.json {
                serde_json::to_string(&e).map_err(anyhow::Error::from)
            } else {
                Ok(e.to_string())
            };
            match line {
                Ok(l) => {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    // A closed reader (`nestcache events | head -3`) ends the stream.
                    writeln!(out, "{l}").and_then(|_| out.flush()).is_ok()
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .await?;
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// One `ps` row with Docker's template field names.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsRow {
    #[serde(rename = "ID")]
    id: String,
    names: String,
    image: String,
    cache: String,
    /// Docker's word: created, running, paused, exited.
    state: String,
    /// `Up` / `Exited (N)`.
    status: String,
    pid: Option<u32>,
    created_at: String,
    runtime: String,
    labels: String,
}

fn ps_row(n: &manage::NestedInfo) -> PsRow {
    let state = filter::docker_status(n).to_string();
    let status = match n.exit_code {
        Some(c) => format!("Exited ({c})"),
        None if state == "running" => "Up".into(),
        None => state.clone(),
    };
    let mut labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    PsRow {
        id: n.id.clone(),
        names: n.id.clone(),
        image: n.image.clone(),
        cache: n.cache.clone(),
        state,
        status,
        pid: n.pid,
        created_at: n.created.clone().unwrap_or_default(),
        runtime: n.runtime.clone(),
        labels: labels.join(","),
    }
}

pub async fn ps(g: &Globals, a: PsArgs) -> anyhow::Result<ExitCode> {
    let filters = filter::Filters::parse(&a.filter)?;
    let template = match a.format.as_deref() {
        None | Some("json") => None,
        Some(f) => Some(Template::parse(f)?),
    };
    let client = super::connect(g).await?;
    let list: Vec<_> = manage::list(&client, a.all || filters.has_status())
        .await?
        .into_iter()
        .filter(|n| filters.matches(n))
        .collect();
    if a.json {
        super::print_json(&list)?;
    } else if g.quiet {
        for n in &list {
            println!("{}", n.id);
        }
    } else if a.format.as_deref() == Some("json") {
        for n in &list {
            println!("{}", serde_json::to_string(&ps_row(n))?);
        }
    } else if let Some(t) = template {
        if let Some(h) = t.header() {
            println!("{h}");
        }
        for n in &list {
            println!("{}", t.render(&serde_json::to_value(ps_row(n))?)?);
        }
    } else {
        println!(
            "{:<24} {:<24} {:<16} {:<12} {:>8} {:<20}",
            "ID", "IMAGE", "CACHE", "STATUS", "PID", "CREATED"
        );
        for n in list {
            let status = match n.exit_code {
                Some(c) => format!("{} ({c})", n.status),
                None => n.status.clone(),
            };
            println!(
                "{:<24} {:<24} {:<16} {:<12} {:>8} {:<20}",
                n.id,
                n.image,
                n.cache,
                status,
                n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                n.created.unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(g: &Globals, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let tail =
        match a.tail.as_str() {
            "all" => None,
            n => Some(n.parse::<usize>().map_err(|_| {
                anyhow::anyhow!("invalid --tail {n:?}: a number of lines or \"all\"")
            })?),
        };
    let now = std::time::SystemTime::now();
    let opts = nestcache::nested::logs::LogOptions {
        follow: a.follow,
        tail,
        since: a
            .since
            .as_deref()
            .map(|s| nestcache::nested::logs::parse_since(s, now))
            .transpose()?,
        timestamps: a.timestamps,
    };
    let client = super::connect(g).await?;
    let state = StateLayout::new(&g.state_dir);
    manage::logs_with(&client, &state, &a.container, &opts, &mut StdSink).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_in_seconds_or_durations() {
        assert_eq!(parse_grace("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_grace("-1").is_err() && parse_grace("soon").is_err());
    }
}
