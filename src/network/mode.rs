//! `--net` and the options that go with it.

use std::path::PathBuf;

use super::ports::PortRequest;
use crate::error::Error;

/// Where the CNI reference plugins are looked for (Debian's package, then upstream's).
pub const DEFAULT_CNI_BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// Network mode of a nested container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetMode {
    /// A network namespace of its own with only loopback.
    None,
    /// The host's network namespace, with the host's /etc/resolv.conf and /etc/hosts.
    Host,
    /// The cache's bridge network, through CNI.
    Bridge,
    /// Another nested container's network namespace (and its hosts files), as a pod's
    /// containers share one.
    Container(String),
}

impl std::str::FromStr for NetMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "none" => Ok(NetMode::None),
            "host" => Ok(NetMode::Host),
            "bridge" | "default" => Ok(NetMode::Bridge),
            other => match other.strip_prefix("container:") {
                Some(id) if !id.is_empty() => Ok(NetMode::Container(id.to_string())),
                _ => Err(Error::Invalid(format!(
                    "invalid --net {other:?}: expected bridge, none, host or container:ID"
                ))),
            },
        }
    }
}

impl NetMode {
    /// With a network namespace the container does not share with the host.
    pub fn own_namespace(&self) -> bool {
        !matches!(self, NetMode::Host)
    }
}

/// `--cni-bin-dir` if given, else the default dirs.
pub fn bin_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect()
    } else {
        given.to_vec()
    }
}

/// The mode when `--net` is not given: `NESTCACHE_NET` if set, else bridge when the
/// bridge plugin is installed, else none (and the caller says so in one line).
pub fn default_mode(bin_dirs: &[PathBuf]) -> Result<(NetMode, Option<String>), Error> {
    if let Ok(m) = std::env::var("NESTCACHE_NET") {
        return Ok((m.parse()?, None));
    }
    if bin_dirs.iter().any(|d| d.join("bridge").is_file()) {
        return Ok((NetMode::Bridge, None));
    }
    let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    Ok((
        NetMode::None,
        Some(format!(
            "no CNI plugins in {} (install containernetworking-plugins): running with --net none",
            dirs.join(":")
        )),
    ))
}

/// Everything about a nested container's network beyond its mode.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// `-p`.
    pub publish: Vec<PortRequest>,
    /// `-P`: the image's ExposedPorts onto free host ports.
    pub publish_all: bool,
    /// `--network-alias`: more names the cache's other containers know it by.
    pub aliases: Vec<String>,
    /// `--link NAME[:ALIAS]`.
    pub links: Vec<(String, String)>,
    /// `--add-host NAME:IP` (IP may be `host-gateway`: the bridge's address).
    pub add_hosts: Vec<(String, String)>,
    pub dns: super::hosts::Dns,
    /// `--cni-conf-dir`: a network config of the user's instead of the cache's bridge.
    pub cni_conf_dir: Option<PathBuf>,
    /// `--cni-bin-dir` (may repeat).
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// `--link NAME[:ALIAS]`.
pub fn parse_link(s: &str) -> Result<(String, String), Error> {
    let (name, alias) = s.split_once(':').unwrap_or((s, s));
    if !valid_name(name) || !valid_name(alias) {
        return Err(Error::Invalid(format!(
            "invalid --link {s:?}: expected NAME[:ALIAS] (letters, digits, . _ -)"
        )));
    }
    Ok((name.to_string(), alias.to_string()))
}

/// `--add-host NAME:IP` (Docker also takes `NAME=IP`).
pub fn parse_add_host(s: &str) -> Result<(String, String), Error> {
    let (name, ip) = s
        .split_once('=')
        .or_else(|| s.split_once(':'))
        .unwrap_or((s, ""));
    let ip_ok = ip == "host-gateway"
        || ip
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok();
    if !valid_name(name) || !ip_ok {
        return Err(Error::Invalid(format!(
            "invalid --add-host {s:?}: expected NAME:IP (or NAME:host-gateway)"
        )));
    }
    Ok((name.to_string(), ip.trim_matches(['[', ']']).to_string()))
}

/// A host name or alias as /etc/hosts can hold it.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("bridge".parse::<NetMode>().unwrap(), NetMode::Bridge);
        assert_eq!("none".parse::<NetMode>().unwrap(), NetMode::None);
        assert_eq!(
            "container:web".parse::<NetMode>().unwrap(),
            NetMode::Container("web".into())
        );
        for bad in ["container:", "macvlan", ""] {
            let e = bad.parse::<NetMode>().unwrap_err().to_string();
            assert!(e.contains("bridge, none, host or container:ID"), "{e}");
        }
    }

    #[test]
    fn links_and_hosts_parse_and_hostile_ones_fail() {
        assert_eq!(parse_link("db").unwrap(), ("db".into(), "db".into()));
        assert_eq!(
            parse_link("db:database").unwrap(),
            ("db".into(), "database".into())
        );
        assert_eq!(
            parse_add_host("gw:10.0.0.1").unwrap(),
            ("gw".into(), "10.0.0.1".into())
        );
        assert_eq!(parse_add_host("h6:[::1]").unwrap().1, "::1");
        assert_eq!(parse_add_host("h=host-gateway").unwrap().1, "host-gateway");
        for bad in [
            "a b:10.0.0.1",
            "x:notanip",
            "x",
            "evil\n1.2.3.4 bank:1.2.3.4",
        ] {
            assert!(parse_add_host(bad).is_err(), "{bad:?}");
        }
        assert!(parse_link("a\nb").is_err());
    }
}
