//! `nestcache inspect`: what scripts read about a nested container, with Docker's field
//! names (`State.Status`, `State.Pid`, `State.ExitCode`, `State.StartedAt`, `Config.Image`,
//! `Config.Labels`, `Mounts`, `NetworkSettings`) so that `jq` lines written for
//! `docker inspect` keep working, plus nestcache's own `Cache` section.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::Serialize;

use super::manage::get;
use crate::containerd::{labels, Client, Container, TaskStatus};
use crate::error::Result;
use crate::layout::StateLayout;
use crate::network::{self, ContainerNet, NetLayout, NetworkError};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    pub id: String,
    /// Docker prints `/NAME`; here name and id are the same.
    pub name: String,
    pub created: Option<String>,
    pub path: String,
    pub args: Vec<String>,
    pub state: State,
    /// The manifest digest (Docker: the image id).
    pub image: String,
    pub config: Config,
    pub mounts: Vec<MountPoint>,
    pub network_settings: NetworkSettings,
    pub host_config: HostConfig,
    pub cache: CacheSection,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct State {
    /// created, running, paused or exited (Docker's words).
    pub status: String,
    pub running: bool,
    pub paused: bool,
    /// 0 when not running, as Docker.
    pub pid: u32,
    pub exit_code: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    /// The image as given to `run` (a ref or manifest digest of the cache's store).
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `UID:GID`.
    pub user: String,
    pub hostname: String,
    pub tty: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountPoint {
    /// bind or tmpfs.
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    pub destination: String,
    /// ro or rw.
    pub mode: String,
    #[serde(rename = "RW")]
    pub rw: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    /// host (no network namespace of its own), none (a new one with loopback only) or
    /// netns (a namespace prepared beforehand, at `SandboxKey`).
    pub network_mode: String,
    pub sandbox_key: String,
    /// The container's address on its cache's network ("" without one, as Docker).
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
    /// The one network it is on (the cache's, `nestcache-<cache>`), Docker's shape.
    pub networks: BTreeMap<String, Endpoint>,
}

/// One network's end, as Docker's `NetworkSettings.Networks.<name>`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Endpoint {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    pub runtime: String,
    pub readonly_rootfs: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheSection {
    pub name: String,
    pub path: String,
    pub content_dir: String,
    pub mounted: bool,
    pub manifest_digest: String,
}

/// Inspects nested container `id`; its network record is read from `state`'s dir.
pub async fn inspect(client: &Client, state: &StateLayout, id: &str) -> Result<Inspect> {
    let c = get(client, id).await?;
    let spec = c.spec()?;
    let task = task_state(client, &c).await?;
    let mut out = from_parts(&c, &spec, task);
    let dir = NetLayout::new(state.root()).container_dir(&c.id);
    match network::record::read(&dir) {
        Ok(r) => add_endpoint(&mut out.network_settings, &r),
        // No network of its own (none, host) or no longer (exited, as Docker's).
        Err(NetworkError::File { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
        }
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

/// The record's address, gateway and MAC, at the top (Docker's default network fields)
/// and under the network's name.
fn add_endpoint(n: &mut NetworkSettings, r: &ContainerNet) {
    let e = r.endpoint();
    let text = |a: Option<std::net::Ipv4Addr>| a.map(|a| a.to_string()).unwrap_or_default();
    n.ip_address = text(e.ip);
    n.ip_prefix_len = e.prefix_len;
    n.gateway = text(e.gateway);
    n.mac_address = e.mac.clone();
    n.networks.insert(
        r.conflist.name.clone(),
        Endpoint {
            network_id: r.conflist.name.clone(),
            ip_address: n.ip_address.clone(),
            ip_prefix_len: e.prefix_len,
            gateway: n.gateway.clone(),
            mac_address: e.mac,
            aliases: r.names(),
        },
    );
}

async fn task_state(client: &Client, c: &Container) -> Result<State> {
    let rfc = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let task = client.task_state(&c.id).await?;
    let recorded = c.label(labels::EXIT_CODE).and_then(|s| s.parse().ok());
    Ok(match task {
        Some(t) if t.status == TaskStatus::Stopped => State {
            status: "exited".into(),
            running: false,
            paused: false,
            pid: 0,
            exit_code: t.exit_status,
            started_at: None,
            finished_at: t.exited_at.map(rfc),
        },
        Some(t) => State {
            status: match t.status {
                TaskStatus::Created => "created",
                TaskStatus::Paused | TaskStatus::Pausing => "paused",
                _ => "running",
            }
            .into(),
            running: t.status == TaskStatus::Running,
            paused: matches!(t.status, TaskStatus::Paused | TaskStatus::Pausing),
            pid: t.pid,
            exit_code: 0,
            started_at: process_start(t.pid).map(rfc),
            finished_at: None,
        },
        None => State {
            status: "exited".into(),
            running: false,
            paused: false,
            pid: 0,
            exit_code: recorded.unwrap_or(0),
            started_at: None,
            finished_at: None,
        },
    })
}

fn from_parts(c: &Container, spec: &Spec, state: State) -> Inspect {
    let process = spec.process().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let label = |k: &str| c.label(k).unwrap_or_default().to_string();
    Inspect {
        id: c.id.clone(),
        name: c.id.clone(),
        created: c
            .created_at
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        path: args.first().cloned().unwrap_or_default(),
        args: args.iter().skip(1).cloned().collect(),
        state,
        image: label(labels::MANIFEST),
        config: Config {
            image: label(labels::IMAGE),
            labels: c.labels.clone(),
            env: process.env().clone().unwrap_or_default(),
            cmd: args,
            working_dir: process.cwd().to_string_lossy().into_owned(),
            user: format!("{}:{}", process.user().uid(), process.user().gid()),
            hostname: spec.hostname().clone().unwrap_or_default(),
            tty: process.terminal().unwrap_or(false),
        },
        mounts: user_mounts(spec),
        network_settings: network(spec),
        host_config: HostConfig {
            runtime: c.runtime.clone(),
            readonly_rootfs: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
        },
        cache: CacheSection {
            name: label(labels::NAME),
            path: label(labels::PATH),
            content_dir: label(labels::CONTENT_DIR),
            mounted: c.label(labels::MOUNT_CACHE) == Some("true"),
            manifest_digest: label(labels::MANIFEST),
        },
    }
}

/// Binds and tmpfs mounts the user asked for (the cache, `-v`, `--tmpfs`...): the spec's
/// mounts without the standard ones every container has.
fn user_mounts(spec: &Spec) -> Vec<MountPoint> {
    const STANDARD: [&str; 7] = [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ];
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy().into_owned();
        let options = m.options().clone().unwrap_or_default();
        let bind =
            m.typ().as_deref() == Some("bind") || options.iter().any(|o| o.ends_with("bind"));
        let tmpfs = m.typ().as_deref() == Some("tmpfs");
        if STANDARD.contains(&dest.as_str()) || !(bind || tmpfs) {
            continue;
        }
        let ro = options.iter().any(|o| o == "ro");
        out.push(MountPoint {
            kind: if bind { "bind" } else { "tmpfs" }.into(),
            source: m
                .source()
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            destination: dest,
            mode: if ro { "ro" } else { "rw" }.into(),
            rw: !ro,
        });
    }
    out
}

fn network(spec: &Spec) -> NetworkSettings {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network);
    let (mode, key) = match ns {
        None => ("host", String::new()),
        Some(n) => match n.path() {
            Some(p) => ("netns", p.to_string_lossy().into_owned()),
            None => ("none", String::new()),
        },
    };
    NetworkSettings {
        network_mode: mode.into(),
        sandbox_key: key,
        ip_address: String::new(),
        ip_prefix_len: 0,
        gateway: String::new(),
        mac_address: String::new(),
        networks: BTreeMap::new(),
    }
}

/// When process `pid` started: its start time in clock ticks after boot (/proc/PID/stat
/// field 22) plus the boot time (/proc/stat `btime`).
pub fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks: u64 = stat_field(&stat, 22)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let since_boot = Duration::from_millis(ticks * 1000 / hz);
    UNIX_EPOCH.checked_add(Duration::from_secs(btime) + since_boot)
}

/// Field `n` (1-based, as proc(5) counts) of a /proc/PID/stat line; the command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    if n < 3 {
        return None;
    }
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_awkward_command_name() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 12345 9 10";
        assert_eq!(stat_field(line, 3), Some("S"));
        assert_eq!(stat_field(line, 4), Some("1"));
        assert_eq!(stat_field(line, 22), Some("12345"));
        assert_eq!(stat_field("garbage", 3), None);
    }

    #[test]
    fn mounts_and_network_from_a_spec() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/cache", "type": "bind", "source": "/var/c", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv", "options": ["rbind", "rw"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}
            ],
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]}
        }))
        .unwrap();
        let m = user_mounts(&spec);
        let dests: Vec<_> = m.iter().map(|m| (m.destination.as_str(), m.rw)).collect();
        assert_eq!(dests, [("/cache", false), ("/data", true), ("/tmp", true)]);
        assert_eq!(m[0].kind, "bind");
        let n = network(&spec);
        assert_eq!(
            (n.network_mode.as_str(), n.sandbox_key.as_str()),
            ("netns", "/run/netns/x")
        );
    }
}
