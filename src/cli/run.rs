//! `run` and `verify`: nested containers (the rest of their lifecycle is in `container.rs`).

use anyhow::Context;
use clap::Args;
use std::process::ExitCode;

use nestcache::layout::StateLayout;
use nestcache::nested::{self, manage, spec::SpecOptions};
use nestcache::network;

use super::Globals;

/// `run [OPTIONS] IMAGE [COMMAND] [ARG...]`: options end at IMAGE, as `docker run` parses
/// (a `--` before COMMAND is accepted too). `-h` is `--hostname`; help is `--help` only.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// The cache to run from
    #[arg(long)]
    pub cache: String,
    /// Stage this source first
    #[arg(long)]
    pub stage: Option<String>,
    /// When to stage --stage: missing (IMAGE not in the store), always, never
    #[arg(long, default_value = "missing")]
    pub pull: String,
    /// os/arch[/variant]: pick it from an index, refuse an image of another platform
    #[arg(long)]
    pub platform: Option<String>,
    /// Image ref or manifest digest in the cache's store
    pub image: String,
    /// Command and arguments (replace the image's Cmd)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Container host name (default: the container id)
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    #[command(flatten)]
    pub resources: super::run_flags::ResourceArgs,
    #[command(flatten)]
    pub security: super::run_flags::SecurityArgs,
    #[command(flatten)]
    pub mounts: super::run_flags::MountArgs,
    #[command(flatten)]
    pub process: super::run_flags::ProcessArgs,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the caller's value)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// USER[:GROUP], names or ids, resolved through the image's /etc/passwd and /etc/group
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Bind mount HOST:CTR[:ro|rw]
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Replace the image's Entrypoint (and drop its Cmd); "" clears it
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Container id (default: nested-<random>)
    #[arg(long)]
    pub name: Option<String>,
    /// bridge (the cache's network; the default when the CNI plugins are installed),
    /// none (loopback only), host, or container:ID (share another container's)
    #[arg(long, visible_alias = "network")]
    pub net: Option<String>,
    #[command(flatten)]
    pub network: NetworkArgs,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    pub read_only: bool,
    /// Pass stdin to the container
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start and return; output goes to `nestcache logs ID`
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Delete the task, container and upper/work dirs after exit
    #[arg(long)]
    pub rm: bool,
    /// Also stop and delete the cache container after exit
    #[arg(long)]
    pub rm_cache: bool,
    /// Do not mount the cache's content dir into the container
    #[arg(long)]
    pub no_mount_cache: bool,
    /// Mount the cache's content dir read-write (default read-only)
    #[arg(long)]
    pub cache_rw: bool,
    /// runc (through containerd's runc shim) or shim (containerd-shim-nestcache-v2)
    #[arg(long, default_value = "runc")]
    pub runtime: String,
    /// With --runtime shim: milliseconds the cache's shim stays after its last container,
    /// for the next run to join it (0: it exits with it; default 30000)
    #[arg(long, env = nestcache::labels::SHIM_LINGER_ENV, value_name = "MS")]
    pub shim_linger: Option<u64>,
    /// Registry options, for `--stage docker://…`
    #[command(flatten)]
    pub registry: super::stage::RegistryArgs,
    #[arg(long)]
    pub json: bool,
}

/// Ports, names and DNS of a bridged container.
#[derive(Debug, Args)]
pub struct NetworkArgs {
    /// Publish a container port: [IP:][HOST:]CONTAINER[/tcp|/udp], ports or ranges
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish every port the image exposes onto a free host port
    #[arg(short = 'P', long)]
    pub publish_all: bool,
    /// Another name the cache's other containers resolve this one by
    #[arg(long = "network-alias")]
    pub network_alias: Vec<String>,
    /// NAME[:ALIAS]: resolve a container of the cache by ALIAS too
    #[arg(long)]
    pub link: Vec<String>,
    /// NAME:IP in /etc/hosts (IP may be host-gateway)
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// DNS server for /etc/resolv.conf (default: the host's)
    #[arg(long)]
    pub dns: Vec<String>,
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    #[arg(long = "dns-option")]
    pub dns_option: Vec<String>,
    /// Use the first network config in this dir instead of the cache's bridge
    #[arg(long = "cni-conf-dir")]
    pub cni_conf_dir: Option<std::path::PathBuf>,
    /// Where the CNI plugins are (default /usr/lib/cni, /opt/cni/bin)
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dir: Vec<std::path::PathBuf>,
}

impl NetworkArgs {
    fn options(&self) -> anyhow::Result<network::NetworkOptions> {
        let mut publish = Vec::new();
        for p in &self.publish {
            publish.extend(network::ports::parse_publish(p)?);
        }
        for d in &self.dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                anyhow::bail!("invalid --dns {d:?}: expected an IP address");
            }
        }
        for s in self.dns_search.iter().chain(&self.dns_option) {
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                anyhow::bail!("invalid --dns-search/--dns-option {s:?}: one word each");
            }
        }
        Ok(network::NetworkOptions {
            publish,
            publish_all: self.publish_all,
            aliases: self.network_alias.clone(),
            links: self
                .link
                .iter()
                .map(|l| network::mode::parse_link(l))
                .collect::<Result<_, _>>()?,
            add_hosts: self
                .add_host
                .iter()
                .map(|h| network::mode::parse_add_host(h))
                .collect::<Result<_, _>>()?,
            dns: network::hosts::Dns {
                servers: self.dns.clone(),
                search: self.dns_search.clone(),
                options: self.dns_option.clone(),
            },
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
        })
    }
}

