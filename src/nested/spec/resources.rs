//! Resource flags as OCI spec fields: memory, CPU, pids, rlimits, OOM score, /dev/shm
//! size, sysctls. Parsed the way `docker run` parses them (sizes in binary units,
//! `--cpus` as a fraction of CPUs, `--ulimit name=soft[:hard]`); runc writes them into
//! the container's cgroup (v1 or v2) and process.

use std::collections::HashMap;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, PosixRlimit,
    PosixRlimitBuilder, PosixRlimitType,
};

use super::oci;
use crate::error::{Error, Result};

/// CFS period `--cpus` is expressed in, as Docker uses (100 ms).
const CPU_PERIOD_US: u64 = 100_000;

/// Docker's default /dev/shm size.
pub const DEFAULT_SHM_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// `--memory`, bytes.
    pub memory: Option<i64>,
    /// `--memory-swap`: memory + swap in bytes, -1 unlimited.
    pub memory_swap: Option<i64>,
    /// `--memory-reservation`, bytes (soft limit).
    pub memory_reservation: Option<i64>,
    /// `--cpus`, e.g. 1.5.
    pub cpus: Option<f64>,
    /// `--cpu-shares`, relative weight.
    pub cpu_shares: Option<u64>,
    /// `--cpuset-cpus`, e.g. `0-1,3`.
    pub cpuset_cpus: Option<String>,
    /// `--pids-limit`; 0 or -1 is unlimited.
    pub pids_limit: Option<i64>,
    pub ulimits: Vec<Ulimit>,
    /// `--oom-score-adj`, -1000..=1000.
    pub oom_score_adj: Option<i32>,
    /// `--shm-size`, bytes (default 64 MiB).
    pub shm_size: Option<u64>,
    pub sysctls: HashMap<String, String>,
}

/// `--ulimit name=soft[:hard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ulimit {
    pub kind: PosixRlimitType,
    pub soft: u64,
    pub hard: u64,
}

impl std::str::FromStr for Ulimit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid --ulimit {s:?}: {why} (expected NAME=SOFT[:HARD], e.g. nofile=1024:2048)"
            ))
        };
        let (name, values) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let kind = rlimit_kind(name).ok_or_else(|| bad(&format!("unknown limit {name:?}")))?;
        let (soft, hard) = match values.split_once(':') {
            Some((s, h)) => (s, h),
            None => (values, values),
        };
        let num = |v: &str| -> Result<u64> {
            match v {
                // Docker's spelling of RLIM_INFINITY.
                "-1" | "unlimited" => Ok(u64::MAX),
                v => v
                    .parse()
                    .map_err(|_| bad(&format!("{v:?} is not a number"))),
            }
        };
        let (soft, hard) = (num(soft)?, num(hard)?);
        if soft > hard {
            return Err(bad("the soft limit is above the hard one"));
        }
        Ok(Ulimit { kind, soft, hard })
    }
}

fn rlimit_kind(name: &str) -> Option<PosixRlimitType> {
    use PosixRlimitType::*;
    Some(match name {
        "as" => RlimitAs,
        "core" => RlimitCore,
        "cpu" => RlimitCpu,
        "data" => RlimitData,
        "fsize" => RlimitFsize,
        "locks" => RlimitLocks,
        "memlock" => RlimitMemlock,
        "msgqueue" => RlimitMsgqueue,
        "nice" => RlimitNice,
        "nofile" => RlimitNofile,
        "nproc" => RlimitNproc,
        "rss" => RlimitRss,
        "rtprio" => RlimitRtprio,
        "rttime" => RlimitRttime,
        "sigpending" => RlimitSigpending,
        "stack" => RlimitStack,
        _ => return None,
    })
}

