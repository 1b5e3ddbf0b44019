//! The in-process start and delete against runc's state layout, built by hand in a temp
//! dir: no root, no runc.

use std::io::Write;
use std::path::Path;

use super::*;

/// No process has a pid above the kernel's largest pid_max (2^22).
const NO_SUCH_PID: i32 = 5_000_000;

fn own_start_time() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn runc_at(root: &Path) -> Runc {
    let mut runc = Runc::new(None, Some(root), "ns", root);
    runc.executor = Executor::RuncDirect;
    runc
}

/// Writes `<root>/ns/<id>/state.json` for an init `pid` started at `start`.
fn write_state(runc: &Runc, id: &str, pid: i32, start: u64, extra: serde_json::Value) -> PathBuf {
    let dir = runc.root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = serde_json::json!({
        "id": id,
        "init_process_pid": pid,
        "init_process_start": start,
        "cgroup_paths": {},
        "intel_rdt_path": "",
        "config": {
            "namespaces": [{"type": "NEWPID", "path": ""}, {"type": "NEWNS", "path": ""}],
            "Hooks": null
        }
    });
    merge(&mut state, extra);
    std::fs::write(dir.join("state.json"), state.to_string()).unwrap();
    dir
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
}

#[test]
fn ids_runc_would_refuse_never_name_a_state_dir() {
    for bad in ["", ".", "..", "../x", "a/b", "a b", "é"] {
        assert!(!valid_id(bad), "{bad:?}");
    }
    for good in ["c1", "a.b-c_d+e", "..a"] {
        assert!(valid_id(good), "{good:?}");
    }
}

#[test]
fn init_alive_checks_pid_and_start_time() {
    let me = std::process::id() as i32;
    assert!(init_alive(me, own_start_time()));
    assert!(
        !init_alive(me, own_start_time() + 1),
        "a reused pid is not the init"
    );
    assert!(!init_alive(NO_SUCH_PID, 0));
}

#[test]
fn hooks_rdt_and_a_shared_pid_namespace_go_to_runc() {
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(tmp.path());
    let cases = [
        (
            serde_json::json!({"config": {"Hooks": {"poststop": [{"path": "/x"}]}}}),
            "hooks",
        ),
        (
            serde_json::json!({"intel_rdt_path": "/sys/fs/resctrl/c"}),
            "Intel RDT",
        ),
        (
            serde_json::json!({"config": {"namespaces": [{"type": "NEWPID", "path": "/proc/1/ns/pid"}]}}),
            "pid namespace",
        ),
    ];
    for (extra, why) in cases {
        let dir = write_state(&runc, "c", NO_SUCH_PID, 0, extra);
        let fallback = delete(&runc, "c").unwrap_err();
        assert!(fallback.contains(why), "{fallback}");
        assert!(dir.exists(), "a fallback leaves runc's state for runc");
        assert!(start(&runc, "c").unwrap_err().contains(why));
    }
    // Empty hook lists are no hooks.
    write_state(
        &runc,
        "c",
        NO_SUCH_PID,
        0,
        serde_json::json!({"config": {"Hooks": {"poststop": [], "prestart": null}}}),
    );
    assert!(load_state(&runc.root.join("c"))
        .unwrap()
        .not_plain()
        .is_none());
}

#[test]
fn unreadable_state_and_systemd_go_to_runc() {
    let tmp = tempfile::tempdir().unwrap();
    let mut runc = runc_at(tmp.path());
    assert!(delete(&runc, "missing").unwrap_err().contains("state.json"));
    let dir = runc.root.join("broken");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("state.json"), "{not json").unwrap();
    assert!(start(&runc, "broken").unwrap_err().contains("parse"));
    runc.systemd_cgroup = true;
    write_state(&runc, "c", NO_SUCH_PID, 0, serde_json::json!({}));
    assert!(delete(&runc, "c").unwrap_err().contains("systemd"));
}

#[test]
fn delete_removes_cgroups_and_state_of_a_stopped_container() {
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(&tmp.path().join("root"));
    let cg = tmp.path().join("cgroup");
    let leaf = cg.join("memory/ns/c");
    std::fs::create_dir_all(leaf.join("child")).unwrap();
    let extra = serde_json::json!({"cgroup_paths": {"memory": leaf, "pids": cg.join("pids/gone")}});
    let dir = write_state(&runc, "c", NO_SUCH_PID, 0, extra);
    delete(&runc, "c").unwrap().unwrap();
    assert!(!dir.exists());
    assert!(!leaf.exists());
    assert!(
        cg.join("memory/ns").exists(),
        "only the container's own cgroup goes"
    );
}

#[test]
fn delete_of_a_running_init_goes_to_runc() {
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(tmp.path());
    let me = std::process::id() as i32;
    let dir = write_state(&runc, "c", me, own_start_time(), serde_json::json!({}));
    assert!(delete(&runc, "c").unwrap_err().contains("runs"));
    assert!(dir.exists());
}

#[test]
fn start_reads_the_byte_runc_init_writes_and_removes_the_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(tmp.path());
    let me = std::process::id() as i32;
    let dir = write_state(&runc, "c", me, own_start_time(), serde_json::json!({}));
    let fifo = dir.join("exec.fifo");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        // runc init: a blocking open for writing (released by the start's open), one byte.
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            f.write_all(b"0").unwrap();
        })
    };
    start(&runc, "c").unwrap().unwrap();
    writer.join().unwrap();
    assert!(
        !fifo.exists(),
        "no fifo: runc reads the container as running"
    );
}

#[test]
fn start_of_a_dead_init_fails_instead_of_waiting() {
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(tmp.path());
    let dir = write_state(&runc, "c", NO_SUCH_PID, 0, serde_json::json!({}));
    mkfifo(&dir.join("exec.fifo"));
    let err = start(&runc, "c").unwrap().unwrap_err();
    assert!(matches!(err, RuncError::Direct { .. }), "{err}");
    assert!(err.to_string().contains("already dead"), "{err}");
}

#[test]
fn start_without_a_fifo_goes_to_runc() {
    // Started already (or stopped): runc's own start says which.
    let tmp = tempfile::tempdir().unwrap();
    let runc = runc_at(tmp.path());
    write_state(&runc, "c", NO_SUCH_PID, 0, serde_json::json!({}));
    assert!(start(&runc, "c").unwrap_err().contains("exec.fifo"));
}
