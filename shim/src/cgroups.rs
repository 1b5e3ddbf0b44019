//! Task metrics read from the container's cgroup, in the types containerd decodes:
//! `io.containerd.cgroups.v1.Metrics` on a cgroup v1 (or hybrid) host, and
//! `io.containerd.cgroups.v2.Metrics` on a unified one — what containerd's runc shim
//! sends, so `ctr task metrics` and CRI's container stats read them unchanged.
//!
//! The cgroup is found from the init's `/proc/PID/cgroup` and the shim's mountinfo (each
//! v1 controller's mount point, and the mount's root when the shim runs in a cgroup
//! namespace). A file a kernel does not have leaves its fields at 0; a cgroup that is
//! gone is an error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::reflect::{ReflectValueBox, RuntimeFieldType, RuntimeType};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField, MessageFull};

pub const V1_METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_METRICS_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// Where a process's cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// Each v1 controller's directory.
    V1(HashMap<String, PathBuf>),
    V2(PathBuf),
}

/// The cgroup of `pid`, as this shim sees the hierarchies.
pub fn of_pid(pid: u32) -> Result<Cgroup, String> {
    let path = format!("/proc/{pid}/cgroup");
    let cgroup = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    resolve(&cgroup, &mountinfo)
}

/// A cgroup mount: its fstype, root within the hierarchy, mount point, super options.
struct CgroupMount<'a> {
    v2: bool,
    root: &'a str,
    point: &'a str,
    options: Vec<&'a str>,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount<'_>> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let _source = right.next();
            let options = right.next().unwrap_or("").split(',').collect();
            let v2 = match fstype {
                "cgroup" => false,
                "cgroup2" => true,
                _ => return None,
            };
            Some(CgroupMount {
                v2,
                root: left.get(3)?,
                point: left.get(4)?,
                options,
            })
        })
        .collect()
}

/// `point` + `path` relative to the mount's `root` (mountinfo escapes spaces as \040).
fn join_under(m: &CgroupMount, path: &str) -> PathBuf {
    let rel = path.strip_prefix(m.root).unwrap_or(path);
    let point = m.point.replace("\\040", " ");
    Path::new(&point).join(rel.trim_start_matches('/'))
}

/// Picks v1 when any controller is mounted as v1 (a hybrid host: containerd reads v1
/// there too), else the unified hierarchy.
pub fn resolve(proc_cgroup: &str, mountinfo: &str) -> Result<Cgroup, String> {
    let mounts = cgroup_mounts(mountinfo);
    let mut dirs = HashMap::new();
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers.is_empty() {
            unified = mounts.iter().find(|m| m.v2).map(|m| join_under(m, path));
            continue;
        }
        for c in controllers.split(',').filter(|c| !c.starts_with("name=")) {
            if let Some(m) = mounts.iter().find(|m| !m.v2 && m.options.contains(&c)) {
                dirs.insert(c.to_string(), join_under(m, path));
            }
        }
    }
    if !dirs.is_empty() {
        return Ok(Cgroup::V1(dirs));
    }
    unified
        .map(Cgroup::V2)
        .ok_or_else(|| "no cgroup v1 controller or cgroup2 mount for the process".to_string())
}

/// The metrics of `cgroup`, packed as containerd expects them in StatsResponse.stats.
pub fn metrics(cgroup: &Cgroup) -> Result<Any, String> {
    let (type_url, value) = match cgroup {
        Cgroup::V1(dirs) => (V1_METRICS_TYPE, encode(&v1_metrics(dirs)?)?),
        Cgroup::V2(dir) => (V2_METRICS_TYPE, encode(&v2_metrics(dir)?)?),
    };
    Ok(Any {
        type_url: type_url.to_string(),
        value,
        ..Default::default()
    })
}

fn encode(m: &dyn MessageDyn) -> Result<Vec<u8>, String> {
    m.write_to_bytes_dyn()
        .map_err(|e| format!("encode metrics: {e}"))
}