/// A size as Docker reads one: a number with an optional b/k/m/g/t/p suffix (binary units,
/// case-insensitive, an optional trailing `b` or `ib`), e.g. `512m`, `1.5g`, `1024`.
pub fn parse_bytes(flag: &str, s: &str) -> Result<u64> {
    let bad = || {
        Error::Invalid(format!(
            "invalid {flag} {s:?}: expected a size such as 512m, 2g or 1048576"
        ))
    };
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let unit = unit.trim_end_matches("ib").trim_end_matches('b');
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// A size flag as the i64 the OCI memory fields hold; `-1` (unlimited) only if `allow_unlimited`.
pub fn parse_memory(flag: &str, s: &str, allow_unlimited: bool) -> Result<i64> {
    if allow_unlimited && s.trim() == "-1" {
        return Ok(-1);
    }
    let b = parse_bytes(flag, s)?;
    i64::try_from(b).map_err(|_| Error::Invalid(format!("invalid {flag} {s:?}: too large")))
}

/// `--cpus 1.5`.
pub fn parse_cpus(s: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 && c <= 1e6 => Ok(c),
        _ => Err(Error::Invalid(format!(
            "invalid --cpus {s:?}: expected a positive number of CPUs such as 0.5 or 2"
        ))),
    }
}

/// `--sysctl KEY=VALUE`.
pub fn parse_sysctl(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(Error::Invalid(format!(
            "invalid --sysctl {s:?}: expected KEY=VALUE, e.g. net.ipv4.ip_forward=1"
        ))),
    }
}

impl Resources {
    /// Checks the combinations Docker refuses.
    pub fn validate(&self) -> Result<()> {
        if let (Some(swap), Some(mem)) = (self.memory_swap, self.memory) {
            if swap != -1 && swap < mem {
                return Err(Error::Invalid(format!(
                    "--memory-swap ({swap} bytes) is smaller than --memory ({mem} bytes): it is memory + swap"
                )));
            }
        }
        if self.memory_swap.is_some() && self.memory.is_none() {
            return Err(Error::Invalid(
                "--memory-swap needs --memory (it is memory + swap)".into(),
            ));
        }
        if let (Some(res), Some(mem)) = (self.memory_reservation, self.memory) {
            if res > mem {
                return Err(Error::Invalid(format!(
                    "--memory-reservation ({res} bytes) is above --memory ({mem} bytes)"
                )));
            }
        }
        if let Some(o) = self.oom_score_adj {
            if !(-1000..=1000).contains(&o) {
                return Err(Error::Invalid(format!(
                    "invalid --oom-score-adj {o}: expected -1000..1000"
                )));
            }
        }
        if let Some(c) = &self.cpuset_cpus {
            let ok = !c.is_empty()
                && c.split(',').all(|r| {
                    let mut ends = r.splitn(2, '-');
                    ends.all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                });
            if !ok {
                return Err(Error::Invalid(format!(
                    "invalid --cpuset-cpus {c:?}: expected a list such as 0-2,4"
                )));
            }
        }
        Ok(())
    }

    /// The rlimits: containerd's NOFILE 1024 unless `--ulimit nofile=` says otherwise,
    /// then every `--ulimit` (a later one of the same kind wins).
    pub fn rlimits(&self) -> Result<Vec<PosixRlimit>> {
        let mut all = vec![Ulimit {
            kind: PosixRlimitType::RlimitNofile,
            soft: 1024,
            hard: 1024,
        }];
        for u in &self.ulimits {
            all.retain(|x| x.kind != u.kind);
            all.push(u.clone());
        }
        all.iter()
            .map(|u| {
                PosixRlimitBuilder::default()
                    .typ(u.kind)
                    .soft(u.soft)
                    .hard(u.hard)
                    .build()
                    .map_err(oci)
            })
            .collect()
    }