/// `--net`, or the default: bridge when the CNI plugins are there (one line when not).
fn net_mode(
    given: Option<&str>,
    bin_dirs: &[std::path::PathBuf],
) -> anyhow::Result<network::NetMode> {
    if let Some(m) = given {
        return Ok(m.parse()?);
    }
    let (mode, note) = network::mode::default_mode(&network::mode::bin_dirs(bin_dirs))?;
    if let Some(n) = note {
        eprintln!("nestcache: {n}");
    }
    Ok(mode)
}

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// Only this container port: PORT[/tcp|/udp]
    pub port: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub container: String,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Globals, a: RunArgs) -> anyhow::Result<ExitCode> {
    if a.no_mount_cache && a.cache_rw {
        anyhow::bail!("--cache-rw and --no-mount-cache contradict each other");
    }
    let mut spec = SpecOptions::new(String::new(), String::new());
    spec.env = a.env;
    spec.workdir = a.workdir;
    spec.user = a.user;
    let state = StateLayout::new(&g.state_dir);
    let mut volumes = Vec::new();
    let mut labels = a.mounts.apply(&a.volumes, &mut spec, &mut volumes)?;
    a.process.apply(&state, &mut spec, &mut labels)?;
    spec.entrypoint = a.entrypoint;
    spec.command = command_after_image(a.command);
    spec.hostname = a.hostname;
    spec.resources = a.resources.resources()?;
    a.security.apply(&mut spec)?;
    spec.net = net_mode(a.net.as_deref(), &a.network.cni_bin_dir)?;
    let network = a.network.options()?;
    spec.read_only = a.read_only;
    spec.tty = a.tty;
    let opts = nested::RunOptions {
        cache: a.cache,
        image: a.image,
        stage: a.stage,
        source_options: a.registry.source_options(),
        name: a.name,
        spec,
        interactive: a.interactive,
        detach: a.detach,
        rm: a.rm,
        rm_cache: a.rm_cache,
        mount_cache: !a.no_mount_cache,
        cache_rw: a.cache_rw,
        runtime: a.runtime.parse()?,
        shim_linger_ms: a.shim_linger,
        labels,
        volumes,
        volumes_from: a.mounts.volumes_from.clone(),
        cidfile: a.mounts.cidfile.clone(),
        pull: a.pull.parse()?,
        platform: a.platform.as_deref().map(str::parse).transpose()?,
        network,
    };
    let detach = opts.detach;
    let json = a.json;
    let quiet = g.quiet;
    let client = super::connect(g).await?;
    let report = nested::run(&client, &state, opts, |n| match n {
        // A failure comes back as the run's error; say only the success here.
        nested::Notice::Verified(v) => {
            if !json && !quiet && v.ok {
                eprintln!("nestcache: {}", v.summary());
            }
        }
        // Docker's warning; said even with -q/--json (on stderr), as Docker says it.
        nested::Notice::ForeignPlatform { image, host } => eprintln!(
            "nestcache: WARNING: the requested image's platform ({image}) does not match the detected host platform ({host}) and no specific platform was requested"
        ),
    })
    .await?;
    if json {
        super::print_json(&report)?;
    } else if detach {
        println!("{}", report.id);
    }
    Ok(exit_code(report.exit_code.unwrap_or(0)))
}

/// COMMAND as given after IMAGE: one leading `--` (the older `IMAGE -- CMD` form) is
/// a separator, not the command.
fn command_after_image(mut command: Vec<String>) -> Vec<String> {
    if command.first().is_some_and(|c| c == "--") {
        command.remove(0);
    }
    command
}

/// The nested process's exit code as ours (codes above 255 cannot be passed on).
fn exit_code(code: u32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

pub async fn verify(g: &Globals, a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    let v = manage::verify(&client, &a.container).await?;
    if a.json {
        super::print_json(&v)?;
    } else if v.ok {
        println!("{}", v.summary());
    } else {
        eprintln!("nestcache: {}", v.summary());
    }
    // And its network, when it has one of nestcache's: a failed CHECK is an error.
    let layout = network::NetLayout::new(&g.state_dir);
    if let Some(line) = network::check(&layout, &a.container).await? {
        if !a.json {
            println!("{line}");
        }
    }
    Ok(if v.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn port(g: &Globals, a: PortArgs) -> anyhow::Result<ExitCode> {
    let client = super::connect(g).await?;
    manage::get(&client, &a.container).await?;
    let layout = network::NetLayout::new(&g.state_dir);
    let mut ports = network::published_ports(&layout, &a.container);
    if let Some(p) = &a.port {
        let (num, proto) = p.split_once('/').unwrap_or((p, "tcp"));
        let num: u16 = num
            .parse()
            .with_context(|| format!("invalid port {p:?}: expected PORT[/tcp|/udp]"))?;
        ports.retain(|m| m.container_port == num && m.protocol.as_str() == proto);
        if ports.is_empty() {
            anyhow::bail!("no public port {p} published for {}", a.container);
        }
    }
    if a.json {
        super::print_json(&ports)?;
        return Ok(ExitCode::SUCCESS);
    }
    for m in ports {
        println!("{}", m.display());
    }
    Ok(ExitCode::SUCCESS)
}
