//! `top` and `stats`: a running nested container's processes (the task's pids from
//! containerd, details from /proc) and its cgroup figures, read from the cgroup files of
//! its init process — cgroup v1 (hybrid hosts like this VM) and v2 alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::inspect::{process_start, stat_field};
use super::manage::{get, running_pid};
use crate::containerd::Client;
use crate::error::{Error, Result};

/// One process, as `docker top` shows it (`ps -ef` columns).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub uid: u32,
    pub pid: u32,
    pub ppid: u32,
    /// Start time, RFC 3339 UTC.
    pub stime: Option<String>,
    /// CPU time used, seconds.
    pub cpu_seconds: f64,
    pub cmd: String,
}

/// The processes of running nested container `id`, by pid.
pub async fn top(client: &Client, id: &str) -> Result<Vec<ProcessRow>> {
    get(client, id).await?;
    running_pid(client, id).await?;
    let mut pids = client.list_pids(id).await?;
    pids.sort_unstable();
    // A process may exit between the listing and the read: it is left out.
    Ok(pids.into_iter().filter_map(process_row).collect())
}

fn process_row(pid: u32) -> Option<ProcessRow> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let num = |n| stat_field(&stat, n).and_then(|v| v.parse::<u64>().ok());
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (num(14).unwrap_or(0) + num(15).unwrap_or(0)) as f64 / hz;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmd = if cmdline.is_empty() {
        // Kernel threads and zombies have none: `ps` shows the name in brackets.
        let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')'));
        format!("[{}]", name.map(|(n, _)| n).unwrap_or("?"))
    } else {
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(ProcessRow {
        uid,
        pid,
        ppid: num(4).unwrap_or(0) as u32,
        stime: process_start(pid).map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        cpu_seconds: cpu,
        cmd,
    })
}

/// Resource use of one container, as `docker stats` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub id: String,
    /// `v1` or `v2`.
    pub cgroup: String,
    /// Of one CPU (200 means two CPUs busy), over the sampling interval.
    pub cpu_percent: f64,
    pub cpu_usage_ns: u64,
    /// Usage without the inactive page cache, as Docker reports it.
    pub memory_usage: u64,
    /// The cgroup's limit, or the host's memory when it has none.
    pub memory_limit: u64,
    pub memory_percent: f64,
    pub pids: u64,
}

/// Where a process's cgroup figures live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPaths {
    V1 {
        memory: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2(PathBuf),
}

/// Parses /proc/PID/cgroup text; `root` is the cgroup mount (`/sys/fs/cgroup`). A v1
/// memory controller wins over the unified line (a hybrid host keeps its controllers
/// in v1).
pub fn cgroup_paths(text: &str, root: &Path) -> Result<CgroupPaths> {
    let mut memory = None;
    let mut cpuacct = None;
    let mut pids = None;
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        for c in ctrls.split(',') {
            let dir = root.join(ctrls).join(rel);
            match c {
                "memory" => memory = Some(dir),
                "cpuacct" => cpuacct = Some(dir),
                "pids" => pids = Some(dir),
                _ => {}
            }
        }
        if ctrls.is_empty() {
            unified = Some(root.join(rel));
        }
    }
    match (memory.is_some() || cpuacct.is_some(), unified) {
        (false, Some(u)) => Ok(CgroupPaths::V2(u)),
        (true, _) => Ok(CgroupPaths::V1 {
            memory,
            cpuacct,
            pids,
        }),
        (false, None) => Err(Error::Invalid(format!(
            "no cgroup found in {:?}",
            text.lines().next().unwrap_or("")
        ))),
    }
}

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    cpu_ns: u64,
    memory: u64,
    limit: Option<u64>,
    pids: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A `key value` line of a flat-keyed cgroup file (memory.stat, cpu.stat).
