//! Published ports: `-p [IP:][HOST:]CONTAINER[/tcp|/udp]` with ranges, `-P` (the image's
//! ExposedPorts), and the host-wide check that a host port is free — neither bound by a
//! host process nor published by another nested container (portmap's DNAT binds nothing,
//! so only nestcache's own claims can tell) — before anything starts.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::claims::Claims;
use super::error::NetworkError;
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One host port DNAT'ed to a container port: what portmap's `portMappings` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    pub protocol: Proto,
    /// Unset: every host address.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

impl PortMapping {
    /// `80/tcp -> 127.0.0.1:8080`, as `docker port` prints.
    pub fn display(&self) -> String {
        format!(
            "{}/{} -> {}:{}",
            self.container_port,
            self.protocol.as_str(),
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port
        )
    }
}

/// Which host port(s) a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostPorts {
    /// Exactly this one.
    Exact(u16),
    /// Any free one in this range (`-p 8000-8010:80`); `1..=65535`-ish for "any".
    Range(u16, u16),
    /// A free ephemeral port.
    Any,
}

/// One container port to publish, before host ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRequest {
    pub host_ip: Option<Ipv4Addr>,
    pub host: HostPorts,
    pub container_port: u16,
    pub protocol: Proto,
}

fn invalid(spec: &str, why: &str) -> Error {
    Error::Invalid(format!(
        "invalid -p {spec:?}: {why} (expected [IP:][HOST:]CONTAINER[/tcp|/udp], ports or ranges like 8000-8010)"
    ))
}

fn range(spec: &str, s: &str) -> Result<(u16, u16), Error> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid(spec, &format!("{p:?} is not a port (1-65535)"))),
        Ok(n) => Ok(n),
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(invalid(spec, &format!("range {s} runs backwards")));
            }
            Ok((a, b))
        }
        None => port(s).map(|p| (p, p)),
    }
}

/// Parses one `-p` value into its requests (one per container port).
pub fn parse_publish(spec: &str) -> Result<Vec<PortRequest>, Error> {
    let (addr, proto) = match spec.rsplit_once('/') {
        Some((a, "tcp")) => (a, Proto::Tcp),
        Some((a, "udp")) => (a, Proto::Udp),
        Some((_, p)) => return Err(invalid(spec, &format!("protocol {p:?} is not tcp or udp"))),
        None => (spec, Proto::Tcp),
    };
    let mut parts = addr.rsplitn(3, ':');
    let container = parts.next().unwrap_or_default();
    let host = parts.next();
    let ip = parts.next();
    let host_ip = match ip.map(|i| i.trim_start_matches('[').trim_end_matches(']')) {
        None | Some("") => None,
        Some(i) => match i.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) if v4.is_unspecified() => None,
            Ok(std::net::IpAddr::V4(v4)) => Some(v4),
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(invalid(
                    spec,
                    "the cache network is IPv4: an IPv6 host address cannot reach it",
                ))
            }
            Err(_) => return Err(invalid(spec, &format!("{i:?} is not an IP address"))),
        },
    };
    let (c0, c1) = range(spec, container)?;
    let hosts = match host {
        None | Some("") => None,
        Some(h) => Some(range(spec, h)?),
    };
    let count = u32::from(c1 - c0) + 1;
    let request = |i: u16, host| PortRequest {
        host_ip,
        host,
        container_port: c0 + i,
        protocol: proto,
    };
    Ok(match hosts {
        None => (0..count as u16)
            .map(|i| request(i, HostPorts::Any))
            .collect(),
        Some((h0, h1)) if h0 == h1 && count == 1 => vec![request(0, HostPorts::Exact(h0))],
        // Docker's `-p 8000-8010:80`: the first free port of the range.
        Some((h0, h1)) if count == 1 => vec![request(0, HostPorts::Range(h0, h1))],
        Some((h0, h1)) if u32::from(h1 - h0) + 1 == count => (0..count as u16)
            .map(|i| request(i, HostPorts::Exact(h0 + i)))
            .collect(),
        Some(_) => {
            return Err(invalid(
                spec,
                "the host and container ranges differ in length",
            ))
        }
    })
}

