//! A cache's network: the built-in bridge (its own bridge device, a subnet from the pool,
//! host-local leases in the network's dir) or the user's `--cni-conf-dir` config; kept as
//! `network.json` in the network's dir so that every container of the cache gets the
//! same, and `cache rm` knows what to remove.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::cni::{ConfList, CNI_VERSION};
use super::error::NetworkError;
use super::subnet::{self, Ipv4Net};
use crate::error::Result;

/// What `network.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The bridge device nestcache made (None for a user's config: not ours to delete).
    pub bridge: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub conflist: ConfList,
}

/// Bridge names are host-wide and at most 15 bytes: `nc` + 12 hex digits of the state
/// dir, namespace and cache name.
pub fn bridge_name(state_root: &Path, namespace: &str, cache: &str) -> String {
    let mut h = Sha256::new();
    h.update(state_root.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(namespace.as_bytes());
    h.update([0]);
    h.update(cache.as_bytes());
    format!("nc{}", &hex::encode(h.finalize())[..12])
}

/// The cache's bridge network.
fn builtin(dir: &Path, bridge: &str, net: Ipv4Net, cache: &str) -> NetworkConfig {
    let gateway = net.host(1);
    let plugins = vec![
        json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            // A container reaches its own published ports through the bridge.
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": net.to_string(), "gateway": gateway.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("ipam"),
            },
        }),
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        json!({"type": "firewall"}),
    ];
    NetworkConfig {
        bridge: Some(bridge.to_string()),
        subnet: Some(net.to_string()),
        gateway: Some(gateway),
        conflist: ConfList {
            name: format!("nestcache-{cache}"),
            cni_version: CNI_VERSION.to_string(),
            plugins,
        },
    }
}

/// The first `.conflist`, `.conf` or `.json` file of `dir` in name order (libcni's
/// choice of the default network).
pub fn load_user(dir: &Path) -> Result<ConfList> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| NetworkError::file("read the CNI config dir", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    let file = files.first().ok_or_else(|| NetworkError::Config {
        file: dir.to_path_buf(),
        why: "holds no .conflist, .conf or .json file".into(),
    })?;
    let bytes = std::fs::read(file).map_err(|e| NetworkError::file("read", file, e))?;
    Ok(ConfList::parse(file, &bytes)?)
}

/// The cache's network config: `network.json` in `dir` if there, else made now (a subnet
/// claimed, or the user's config read) and written. The caller holds the network's lock.
pub fn ensure(
    dir: &Path,
    bridge: &str,
    cache: &str,
    user_dir: Option<&Path>,
) -> Result<NetworkConfig> {
    let file = dir.join("network.json");
    if let Ok(bytes) = std::fs::read(&file) {
        let cfg: NetworkConfig =
            serde_json::from_slice(&bytes).map_err(|e| NetworkError::Config {
                file: file.clone(),
                why: e.to_string(),
            })?;
        return Ok(cfg);
    }
    std::fs::create_dir_all(dir).map_err(|e| NetworkError::file("create", dir, e))?;
    let cfg = match user_dir {
        Some(u) => NetworkConfig {
            bridge: None,
            subnet: None,
            gateway: None,
            conflist: load_user(u)?,
        },
        None => builtin(dir, bridge, subnet::claim(dir)?, cache),
    };
    let bytes = serde_json::to_vec_pretty(&cfg).unwrap_or_default();
    crate::fsutil::write_atomic(&file, &bytes)
        .map_err(|e| NetworkError::file("write", &file, e))?;
    Ok(cfg)
}

/// The plugins one container is attached with: portmap only when it publishes ports
/// (one plugin exec less on the start path otherwise).
pub fn for_container(cfg: &NetworkConfig, publishes: bool) -> ConfList {
    let mut list = cfg.conflist.clone();
    if cfg.bridge.is_some() && !publishes {
        list.plugins
            .retain(|p| p.get("type").and_then(|t| t.as_str()) != Some("portmap"));
    }
    list
}

/// The loopback network every own namespace gets (on `lo`).
pub fn loopback() -> ConfList {
    ConfList {
        name: "nestcache-loopback".into(),
        cni_version: CNI_VERSION.into(),
        plugins: vec![json!({"type": "loopback"})],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_and_differ() {
        let a = bridge_name(Path::new("/s"), "ns", "c1");
        let b = bridge_name(Path::new("/s"), "ns", "c2");
        assert_eq!(a.len(), 14);
        assert!(a.len() <= 15 && a != b);
    }

    #[test]
    fn portmap_only_for_publishing_containers() {
        let d = tempfile::tempdir().expect("tmp");
        let cfg = builtin(d.path(), "nc0", "10.89.7.0/24".parse().unwrap(), "c");
        let types = |l: &ConfList| -> Vec<String> {
            l.plugins
                .iter()
                .map(|p| p["type"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(
            types(&for_container(&cfg, true)),
            ["bridge", "portmap", "firewall"]
        );
        assert_eq!(types(&for_container(&cfg, false)), ["bridge", "firewall"]);
        assert_eq!(cfg.gateway, Some("10.89.7.1".parse().unwrap()));
    }

    #[test]
    fn user_dir_takes_the_first_config_by_name() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("10-a.conf"), r#"{"name":"a","type":"ptp"}"#).unwrap();
        std::fs::write(d.path().join("00-readme.txt"), "x").unwrap();
        assert_eq!(load_user(d.path()).expect("load").name, "a");
        let empty = tempfile::tempdir().expect("tmp");
        assert!(load_user(empty.path())
            .unwrap_err()
            .to_string()
            .contains("holds no"));
    }
}
