//! Attaching a nested container to its cache's network and detaching it again.
//!
//! [`prepare`] runs before anything starts: it checks names and links, claims host ports
//! (a port in use fails here, in one line) and writes the record. [`Prepared::attach`]
//! runs once the container exists: namespace, CNI ADD on `lo` and `eth0`, the /etc files,
//! the peers' /etc/hosts. [`detach`] undoes it all and can run any number of times.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;
use serde_json::{json, Value};

use super::cni::{self, Attachment, Runner};
use super::config::{self, NetworkConfig};
use super::error::NetworkError;
use super::hosts::{self, HostsInput, Peer};
use super::mode::{self, NetworkOptions};
use super::ports::{self, PortRequest};
use super::record::{self, ContainerNet, NetLayout};
use super::{netns, subnet};
use crate::error::Result;

/// Who is being attached.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub namespace: &'a str,
    pub cache: &'a str,
    pub id: &'a str,
    pub hostname: &'a str,
    pub options: &'a NetworkOptions,
    /// The image's ExposedPorts (for `-P`).
    pub exposed: &'a [String],
}

/// A container whose network is planned and whose ports are claimed; the lock keeps the
/// reaper off until the task runs.
pub struct Prepared {
    layout: NetLayout,
    dir: PathBuf,
    record: ContainerNet,
    _lock: Flock<File>,
}

/// The container-side path of each file nestcache writes into `/etc`.
pub const ETC_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("hostname", "/etc/hostname"),
];

/// The host files to bind-mount at /etc/hosts, /etc/resolv.conf and /etc/hostname.
pub fn etc_mounts(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    ETC_FILES
        .iter()
        .map(|(f, at)| (dir.join(f), PathBuf::from(at)))
        .collect()
}

impl Prepared {
    pub fn netns(&self) -> &Path {
        &self.record.netns
    }

    pub fn etc_mounts(&self) -> Vec<(PathBuf, PathBuf)> {
        etc_mounts(&self.dir)
    }

    pub fn record(&self) -> &ContainerNet {
        &self.record
    }

    /// Creates the namespace and runs CNI ADD; writes the /etc files and tells the peers.
    /// On an error the caller runs [`detach`].
    pub async fn attach(&mut self) -> Result<()> {
        self.create_namespace()?;
        self.add().await
    }

    /// The namespace and the /etc files (runc binds them at create), so that a task may
    /// be created in it while [`Prepared::add`] runs; /etc/hosts gets the container's
    /// own address once ADD has given it one, before the process starts.
    pub fn create_namespace(&self) -> Result<()> {
        write_own_files(&self.dir, &self.record, &self.layout)?;
        Ok(netns::create(&self.record.netns)?)
    }

    /// CNI ADD in the namespace; the /etc files; the peers told.
    pub async fn add(&mut self) -> Result<()> {
        let runner = Runner {
            bin_dirs: self.record.bin_dirs.clone(),
        };
        runner
            .add(&config::loopback(), &self.attachment("lo"), &Value::Null)
            .await?;
        let result = runner
            .add(
                &self.record.conflist,
                &self.attachment("eth0"),
                &self.runtime(),
            )
            .await?;
        self.record.ip = cni::result_ipv4(&result);
        self.record.gateway = cni::result_gateway(&result).or(self.record.gateway);
        self.record.result = Some(result);
        record::write(&self.dir, &self.record)?;
        write_own_files(&self.dir, &self.record, &self.layout)?;
        refresh_peers(&self.layout, &self.record.namespace, &self.record.cache)
    }

    fn attachment(&self, ifname: &str) -> Attachment {
        attachment(&self.record, ifname)
    }

    fn runtime(&self) -> Value {
        runtime(&self.record)
    }
}

fn attachment(r: &ContainerNet, ifname: &str) -> Attachment {
    Attachment {
        // Host-wide unique: plugins key leases and iptables rules by it.
        container_id: format!("{}-{}", r.namespace, r.id),
        netns: r.netns.clone(),
        ifname: ifname.to_string(),
    }
}

fn runtime(r: &ContainerNet) -> Value {
    json!({ "portMappings": r.ports })
}