/// A file's number, with `max_is` for "max" (no limit: v1 reports it as 0, v2 as
/// u64::MAX, as containerd's cgroups package does); a missing file reads as 0.
fn read_number(path: &Path, max_is: u64) -> u64 {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim() == "max" => max_is,
        Ok(t) => t.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// A v1 counter: "max" reads as 0.
fn read_u64(path: &Path) -> u64 {
    read_number(path, 0)
}

/// `key value` lines by key, for the few keys picked by name; a missing key reads as 0.
struct Stat(HashMap<String, u64>);

impl Stat {
    fn read(path: &Path) -> Stat {
        Stat(read_pairs(path).into_iter().collect())
    }

    fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// `key value` lines (memory.stat, cpu.stat, memory.events...).
fn read_pairs(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Sets the u64 fields of `msg` named like the keys (after `rename`); other keys, and
/// names of fields that are not u64 (v1 memory.stat's `swap` vs the `swap` entry), are
/// skipped: setting them would panic.
fn set_fields<M: MessageFull>(msg: &mut M, pairs: &[(String, u64)], rename: fn(&str) -> String) {
    let descriptor = M::descriptor();
    for (key, value) in pairs {
        let field = descriptor.field_by_name(&rename(key));
        if let Some(field) = field.filter(|f| {
            matches!(
                f.runtime_field_type(),
                RuntimeFieldType::Singular(RuntimeType::U64)
            )
        }) {
            field.set_singular_field(msg, ReflectValueBox::U64(*value));
        }
    }
}

fn same(key: &str) -> String {
    key.to_string()
}

/// cgroup v1 memory.stat names → containerd's v1 MemoryStat field names.
fn v1_memory_name(key: &str) -> String {
    key.replace("pgpgin", "pg_pg_in")
        .replace("pgpgout", "pg_pg_out")
        .replace("pgmajfault", "pg_maj_fault")
        .replace("pgfault", "pg_fault")
        .replace("memsw", "swap")
}

fn require_dir(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("cgroup {} is gone", dir.display()))
    }
}

fn v1_entry(dir: &Path, prefix: &str) -> MessageField<v1::MemoryEntry> {
    let f = |name: &str| read_u64(&dir.join(format!("{prefix}.{name}")));
    MessageField::some(v1::MemoryEntry {
        usage: f("usage_in_bytes"),
        limit: f("limit_in_bytes"),
        max: f("max_usage_in_bytes"),
        failcnt: f("failcnt"),
        ..Default::default()
    })
}

fn v1_metrics(dirs: &HashMap<String, PathBuf>) -> Result<v1::Metrics, String> {
    let mut m = v1::Metrics::new();
    if let Some(dir) = dirs.get("memory") {
        require_dir(dir)?;
        let mut mem = v1::MemoryStat::new();
        set_fields(
            &mut mem,
            &read_pairs(&dir.join("memory.stat")),
            v1_memory_name,
        );
        mem.usage = v1_entry(dir, "memory");
        mem.swap = v1_entry(dir, "memory.memsw");
        mem.kernel = v1_entry(dir, "memory.kmem");
        mem.kernel_tcp = v1_entry(dir, "memory.kmem.tcp");
        m.memory = MessageField::some(mem);
        let mut oom = v1::MemoryOomControl::new();
        set_fields(&mut oom, &read_pairs(&dir.join("memory.oom_control")), same);
        m.memory_oom_control = MessageField::some(oom);
    }
    let mut cpu = v1::CPUStat::new();
    if let Some(dir) = dirs.get("cpuacct") {
        require_dir(dir)?;
        // cpuacct.stat counts USER_HZ ticks.
        // SAFETY: sysconf reads a constant of the running system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let ns_per_tick = 1_000_000_000 / ticks;
        let stat = Stat::read(&dir.join("cpuacct.stat"));
        let per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu")).unwrap_or_default();
        cpu.usage = MessageField::some(v1::CPUUsage {
            total: read_u64(&dir.join("cpuacct.usage")),
            user: stat.get("user") * ns_per_tick,
            kernel: stat.get("system") * ns_per_tick,
            per_cpu: per_cpu
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect(),
            ..Default::default()
        });
    }
    if let Some(dir) = dirs.get("cpu") {
        let stat = Stat::read(&dir.join("cpu.stat"));
        cpu.throttling = MessageField::some(v1::Throttle {
            periods: stat.get("nr_periods"),
            throttled_periods: stat.get("nr_throttled"),
            throttled_time: stat.get("throttled_time"),
            ..Default::default()
        });
    }
    m.cpu = MessageField::some(cpu);
    if let Some(dir) = dirs.get("pids") {
        m.pids = MessageField::some(v1::PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_u64(&dir.join("pids.max")),
            ..Default::default()
        });
    }
    Ok(m)
}

/// A v2 limit: "max" reads as u64::MAX.
fn read_limit(path: &Path) -> u64 {
    read_number(path, u64::MAX)
}

