//! The files that make names work inside a container: /etc/hosts (localhost, itself, the
//! cache's other containers by name and alias, `--link` aliases, `--add-host`),
//! /etc/resolv.conf and /etc/hostname. They live in the container's network dir and are
//! bind-mounted in. /etc/hosts is rewritten as peers come and go; it is rewritten in
//! place (one write, then truncate), because a rename would leave the bind mount on the
//! old file.

use std::io::{Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::Path;

use super::error::NetworkError;

/// A container as its peers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: Ipv4Addr,
    /// Container name first, then its aliases.
    pub names: Vec<String>,
}

/// What one container's /etc/hosts says.
#[derive(Debug, Clone, Default)]
pub struct HostsInput {
    pub me: Option<Peer>,
    pub hostname: String,
    pub peers: Vec<Peer>,
    /// `--link NAME:ALIAS`: extra names for a peer, seen by this container only.
    pub links: Vec<(String, String)>,
    /// `--add-host NAME:IP`.
    pub extra: Vec<(String, String)>,
}

pub fn hosts(i: &HostsInput) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    for (name, ip) in &i.extra {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    if let Some(me) = &i.me {
        let mut names = vec![i.hostname.clone()];
        names.extend(me.names.iter().filter(|n| **n != i.hostname).cloned());
        s.push_str(&format!("{}\t{}\n", me.ip, names.join(" ")));
    }
    for p in &i.peers {
        let mut names = p.names.clone();
        for (target, alias) in &i.links {
            if p.names.first() == Some(target) && !names.contains(alias) {
                names.push(alias.clone());
            }
        }
        s.push_str(&format!("{}\t{}\n", p.ip, names.join(" ")));
    }
    s
}

/// DNS settings for /etc/resolv.conf.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// Docker's fallback when the host names only local resolvers, which a container cannot
/// reach from its own namespace.
const FALLBACK_SERVERS: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// The host's resolv.conf (`host`), with loopback resolvers dropped, overridden field by
/// field by `--dns`, `--dns-search`, `--dns-option`.
pub fn resolv_conf(host: &str, flags: &Dns) -> String {
    let mut servers = Vec::new();
    let mut search = Vec::new();
    let mut options = Vec::new();
    for line in host.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => servers.extend(f.next().map(str::to_string)),
            Some("search") | Some("domain") => search = f.map(str::to_string).collect(),
            Some("options") => options.extend(f.map(str::to_string)),
            _ => {}
        }
    }
    servers.retain(|s| !is_loopback(s));
    if !flags.servers.is_empty() {
        servers = flags.servers.clone();
    } else if servers.is_empty() {
        servers = FALLBACK_SERVERS.map(String::from).to_vec();
    }
    if !flags.search.is_empty() {
        search = flags.search.clone();
    }
    if !flags.options.is_empty() {
        options = flags.options.clone();
    }
    let mut s = String::new();
    for n in &servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !search.is_empty() && search != ["."] {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        s.push_str(&format!("options {}\n", options.join(" ")));
    }
    s
}

fn is_loopback(s: &str) -> bool {
    s.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Replaces `path`'s content in place (creating it if need be).
pub fn write_in_place(path: &Path, content: &str) -> Result<(), NetworkError> {
    let err = |e| NetworkError::file("write", path, e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.set_len(content.len() as u64).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lists_self_peers_links_and_extra() {
        let i = HostsInput {
            me: Some(Peer {
                ip: Ipv4Addr::new(10, 89, 0, 2),
                names: vec!["web".into(), "www".into()],
            }),
            hostname: "webhost".into(),
            peers: vec![Peer {
                ip: Ipv4Addr::new(10, 89, 0, 3),
                names: vec!["db".into()],
            }],
            links: vec![("db".into(), "database".into())],
            extra: vec![("gw".into(), "10.89.0.1".into())],
        };
        let h = hosts(&i);
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"), "{h}");
        assert!(h.contains("10.89.0.2\twebhost web www\n"), "{h}");
        assert!(h.contains("10.89.0.3\tdb database\n"), "{h}");
        assert!(h.contains("10.89.0.1\tgw\n"), "{h}");
    }

    #[test]
    fn resolv_drops_loopback_servers_and_flags_override() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nsearch a.example b.example\noptions edns0\n";
        let r = resolv_conf(host, &Dns::default());
        assert_eq!(
            r,
            "nameserver 192.0.2.1\nsearch a.example b.example\noptions edns0\n"
        );
        let only_local = resolv_conf("nameserver 127.0.0.53\n", &Dns::default());
        assert_eq!(only_local, "nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
        let flags = Dns {
            servers: vec!["192.0.2.9".into()],
            search: vec!["c.example".into()],
            options: vec!["ndots:2".into()],
        };
        assert_eq!(
            resolv_conf(host, &flags),
            "nameserver 192.0.2.9\nsearch c.example\noptions ndots:2\n"
        );
    }

    #[test]
    fn rewrite_keeps_the_inode_and_shrinks() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("hosts");
        write_in_place(&p, "a long first version\n").expect("write");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).expect("stat"));
        write_in_place(&p, "short\n").expect("rewrite");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "short\n");
        let ino2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).expect("stat"));
        assert_eq!(ino, ino2);
    }
}