    /// The cgroup part of `linux.resources` (devices are added by the caller).
    pub fn builder(&self) -> Result<LinuxResourcesBuilder> {
        let mut b = LinuxResourcesBuilder::default();
        if self.memory.is_some() || self.memory_reservation.is_some() {
            let mut m = LinuxMemoryBuilder::default();
            if let Some(v) = self.memory {
                m = m.limit(v);
            }
            if let Some(v) = self.memory_swap {
                m = m.swap(v);
            }
            if let Some(v) = self.memory_reservation {
                m = m.reservation(v);
            }
            b = b.memory(m.build().map_err(oci)?);
        }
        if self.cpus.is_some() || self.cpu_shares.is_some() || self.cpuset_cpus.is_some() {
            let mut c = LinuxCpuBuilder::default();
            if let Some(n) = self.cpus {
                c = c
                    .period(CPU_PERIOD_US)
                    .quota((n * CPU_PERIOD_US as f64).round() as i64);
            }
            if let Some(s) = self.cpu_shares {
                c = c.shares(s);
            }
            if let Some(s) = &self.cpuset_cpus {
                c = c.cpus(s.clone());
            }
            b = b.cpu(c.build().map_err(oci)?);
        }
        if let Some(l) = self.pids_limit {
            // Docker: 0 and -1 both mean no limit.
            let l = if l <= 0 { -1 } else { l };
            b = b.pids(LinuxPidsBuilder::default().limit(l).build().map_err(oci)?);
        }
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_docker_does() {
        assert_eq!(parse_bytes("-m", "1024").unwrap(), 1024);
        assert_eq!(parse_bytes("-m", "64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("-m", "64MB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("-m", "1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("-m", "2KiB").unwrap(), 2048);
        for bad in ["", "m", "12x", "-5m", "1e400", "9999999p"] {
            let e = parse_bytes("-m", bad).unwrap_err();
            assert!(
                matches!(&e, Error::Invalid(m) if m.contains("-m")),
                "{bad}: {e}"
            );
        }
        assert_eq!(parse_memory("--memory-swap", "-1", true).unwrap(), -1);
        assert!(parse_memory("-m", "-1", false).is_err());
    }

    #[test]
    fn ulimits_parse() {
        let u: Ulimit = "nofile=100:200".parse().unwrap();
        assert_eq!(
            (u.kind, u.soft, u.hard),
            (PosixRlimitType::RlimitNofile, 100, 200)
        );
        let u: Ulimit = "core=-1".parse().unwrap();
        assert_eq!((u.soft, u.hard), (u64::MAX, u64::MAX));
        for bad in ["nofile", "bogus=1", "nofile=a", "nofile=10:5"] {
            assert!(
                matches!(bad.parse::<Ulimit>(), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn ulimits_replace_the_default_nofile() {
        let r = Resources {
            ulimits: vec!["nofile=10:20".parse().unwrap(), "nproc=5".parse().unwrap()],
            ..Default::default()
        };
        let l = r.rlimits().unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].typ(), l[0].soft(), l[0].hard()),
            (PosixRlimitType::RlimitNofile, 10, 20)
        );
        assert_eq!(Resources::default().rlimits().unwrap()[0].soft(), 1024);
    }

    #[test]
    fn cgroup_fields_and_checks() {
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(128 << 20),
            cpus: Some(0.5),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(0),
            ..Default::default()
        };
        r.validate().unwrap();
        let v = serde_json::to_value(r.builder().unwrap().build().unwrap()).unwrap();
        assert_eq!(v["memory"]["limit"], 64 << 20);
        assert_eq!(v["memory"]["swap"], 128 << 20);
        assert_eq!(v["cpu"]["quota"], 50_000);
        assert_eq!(v["cpu"]["period"], 100_000);
        assert_eq!(v["cpu"]["shares"], 512);
        assert_eq!(v["cpu"]["cpus"], "0");
        assert_eq!(v["pids"]["limit"], -1);
        let bad = |r: Resources| assert!(matches!(r.validate(), Err(Error::Invalid(_))), "{r:?}");
        bad(Resources {
            memory: Some(10),
            memory_swap: Some(5),
            ..Default::default()
        });
        bad(Resources {
            memory_swap: Some(5),
            ..Default::default()
        });
        bad(Resources {
            memory: Some(10),
            memory_reservation: Some(20),
            ..Default::default()
        });
        bad(Resources {
            oom_score_adj: Some(1001),
            ..Default::default()
        });
        bad(Resources {
            cpuset_cpus: Some("0-".into()),
            ..Default::default()
        });
        assert!(parse_cpus("0").is_err() && parse_cpus("x").is_err());
        assert_eq!(parse_sysctl("a.b=1").unwrap(), ("a.b".into(), "1".into()));
        assert!(parse_sysctl("=1").is_err());
    }
}