/// Plans the network of `req.id`: before anything of it exists.
pub async fn prepare(layout: &NetLayout, req: Request<'_>) -> Result<Prepared> {
    let o = req.options;
    for a in &o.aliases {
        if !mode::valid_name(a) {
            return Err(crate::Error::Invalid(format!(
                "invalid --network-alias {a:?}: letters, digits, . _ - only"
            )));
        }
    }
    let dir = layout.container_dir(req.id);
    if dir.exists() {
        // Debris of a run that died before its container was recorded.
        detach(layout, req.id).await?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| NetworkError::file("create", &dir, e))?;
    let lock = record::lock(&dir, true)?.ok_or_else(|| NetworkError::Container {
        container: req.id.to_string(),
        why: "locked".into(),
    })?;
    match plan(layout, &req, &dir) {
        Ok(record) => Ok(Prepared {
            layout: layout.clone(),
            dir,
            record,
            _lock: lock,
        }),
        Err(e) => {
            ports::release(&dir);
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn plan(layout: &NetLayout, req: &Request<'_>, dir: &Path) -> Result<ContainerNet> {
    let o = req.options;
    let net_dir = layout.network_dir(req.namespace, req.cache);
    let cfg = network_config(layout, req, &net_dir)?;
    check_links(layout, req)?;
    let mut requests: Vec<PortRequest> = o.publish.clone();
    if o.publish_all {
        requests.extend(ports::exposed_requests(req.exposed)?);
    }
    let claimed = ports::claim(&requests, dir)?;
    let record = ContainerNet {
        id: req.id.to_string(),
        namespace: req.namespace.to_string(),
        cache: req.cache.to_string(),
        hostname: req.hostname.to_string(),
        aliases: o.aliases.clone(),
        links: o.links.clone(),
        add_hosts: o.add_hosts.clone(),
        dns: o.dns.clone(),
        ip: None,
        gateway: cfg.gateway,
        conflist: config::for_container(&cfg, !claimed.is_empty()),
        ports: claimed,
        netns: layout.netns(req.id),
        bin_dirs: mode::bin_dirs(&o.cni_bin_dirs),
        result: None,
    };
    let runner = Runner {
        bin_dirs: record.bin_dirs.clone(),
    };
    for p in &record.conflist.plugins {
        runner.find(p.get("type").and_then(Value::as_str).unwrap_or(""))?;
    }
    runner.find("loopback")?;
    record::write(dir, &record)?;
    Ok(record)
}

fn network_config(layout: &NetLayout, req: &Request<'_>, net_dir: &Path) -> Result<NetworkConfig> {
    std::fs::create_dir_all(net_dir).map_err(|e| NetworkError::file("create", net_dir, e))?;
    let _lock = record::lock(net_dir, true)?;
    let bridge = config::bridge_name(&layout.state_root, req.namespace, req.cache);
    config::ensure(
        net_dir,
        &bridge,
        req.cache,
        req.options.cni_conf_dir.as_deref(),
    )
}

fn check_links(layout: &NetLayout, req: &Request<'_>) -> Result<()> {
    let peers = record::of_cache(layout, req.namespace, req.cache);
    for (name, _) in &req.options.links {
        if !peers.iter().any(|p| p.names().contains(name)) {
            return Err(crate::Error::Invalid(format!(
                "--link {name}: no container named {name} on cache {}'s network",
                req.cache
            )));
        }
    }
    Ok(())
}

/// /etc/hostname, /etc/resolv.conf and /etc/hosts of the container whose dir is `dir`.
fn write_own_files(dir: &Path, r: &ContainerNet, layout: &NetLayout) -> Result<()> {
    hosts::write_in_place(&dir.join("hostname"), &format!("{}\n", r.hostname))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    hosts::write_in_place(
        &dir.join("resolv.conf"),
        &hosts::resolv_conf(&host_resolv, &r.dns),
    )?;
    let peers = record::of_cache(layout, &r.namespace, &r.cache);
    hosts::write_in_place(&dir.join("hosts"), &hosts::hosts(&hosts_input(r, &peers)))?;
    Ok(())
}

fn hosts_input(r: &ContainerNet, peers: &[ContainerNet]) -> HostsInput {
    let gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
    HostsInput {
        me: r.ip.map(|ip| Peer {
            ip,
            names: r.names(),
        }),
        hostname: r.hostname.clone(),
        peers: peers
            .iter()
            .filter(|p| p.id != r.id)
            .filter_map(|p| {
                Some(Peer {
                    ip: p.ip?,
                    names: p.names(),
                })
            })
            .collect(),
        links: r.links.clone(),
        extra: r
            .add_hosts
            .iter()
            .map(|(n, ip)| {
                let ip = if ip == "host-gateway" {
                    gateway.clone()
                } else {
                    ip.clone()
                };
                (n.clone(), ip)
            })
            .collect(),
    }
}

/// Rewrites /etc/hosts of every container of the cache, under the network's lock so
/// that two containers coming up at once cannot leave a stale view behind.
fn refresh_peers(layout: &NetLayout, namespace: &str, cache: &str) -> Result<()> {
    let net_dir = layout.network_dir(namespace, cache);
    let _lock = if net_dir.exists() {
        record::lock(&net_dir, true)?
    } else {
        None
    };
    let peers = record::of_cache(layout, namespace, cache);
    for p in &peers {
        let file = layout.container_dir(&p.id).join("hosts");
        if file.exists() {
            hosts::write_in_place(&file, &hosts::hosts(&hosts_input(p, &peers)))?;
        }
    }
    Ok(())
}

/// CNI CHECK of `id`'s attachment against the result ADD cached: is its interface,
/// address, route and rules still what ADD made? None when it has no bridge network.
pub async fn check(layout: &NetLayout, id: &str) -> Result<Option<String>> {
    let Ok(r) = record::read(&layout.container_dir(id)) else {
        return Ok(None);
    };
    let Some(cached) = r.result.as_ref() else {
        return Ok(None);
    };
    let runner = Runner {
        bin_dirs: r.bin_dirs.clone(),
    };
    runner
        .check(&r.conflist, &attachment(&r, "eth0"), &runtime(&r), cached)
        .await?;
    let ip =
        r.ip.map(|i| i.to_string())
            .unwrap_or_else(|| "no address".into());
    Ok(Some(format!(
        "network {}: {ip} checked (CNI CHECK)",
        r.conflist.name
    )))
}

/// How often DEL is tried before giving up (plugins can fail transiently: iptables
/// lock contention, a netlink race).
const DEL_TRIES: u32 = 3;

/// Undoes [`prepare`] and [`Prepared::attach`] for `id`: CNI DEL (retried), namespace,
/// ports, files; then tells the peers. Nothing there is fine. When DEL keeps failing the
/// record stays, so the next command's reaper tries again.
pub async fn detach(layout: &NetLayout, id: &str) -> Result<()> {
    let dir = layout.container_dir(id);
    if !dir.exists() {
        return Ok(());
    }
    let lock = record::lock(&dir, true)?;
    detach_locked(layout, id, lock).await
}

/// [`detach`] for a caller that already holds the container's lock (flock is per open
/// file: taking it again in the same process would wait forever).
pub(super) async fn detach_locked(
    layout: &NetLayout,
    id: &str,
    _lock: Option<Flock<File>>,
) -> Result<()> {
    let dir = layout.container_dir(id);
    let Ok(r) = record::read(&dir) else {
        // Died before the record was written: only the dir (and maybe claims) exist.
        ports::release(&dir);
        netns::remove(&layout.netns(id))?;
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    };
    if r.result.is_some() || netns::is_mounted(&r.netns) {
        del_with_retries(&r).await?;
    }
    netns::remove(&r.netns)?;
    ports::release(&dir);
    std::fs::remove_dir_all(&dir).map_err(|e| NetworkError::file("remove", &dir, e))?;
    refresh_peers(layout, &r.namespace, &r.cache)
}

async fn del_with_retries(r: &ContainerNet) -> Result<()> {
    let runner = Runner {
        bin_dirs: r.bin_dirs.clone(),
    };
    let mut last = None;
    for attempt in 0..DEL_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match runner
            .del(
                &r.conflist,
                &attachment(r, "eth0"),
                &runtime(r),
                r.result.as_ref(),
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!("CNI DEL of {} (try {}): {e}", r.id, attempt + 1);
                last = Some(e);
            }
        }
    }
    Err(last
        .map(Into::into)
        .unwrap_or_else(|| crate::Error::Other("CNI DEL failed".into())))
}

/// Removes cache `cache`'s network: detaches what is still attached, deletes the bridge
/// nestcache made, releases its subnet and removes its leases.
pub async fn remove_network(layout: &NetLayout, namespace: &str, cache: &str) -> Result<()> {
    for r in record::of_cache(layout, namespace, cache) {
        detach(layout, &r.id).await?;
    }
    let dir = layout.network_dir(namespace, cache);
    if !dir.exists() {
        return Ok(());
    }
    let _lock = record::lock(&dir, true)?;
    let cfg = std::fs::read(dir.join("network.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<NetworkConfig>(&b).ok());
    if let Some(bridge) = cfg.and_then(|c| c.bridge) {
        delete_link(&bridge).await?;
    }
    subnet::release(&dir);
    std::fs::remove_dir_all(&dir).map_err(|e| NetworkError::file("remove", &dir, e))?;
    Ok(())
}

/// `ip link delete NAME`, when it exists.
async fn delete_link(name: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let out = tokio::process::Command::new("ip")
        .args(["link", "delete", name])
        .output()
        .await
        .map_err(|e| NetworkError::file("run ip link delete for", name, e))?;
    if !out.status.success() && Path::new("/sys/class/net").join(name).exists() {
        return Err(NetworkError::Container {
            container: name.to_string(),
            why: format!(
                "ip link delete {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
        .into());
    }
    Ok(())
}