fn keyed(p: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(p)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn sample(paths: &CgroupPaths) -> Sample {
    match paths {
        CgroupPaths::V2(d) => {
            let usage = read_u64(&d.join("memory.current")).unwrap_or(0);
            let inactive = keyed(&d.join("memory.stat"), "inactive_file").unwrap_or(0);
            Sample {
                cpu_ns: keyed(&d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                memory: usage.saturating_sub(inactive),
                // "max" does not parse: no limit.
                limit: read_u64(&d.join("memory.max")),
                pids: read_u64(&d.join("pids.current")).unwrap_or(0),
            }
        }
        CgroupPaths::V1 {
            memory,
            cpuacct,
            pids,
        } => {
            let mem = |f: &str| memory.as_ref().and_then(|d| read_u64(&d.join(f)));
            let inactive = memory
                .as_ref()
                .and_then(|d| keyed(&d.join("memory.stat"), "total_inactive_file"))
                .unwrap_or(0);
            Sample {
                cpu_ns: cpuacct
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("cpuacct.usage")))
                    .unwrap_or(0),
                memory: mem("memory.usage_in_bytes")
                    .unwrap_or(0)
                    .saturating_sub(inactive),
                // v1 says "no limit" with a huge page-aligned number.
                limit: mem("memory.limit_in_bytes").filter(|l| *l < (1 << 62)),
                pids: pids
                    .as_ref()
                    .and_then(|d| read_u64(&d.join("pids.current")))
                    .unwrap_or(0),
            }
        }
    }
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Measures nested containers `ids` over `interval` (two readings, like `docker stats`).
pub async fn stats(client: &Client, ids: &[String], interval: Duration) -> Result<Vec<Stats>> {
    let mut found = Vec::new();
    for id in ids {
        get(client, id).await?;
        let pid = running_pid(client, id).await?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(|e| Error::io(format!("read /proc/{pid}/cgroup of {id}"), e))?;
        let paths = cgroup_paths(&text, Path::new("/sys/fs/cgroup"))?;
        found.push((id.clone(), paths));
    }
    let first: Vec<(Sample, Instant)> = found
        .iter()
        .map(|(_, p)| (sample(p), Instant::now()))
        .collect();
    tokio::time::sleep(interval).await;
    let host = host_memory();
    Ok(found
        .into_iter()
        .zip(first)
        .map(|((id, paths), (a, at))| {
            let b = sample(&paths);
            let wall = at.elapsed().as_nanos().max(1) as f64;
            let limit = b.limit.unwrap_or(host).max(1);
            Stats {
                id,
                cgroup: match paths {
                    CgroupPaths::V1 { .. } => "v1",
                    CgroupPaths::V2(_) => "v2",
                }
                .into(),
                cpu_percent: b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / wall * 100.0,
                cpu_usage_ns: b.cpu_ns,
                memory_usage: b.memory,
                memory_limit: limit,
                memory_percent: b.memory as f64 / limit as f64 * 100.0,
                pids: b.pids,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v1_hybrid_and_v2() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "12:pids:/nestcache/c1\n4:cpu,cpuacct:/nestcache/c1\n3:memory:/nestcache/c1\n0::/nestcache/c1\n";
        assert_eq!(
            cgroup_paths(hybrid, root).unwrap(),
            CgroupPaths::V1 {
                memory: Some(root.join("memory/nestcache/c1")),
                cpuacct: Some(root.join("cpu,cpuacct/nestcache/c1")),
                pids: Some(root.join("pids/nestcache/c1")),
            }
        );
        assert_eq!(
            cgroup_paths("0::/k/c2\n", root).unwrap(),
            CgroupPaths::V2(root.join("k/c2"))
        );
        assert!(cgroup_paths("", root).is_err());
    }

    #[test]
    fn v2_figures_from_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("memory.current"), "1000\n").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 1\ninactive_file 300\n").unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("cpu.stat"), "usage_usec 7\nuser_usec 5\n").unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        let s = sample(&CgroupPaths::V2(d.to_path_buf()));
        assert_eq!((s.cpu_ns, s.memory, s.limit, s.pids), (7000, 700, None, 3));
    }
}
