//! Where a nested container's network lives on disk, and what is kept about it: its dir
//! `<state>/net/containers/<id>/` (record, lock, hosts, resolv.conf, hostname), its
//! namespace `<state>/net/netns/<id>`, its cache's network `<state>/net/networks/<ns>/<cache>/`.
//! The record keeps the exact config list and the ADD result, so DEL undoes what ADD did
//! even if the cache's config changed since.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cni::ConfList;
use super::error::NetworkError;
use super::ports::PortMapping;

/// Paths under `<state>/net/`.
#[derive(Debug, Clone)]
pub struct NetLayout {
    pub state_root: PathBuf,
    root: PathBuf,
}

impl NetLayout {
    pub fn new(state_root: &Path) -> NetLayout {
        NetLayout {
            state_root: state_root.to_path_buf(),
            root: state_root.join("net"),
        }
    }
    pub fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }
    pub fn netns(&self, id: &str) -> PathBuf {
        self.root.join("netns").join(id)
    }
    pub fn networks_dir(&self, namespace: &str) -> PathBuf {
        self.root.join("networks").join(namespace)
    }
    pub fn network_dir(&self, namespace: &str, cache: &str) -> PathBuf {
        self.networks_dir(namespace).join(cache)
    }
}

/// What is kept about one attached container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerNet {
    pub id: String,
    pub namespace: String,
    pub cache: String,
    pub hostname: String,
    pub aliases: Vec<String>,
    pub links: Vec<(String, String)>,
    pub add_hosts: Vec<(String, String)>,
    pub dns: super::hosts::Dns,
    pub ip: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub ports: Vec<PortMapping>,
    pub netns: PathBuf,
    pub conflist: ConfList,
    pub bin_dirs: Vec<PathBuf>,
    /// The ADD result, once ADD succeeded (CHECK and DEL are given it).
    pub result: Option<Value>,
}

/// The container's end of its network, as `inspect` shows it (Docker's
/// `NetworkSettings`): from the ADD result, the interface inside the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: String,
}

impl ContainerNet {
    /// The address, prefix, gateway and MAC of the container's interface: the result's
    /// IPv4 entry and the interface it names (or, failing that, the one with a sandbox).
    pub fn endpoint(&self) -> Endpoint {
        let empty = Vec::new();
        let result = self.result.as_ref();
        let list = |k: &str| result.and_then(|r| r[k].as_array()).unwrap_or(&empty);
        let interfaces = list("interfaces");
        let v4 = list("ips").iter().find_map(|ip| {
            let (addr, len) = ip["address"].as_str()?.split_once('/')?;
            Some((addr.parse::<Ipv4Addr>().ok()?, len.parse::<u8>().ok()?, ip))
        });
        let named = v4
            .and_then(|(_, _, ip)| ip["interface"].as_u64())
            .and_then(|i| interfaces.get(usize::try_from(i).ok()?));
        let iface = named.or_else(|| {
            interfaces
                .iter()
                .find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
        });
        let gateway = v4
            .and_then(|(_, _, ip)| ip["gateway"].as_str()?.parse().ok())
            .or(self.gateway);
        Endpoint {
            ip: v4.map(|(a, _, _)| a).or(self.ip),
            prefix_len: v4.map_or(0, |(_, l, _)| l),
            gateway,
            mac: iface
                .and_then(|i| i["mac"].as_str())
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// Every name the cache's other containers know it by.
    pub fn names(&self) -> Vec<String> {
        let mut n = vec![self.id.clone()];
        n.extend(self.aliases.iter().filter(|a| **a != self.id).cloned());
        n
    }
}

pub fn record_file(dir: &Path) -> PathBuf {
    dir.join("record.json")
}

pub fn read(dir: &Path) -> Result<ContainerNet, NetworkError> {
    let file = record_file(dir);
    let bytes = std::fs::read(&file).map_err(|e| NetworkError::file("read", &file, e))?;
    serde_json::from_slice(&bytes).map_err(|e| NetworkError::Config {
        file,
        why: e.to_string(),
    })
}

/// Writes the record durably by rename, so a reader never sees half of one.
pub fn write(dir: &Path, r: &ContainerNet) -> Result<(), NetworkError> {
    let file = record_file(dir);
    let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
    crate::fsutil::write_atomic(&file, &bytes).map_err(|e| NetworkError::file("write", &file, e))
}

/// Every record in the layout (unreadable ones skipped), with its dir.
pub fn all(layout: &NetLayout) -> Vec<(PathBuf, ContainerNet)> {
    let Ok(entries) = std::fs::read_dir(layout.containers_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| read(&e.path()).ok().map(|r| (e.path(), r)))
        .collect()
}

/// The attached containers of one cache's network.
pub fn of_cache(layout: &NetLayout, namespace: &str, cache: &str) -> Vec<ContainerNet> {
    all(layout)
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.namespace == namespace && r.cache == cache)
        .collect()
}

/// An flock on `<dir>/lock`: held by whoever sets up or tears down what `dir` stands for.
pub fn lock(dir: &Path, wait: bool) -> Result<Option<Flock<File>>, NetworkError> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| NetworkError::file("open", &path, e))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(NetworkError::file("lock", &path, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(result: Value) -> ContainerNet {
        serde_json::from_value(serde_json::json!({
            "id": "c1", "namespace": "ns", "cache": "ci", "hostname": "c1",
            "aliases": [], "links": [], "add_hosts": [],
            "dns": {"servers": [], "search": [], "options": []},
            "ip": null, "gateway": null, "ports": [], "netns": "/n",
            "conflist": {"name": "nestcache-ci", "cniVersion": "1.0.0", "plugins": []},
            "bin_dirs": [], "result": result
        }))
        .unwrap()
    }

    #[test]
    fn endpoint_from_the_add_result() {
        let r = record(serde_json::json!({
            "interfaces": [
                {"name": "br", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "eth0", "mac": "de:ac:10:4d:38:f1", "sandbox": "/n"}
            ],
            "ips": [
                {"address": "fd00::2/64", "interface": 1},
                {"address": "10.89.0.7/24", "gateway": "10.89.0.1", "interface": 1}
            ]
        }));
        assert_eq!(
            r.endpoint(),
            Endpoint {
                ip: Some(Ipv4Addr::new(10, 89, 0, 7)),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 89, 0, 1)),
                mac: "de:ac:10:4d:38:f1".into(),
            }
        );
    }

    #[test]
    fn a_malformed_result_yields_what_it_can() {
        // An interface index out of range, wrong types: the sandbox interface, no panic.
        let r = record(serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": "de:ad:be:ef:00:01", "sandbox": "/n"}],
            "ips": [{"address": "10.0.0.2/99999", "interface": 7}, {"address": 5}]
        }));
        assert_eq!(r.endpoint().ip, None);
        assert_eq!(r.endpoint().mac, "de:ad:be:ef:00:01");
        assert_eq!(record(Value::Null).endpoint(), Endpoint::default());
        assert_eq!(
            record(serde_json::json!("x")).endpoint(),
            Endpoint::default()
        );
    }
}