fn v2_metrics(dir: &Path) -> Result<v2::Metrics, String> {
    require_dir(dir)?;
    let mut m = v2::Metrics::new();
    let mut cpu = v2::CPUStat::new();
    set_fields(&mut cpu, &read_pairs(&dir.join("cpu.stat")), same);
    m.cpu = MessageField::some(cpu);
    let mut mem = v2::MemoryStat::new();
    set_fields(&mut mem, &read_pairs(&dir.join("memory.stat")), same);
    mem.usage = read_u64(&dir.join("memory.current"));
    mem.usage_limit = read_limit(&dir.join("memory.max"));
    mem.swap_usage = read_u64(&dir.join("memory.swap.current"));
    mem.swap_limit = read_limit(&dir.join("memory.swap.max"));
    mem.max_usage = read_u64(&dir.join("memory.peak"));
    m.memory = MessageField::some(mem);
    let mut events = v2::MemoryEvents::new();
    set_fields(&mut events, &read_pairs(&dir.join("memory.events")), same);
    m.memory_events = MessageField::some(events);
    m.pids = MessageField::some(v2::PidsStat {
        current: read_u64(&dir.join("pids.current")),
        limit: read_limit(&dir.join("pids.max")),
        ..Default::default()
    });
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    const HYBRID_MOUNTINFO: &str = "\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn a_hybrid_host_resolves_to_the_v1_controllers() {
        let proc = "5:pids:/ns/c1\n4:memory:/ns/c1\n3:cpu,cpuacct:/ns/c1\n1:name=systemd:/ns/c1\n0::/ns/c1\n";
        let Cgroup::V1(dirs) = resolve(proc, HYBRID_MOUNTINFO).unwrap() else {
            panic!("expected v1");
        };
        assert_eq!(dirs["memory"], Path::new("/sys/fs/cgroup/memory/ns/c1"));
        assert_eq!(dirs["cpu"], Path::new("/sys/fs/cgroup/cpu,cpuacct/ns/c1"));
        assert_eq!(
            dirs["cpuacct"],
            Path::new("/sys/fs/cgroup/cpu,cpuacct/ns/c1")
        );
        assert_eq!(dirs["pids"], Path::new("/sys/fs/cgroup/pids/ns/c1"));
        assert!(!dirs.contains_key("name=systemd"));
    }

    #[test]
    fn a_unified_host_resolves_to_v2_under_the_mount_root() {
        let mountinfo = "40 30 0:27 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let got = resolve("0::/kubepods/pod1/c1\n", mountinfo).unwrap();
        assert_eq!(got, Cgroup::V2(PathBuf::from("/sys/fs/cgroup/pod1/c1")));
        assert!(resolve("0::/x\n", "").is_err());
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn v1_files_fill_the_v1_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "memory.stat", "cache 4096\nrss 8192\nswap 0\ntotal_swap 0\npgfault 7\npgmajfault 2\ntotal_inactive_file 1024\ntotal_rss 8192\nhierarchical_memsw_limit 99\nnew_kernel_key 5\n");
        write(d, "memory.usage_in_bytes", "12288\n");
        write(d, "memory.limit_in_bytes", "67108864\n");
        write(d, "memory.max_usage_in_bytes", "20000\n");
        write(
            d,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        write(d, "cpuacct.usage", "123456789\n");
        write(d, "cpuacct.usage_percpu", "100 200 \n");
        write(d, "cpuacct.stat", "user 3\nsystem 1\n");
        write(
            d,
            "cpu.stat",
            "nr_periods 10\nnr_throttled 4\nthrottled_time 5000\n",
        );
        write(d, "pids.current", "3\n");
        write(d, "pids.max", "max\n");
        let dirs: HashMap<String, PathBuf> = ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| (c.to_string(), d.to_path_buf()))
            .collect();
        let any = metrics(&Cgroup::V1(dirs)).unwrap();
        assert_eq!(any.type_url, V1_METRICS_TYPE);
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.cache, mem.rss, mem.pg_fault, mem.pg_maj_fault),
            (4096, 8192, 7, 2)
        );
        assert_eq!(
            (mem.total_inactive_file, mem.hierarchical_swap_limit),
            (1024, 99)
        );
        assert_eq!(mem.usage.usage, 12288);
        assert_eq!(mem.usage.limit, 67108864);
        assert_eq!(mem.usage.max, 20000);
        assert_eq!(m.memory_oom_control.oom_kill, 1);
        let cpu = m.cpu.as_ref().unwrap();
        assert_eq!(cpu.usage.total, 123456789);
        assert_eq!(cpu.usage.per_cpu, vec![100, 200]);
        let tick = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!((cpu.usage.user, cpu.usage.kernel), (3 * tick, tick));
        assert_eq!(cpu.throttling.throttled_periods, 4);
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
    }

    #[test]
    fn v2_files_fill_the_v2_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "cpu.stat",
            "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_throttled 2\n",
        );
        write(
            d,
            "memory.stat",
            "usage 1\nanon 4096\nfile 8192\ninactive_file 1024\npgfault 9\n",
        );
        write(d, "memory.current", "16384\n");
        write(d, "memory.max", "max\n");
        write(
            d,
            "memory.events",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        write(d, "pids.current", "2\n");
        write(d, "pids.max", "64\n");
        let any = metrics(&Cgroup::V2(d.to_path_buf())).unwrap();
        assert_eq!(any.type_url, V2_METRICS_TYPE);
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (900, 600, 300)
        );
        assert_eq!(m.cpu.nr_throttled, 2);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.anon, mem.file, mem.inactive_file, mem.pgfault),
            (4096, 8192, 1024, 9)
        );
        assert_eq!((mem.usage, mem.usage_limit), (16384, u64::MAX));
        assert_eq!((m.memory_events.max, m.memory_events.oom_kill), (3, 1));
        assert_eq!((m.pids.current, m.pids.limit), (2, 64));
    }

    #[test]
    fn a_cgroup_that_is_gone_is_an_error() {
        let gone = PathBuf::from("/nonexistent/cgroup");
        assert!(metrics(&Cgroup::V2(gone.clone())).is_err());
        let dirs = HashMap::from([("memory".to_string(), gone)]);
        assert!(metrics(&Cgroup::V1(dirs)).is_err());
    }
}