/// `-P`: the image config's ExposedPorts (`"80/tcp"`, `"53/udp"`, `"8080"`) onto free
/// host ports on every address.
pub fn exposed_requests(exposed: &[String]) -> Result<Vec<PortRequest>, Error> {
    let mut out = Vec::new();
    for e in exposed {
        let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
        let mut parsed = parse_publish(&format!("{port}/{proto}")).map_err(|_| {
            Error::Invalid(format!(
                "the image exposes {e:?}, which is not PORT[/tcp|/udp]"
            ))
        })?;
        out.append(&mut parsed);
    }
    Ok(out)
}

fn claim_key(m: &PortMapping) -> String {
    format!(
        "{}-{}-{}",
        m.protocol.as_str(),
        m.host_port,
        m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED)
    )
}

/// Whether two host bindings collide: same protocol and port, and one address covers
/// the other.
fn overlaps(key: &str, m: &PortMapping) -> bool {
    let mut it = key.splitn(3, '-');
    let (Some(proto), Some(port), Some(ip)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let ip: Ipv4Addr = ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let mine = m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    proto == m.protocol.as_str()
        && port == m.host_port.to_string()
        && (ip == mine || ip.is_unspecified() || mine.is_unspecified())
}

/// Whether a host process has the port bound (the address nobody may take from it).
fn bound_on_host(m: &PortMapping) -> bool {
    let addr = (m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), m.host_port);
    let r = match m.protocol {
        Proto::Tcp => TcpListener::bind(addr).map(drop),
        Proto::Udp => UdpSocket::bind(addr).map(drop),
    };
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

fn in_use(m: &PortMapping, holder: String) -> NetworkError {
    NetworkError::PortInUse {
        ip: m.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
        port: m.host_port,
        proto: m.protocol.as_str().to_string(),
        holder,
    }
}

/// Why `m` cannot be had, if it cannot.
fn unavailable(m: &PortMapping, live: &[super::claims::Claim]) -> Option<NetworkError> {
    if let Some(c) = live.iter().find(|c| overlaps(&c.key, m)) {
        let who = c
            .owner
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Some(in_use(
            m,
            format!("already published by nested container {who}"),
        ));
    }
    bound_on_host(m).then(|| in_use(m, "in use on the host".into()))
}

/// Chooses host ports for `requests` and claims them, host-wide, for `owner` (the
/// container's network dir). All or nothing: on a conflict nothing is claimed.
pub fn claim(requests: &[PortRequest], owner: &Path) -> Result<Vec<PortMapping>, NetworkError> {
    let claims = Claims::lock("ports")?;
    let mut live = claims.live();
    let mut out: Vec<PortMapping> = Vec::new();
    for r in requests {
        let m = choose(r, &live)?;
        live.push(super::claims::Claim {
            key: claim_key(&m),
            owner: owner.to_path_buf(),
        });
        out.push(m);
    }
    for m in &out {
        if let Err(e) = claims.claim(&claim_key(m), owner) {
            claims.release(owner);
            return Err(e);
        }
    }
    Ok(out)
}

/// Releases the ports `owner` claimed.
pub fn release(owner: &Path) {
    match Claims::lock("ports") {
        Ok(c) => c.release(owner),
        Err(e) => tracing::warn!("releasing the host ports of {}: {e}", owner.display()),
    }
}

fn choose(r: &PortRequest, live: &[super::claims::Claim]) -> Result<PortMapping, NetworkError> {
    let at = |p: u16| PortMapping {
        host_port: p,
        container_port: r.container_port,
        protocol: r.protocol,
        host_ip: r.host_ip,
    };
    match r.host {
        HostPorts::Exact(p) => match unavailable(&at(p), live) {
            Some(e) => Err(e),
            None => Ok(at(p)),
        },
        HostPorts::Range(a, b) => (a..=b)
            .map(at)
            .find(|m| unavailable(m, live).is_none())
            .ok_or_else(|| in_use(&at(a), format!("taken, and so is every port up to {b}"))),
        HostPorts::Any => {
            // The kernel's choice of a free ephemeral port, unless another nested
            // container has it published; a few tries are plenty.
            for _ in 0..16 {
                let p = ephemeral(r)?;
                if unavailable(&at(p), live).is_none() {
                    return Ok(at(p));
                }
            }
            Err(in_use(
                &at(0),
                "unavailable: no free ephemeral port found".into(),
            ))
        }
    }
}

fn ephemeral(r: &PortRequest) -> Result<u16, NetworkError> {
    let addr = (r.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), 0);
    let port = match r.protocol {
        Proto::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
        Proto::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
    };
    port.map(|a| a.port())
        .map_err(|e| NetworkError::file("bind a free port on", format!("{}", addr.0), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> PortRequest {
        let v = parse_publish(s).expect(s);
        assert_eq!(v.len(), 1, "{s}");
        v[0]
    }

    #[test]
    fn docker_forms_parse() {
        let r = one("127.0.0.1:8080:80/udp");
        assert_eq!(r.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(r.host, HostPorts::Exact(8080));
        assert_eq!((r.container_port, r.protocol), (80, Proto::Udp));
        assert_eq!(one("8080:80").host_ip, None);
        assert_eq!(one("0.0.0.0:8080:80").host_ip, None);
        assert_eq!(one("80").host, HostPorts::Any);
        assert_eq!(one("127.0.0.1::80").host, HostPorts::Any);
        assert_eq!(one("8000-8010:80").host, HostPorts::Range(8000, 8010));
        let v = parse_publish("9000-9002:80-82/tcp").expect("range");
        let pairs: Vec<_> = v.iter().map(|r| (r.host, r.container_port)).collect();
        assert_eq!(
            pairs,
            [
                (HostPorts::Exact(9000), 80),
                (HostPorts::Exact(9001), 81),
                (HostPorts::Exact(9002), 82)
            ]
        );
        assert_eq!(parse_publish("80-81").expect("two").len(), 2);
    }

    #[test]
    fn bad_forms_are_one_line() {
        for (s, want) in [
            ("", "not a port"),
            ("0:80", "not a port"),
            ("70000:80", "not a port"),
            ("8080:80/sctp", "not tcp or udp"),
            ("x:8080:80", "not an IP"),
            ("[::1]:8080:80", "IPv6"),
            ("9000-9001:80-82", "differ in length"),
            ("82-80", "backwards"),
            ("1:2:3:4", "not an IP"),
        ] {
            let e = parse_publish(s).expect_err(s).to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{s:?}: {e}");
        }
    }

    #[test]
    fn exposed_ports_default_to_tcp_and_any_host_port() {
        let v = exposed_requests(&["80/tcp".into(), "53/udp".into(), "8080".into()]).expect("ok");
        assert_eq!(v.len(), 3);
        assert!(v
            .iter()
            .all(|r| r.host == HostPorts::Any && r.host_ip.is_none()));
        assert_eq!(v[1].protocol, Proto::Udp);
        assert!(exposed_requests(&["http".into()]).is_err());
    }

    #[test]
    fn overlap_covers_the_wildcard_address() {
        let m = |ip: Option<Ipv4Addr>| PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: ip,
        };
        assert!(overlaps("tcp-8080-0.0.0.0", &m(Some(Ipv4Addr::LOCALHOST))));
        assert!(overlaps("tcp-8080-127.0.0.1", &m(None)));
        assert!(!overlaps(
            "tcp-8080-127.0.0.2",
            &m(Some(Ipv4Addr::LOCALHOST))
        ));
        assert!(!overlaps("udp-8080-0.0.0.0", &m(None)));
        assert!(!overlaps("tcp-8081-0.0.0.0", &m(None)));
        assert_eq!(m(None).display(), "80/tcp -> 0.0.0.0:8080");
    }
}
