//! The subnet of a cache's bridge: the first /24 of the pool (`NESTCACHE_SUBNET_POOL`,
//! default 10.89.0.0/16; a comma-separated list of CIDRs) that overlaps none of the host's
//! routes and no other nestcache network on this host. In a pod the bridge lives on the
//! node, so the node's routes are the ones checked (the pod shares the node's network
//! only with hostNetwork; otherwise list the node's ranges out of the pool).

use std::net::Ipv4Addr;
use std::path::Path;

use super::claims::Claims;
use super::error::NetworkError;
use crate::error::Error;

pub const DEFAULT_POOL: &str = "10.89.0.0/16";
/// Each cache's bridge gets one of these.
pub const PREFIX: u8 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn new(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
        let a = u32::from(addr) & Self::mask(prefix);
        Ipv4Net {
            addr: a.into(),
            prefix,
        }
    }

    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Self::mask(p);
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The `n`th address inside (1 = the gateway nestcache gives the bridge).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        (u32::from(self.addr) + n).into()
    }

    /// The /`prefix` subnets inside, in order.
    fn subnets(&self, prefix: u8) -> impl Iterator<Item = Ipv4Net> {
        let base = u32::from(self.addr);
        let count = if prefix >= self.prefix {
            1u64 << (prefix - self.prefix)
        } else {
            0
        };
        let step = 1u64 << (32 - u32::from(prefix));
        (0..count).map(move |i| Ipv4Net::new(((base as u64 + i * step) as u32).into(), prefix))
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::Invalid(format!(
                "invalid subnet {s:?}: expected an IPv4 CIDR like 10.89.0.0/16"
            ))
        };
        let (a, p) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Ok(Ipv4Net::new(addr, prefix))
    }
}

/// The pool: `NESTCACHE_SUBNET_POOL`, else the default.
pub fn pool() -> Result<Vec<Ipv4Net>, Error> {
    let text = std::env::var("NESTCACHE_SUBNET_POOL").unwrap_or_else(|_| DEFAULT_POOL.into());
    let nets: Vec<Ipv4Net> = text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if nets.is_empty() || nets.iter().any(|n| n.prefix > PREFIX) {
        return Err(Error::Invalid(format!(
            "invalid NESTCACHE_SUBNET_POOL {text:?}: give CIDRs of /{PREFIX} or larger"
        )));
    }
    Ok(nets)
}

/// The host's IPv4 routes but the default one (`/proc/net/route`).
pub fn host_routes() -> Vec<Ipv4Net> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    parse_routes(&text)
}

fn parse_routes(text: &str) -> Vec<Ipv4Net> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dst, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u32::from(mask).count_ones() as u8;
            (prefix > 0).then(|| Ipv4Net::new(dst, prefix))
        })
        .collect()
}

fn claim_key(n: &Ipv4Net) -> String {
    format!("{}-{}", n.addr, n.prefix)
}

/// Chooses and claims a free subnet for the network whose dir is `owner`.
pub fn claim(owner: &Path) -> Result<Ipv4Net, Error> {
    let pool = pool()?;
    let claims = Claims::lock("subnets")?;
    let taken: Vec<Ipv4Net> = claims
        .live()
        .iter()
        .filter_map(|c| c.key.replacen('-', "/", 1).parse().ok())
        .chain(host_routes())
        .collect();
    let free = pool
        .iter()
        .flat_map(|p| p.subnets(PREFIX))
        .find(|s| !taken.iter().any(|t| t.overlaps(s)))
        .ok_or_else(|| NetworkError::NoSubnet {
            pool: pool
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            prefix: PREFIX,
        })?;
    claims.claim(&claim_key(&free), owner)?;
    Ok(free)
}

pub fn release(owner: &Path) {
    match Claims::lock("subnets") {
        Ok(c) => c.release(owner),
        Err(e) => tracing::warn!("releasing the subnet of {}: {e}", owner.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect(s)
    }

    #[test]
    fn cidrs_parse_normalise_and_overlap() {
        assert_eq!(net("10.89.3.7/24").to_string(), "10.89.3.0/24");
        assert!(net("10.89.0.0/16").overlaps(&net("10.89.200.0/24")));
        assert!(net("10.89.200.0/24").overlaps(&net("10.89.0.0/16")));
        assert!(!net("10.89.1.0/24").overlaps(&net("10.89.2.0/24")));
        assert_eq!(net("10.89.1.0/24").host(1), Ipv4Addr::new(10, 89, 1, 1));
        for bad in ["10.89.0.0", "10.89.0.0/33", "x/16", "::1/64"] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let subs: Vec<_> = net("10.0.0.0/23")
            .subnets(24)
            .map(|n| n.to_string())
            .collect();
        assert_eq!(subs, ["10.0.0.0/24", "10.0.1.0/24"]);
    }

    #[test]
    fn routes_from_proc_skip_the_default() {
        let text =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_routes(text);
        if cfg!(target_endian = "little") {
            assert_eq!(r, vec![net("192.168.0.0/24")]);
        }
        assert_eq!(r.len(), 1);
    }
}
