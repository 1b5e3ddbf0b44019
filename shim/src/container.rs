//! One container of the shim: its init process, its execs, and the operations on them.
//! Each step goes through the process's state machine (`state`), and the kind-specific
//! work through its lifecycle (`init`, `exec`); nothing here holds the registry's lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::TASK_EXIT_EVENT_TOPIC;
use containerd_shim::protos::types::mount::Mount;
use log::{info, warn};
use nestcache::store::LeaseHolder;

use crate::bundle::{Record, Spec};
use crate::cgroups;
use crate::error::{Result, ShimError};
use crate::events::{Event, EventSink};
use crate::exec::ExecLifecycle;
use crate::exits::Exits;
use crate::init::InitLifecycle;
use crate::mounts;
use crate::options::{check_store, TaskOptions};
use crate::process::{launch, Process, Snapshot, OUTPUT_DRAIN};
use crate::runc::{Executor, ProcessFiles, Runc, Runtime, EXECUTOR_ENV};
use crate::state::{State, Step};
use crate::stdio::StdioPaths;
use crate::timing::timed;

/// What every container of the shim shares.
pub struct Shared {
    pub namespace: String,
    pub runtime: Arc<dyn Runtime>,
    pub events: Arc<dyn EventSink>,
    pub exits: Arc<Exits>,
    /// `$NESTCACHE_STATE_DIR` as the shim saw it (an allowed store root by default).
    pub state_dir_env: Option<String>,
    /// containerd's address, as store leases name their holder.
    pub containerd_address: String,
}

/// A task to create (CreateTaskRequest, converted).
pub struct NewTask<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub rootfs: &'a [Mount],
    pub stdio: StdioPaths,
    pub options: TaskOptions,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub init: Arc<Process>,
    /// How long the shim stays after its last task, as this container asks (`lifetime`).
    pub linger: Duration,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Serializes the init's start and delete (a delete must not overtake a start).
    ops: Mutex<()>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An exit, in order after the process's start event (the gate), published once, and
/// only after its output is copied out (at most OUTPUT_DRAIN), as containerd's runc shim
/// does: a client that sees the exit first (ctr, then its delete) can miss the output.
pub fn report_exit(events: &dyn EventSink, process: &Process, code: i32) {
    if !process.wait_output(OUTPUT_DRAIN) {
        log::warn!(
            "{}: exited, output still open after {OUTPUT_DRAIN:?} (a child holds it?)",
            process.describe()
        );
    }
    let _gate = process.gate();
    let Some(exit) = process.set_exited(code) else {
        return;
    };
    let event = TaskExit {
        container_id: process.container_id.clone(),
        id: process.event_id().to_string(),
        pid: process.pid(),
        exit_status: exit.code,
        exited_at: MessageField::some(exit.at),
        ..Default::default()
    };
    events.publish(Event::new(TASK_EXIT_EVENT_TOPIC, &event));
}

/// [`report_exit`], on a thread of its own when the output is still being copied: a
/// process whose output a child holds open must not hold back every other exit of a
/// group shim for OUTPUT_DRAIN (the exit monitor's thread reports them one at a time).
pub fn report_exit_unblocking(events: &Arc<dyn EventSink>, process: Arc<Process>, code: i32) {
    if process.wait_output(Duration::ZERO) {
        return report_exit(&**events, &process, code);
    }
    let (sink, held) = (events.clone(), process.clone());
    let spawned = std::thread::Builder::new()
        .name("exit-drain".into())
        .spawn(move || report_exit(&*sink, &held, code));
    if let Err(e) = spawned {
        warn!(
            "{}: no thread to drain its output ({e}); reporting inline",
            process.describe()
        );
        report_exit(&**events, &process, code);
    }
}

fn runc_for(options: &TaskOptions, spec: &Spec, namespace: &str, bundle: &Path) -> Result<Runc> {
    let mut runc = Runc::new(
        options.runc_binary.as_deref(),
        options.runc_root.as_deref(),
        namespace,
        bundle,
    );
    runc.systemd_cgroup = options.systemd_cgroup;
    runc.executor = match spec.executor().map_err(ShimError::Invalid)? {
        Some(chosen) => chosen,
        None => match options.config.executor {
            Some(chosen) => chosen,
            None => node_default_executor()?,
        },
    };
    Ok(runc)
}

/// The node's default executor: `NESTCACHE_SHIM_EXECUTOR` in the environment containerd
/// runs its shims with, else `runc-direct`.
fn node_default_executor() -> Result<Executor> {
    executor_from_env(std::env::var(EXECUTOR_ENV).ok().as_deref())
}

fn executor_from_env(value: Option<&str>) -> Result<Executor> {
    match value {
        Some(name) if !name.is_empty() => Executor::parse(name).ok_or_else(|| {
            ShimError::Options(format!(
                "{EXECUTOR_ENV}={name:?}: expected one of {}",
                Executor::NAMES
            ))
        }),
        _ => Ok(Executor::default()),
    }
}

#[cfg(test)]
#[test]
fn the_node_default_executor_is_read_strictly() {
    assert_eq!(executor_from_env(None).unwrap(), Executor::RuncDirect);
    assert_eq!(executor_from_env(Some("")).unwrap(), Executor::RuncDirect);
    assert_eq!(executor_from_env(Some("runc")).unwrap(), Executor::Runc);
    let err = executor_from_env(Some("crun")).unwrap_err();
    assert!(matches!(err, ShimError::Options(_)), "{err}");
    assert!(err.to_string().contains("runc-direct"), "{err}");
}

impl Container {
    /// Sets up the rootfs and runs `runc create`. On failure everything set up is undone.
    /// Returns the container and an exit that came before its pid was watched.
    pub fn create(shared: &Arc<Shared>, new: NewTask) -> Result<(Container, Option<i32>)> {
        let spec = Spec::load(new.bundle).map_err(|reason| ShimError::Bundle {
            bundle: new.bundle.to_path_buf(),
            reason,
        })?;
        if let Some(wanted) = spec.store_image().map_err(ShimError::Invalid)? {
            let roots = new.options.store_roots(shared.state_dir_env.as_deref());
            check_store(&wanted.store, &roots)?;
        }
        let runc = runc_for(&new.options, &spec, &shared.namespace, new.bundle)?;
        let linger = crate::lifetime::linger_for(&spec, &new.options.config)?;
        let mut record = Record {
            runc: runc.clone(),
            rootfs_mounted: false,
            store_dir: None,
            lease: None,
        };
        record.save(new.bundle)?;
        let holder = LeaseHolder::new(&shared.containerd_address, &shared.namespace, new.id);
        let mounted = timed("mount-rootfs", new.id, || {
            mounts::setup(new.bundle, new.rootfs, &spec, &mut record, &holder)
        });
        if let Err(e) = mounted {
            let _ = mounts::teardown(new.bundle, Some(&record));
            return Err(ShimError::Rootfs(e));
        }
        let lifecycle = InitLifecycle {
            runtime: shared.runtime.clone(),
            runc: runc.clone(),
            bundle: new.bundle.to_path_buf(),
            record: record.clone(),
        };
        let init = Arc::new(Process::new(new.id, "", new.stdio, Box::new(lifecycle)));
        let files = ProcessFiles {
            pid_file: new.bundle.join("init.pid"),
            log: runc.log.clone(),
        };
        let created = launch(&init, |io| {
            shared.runtime.create(&runc, new.id, new.bundle, &files, io)
        });
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                let _ = shared.runtime.delete(&runc, new.id, true);
                if let Err(t) = mounts::teardown(new.bundle, Some(&record)) {
                    warn!("cleanup after failed create of {}: {t}", new.id);
                }
                return Err(e);
            }
        };
        init.set_pid(pid);
        let early_exit = shared.exits.watch(pid, init.clone());
        let container = Container {
            id: new.id.to_string(),
            bundle: new.bundle.to_path_buf(),
            runc,
            init,
            linger,
            execs: Mutex::new(HashMap::new()),
            ops: Mutex::new(()),
            shared: shared.clone(),
        };
        Ok((container, early_exit))
    }

    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::ExecNotFound {
                id: self.id.clone(),
                exec: exec_id.to_string(),
            })
    }

    /// Registers an exec (created, not started). The exec id names files in the bundle:
    /// containerd's identifier rules, enforced.
    pub fn add_exec(&self, exec_id: &str, stdio: StdioPaths, spec: Vec<u8>) -> Result<()> {
        let valid = !exec_id.is_empty()
            && !exec_id.starts_with('.')
            && exec_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(ShimError::Invalid(format!(
                "exec id {exec_id:?}: expected letters, digits, '.', '_', '-'"
            )));
        }
        if self.init.state().is_final() {
            return Err(ShimError::IllegalTransition {
                process: self.init.describe(),
                state: self.init.state(),
                action: "exec in it",
            });
        }
        let mut execs = lock(&self.execs);
        if execs.contains_key(exec_id) {
            return Err(ShimError::ExecExists {
                id: self.id.clone(),
                exec: exec_id.to_string(),
            });
        }
        let lifecycle = ExecLifecycle {
            runtime: self.shared.runtime.clone(),
            runc: self.runc.clone(),
            bundle: self.bundle.clone(),
            spec: crate::image_config::exec_spec(&self.bundle, spec),
        };
        let process = Process::new(&self.id, exec_id, stdio, Box::new(lifecycle));
        execs.insert(exec_id.to_string(), Arc::new(process));
        Ok(())
    }

    /// Starts a created process. Only one start wins (created → starting is atomic); the
    /// start event is published before any exit of the process (the gate).
    pub fn start(&self, exec_id: &str) -> Result<u32> {
        let process = self.process(exec_id)?;
        let _ops = exec_id.is_empty().then(|| lock(&self.ops));
        process.step(Step::BeginStart)?;
        let gate = process.gate();
        let pid = match process.lifecycle.start(&process) {
            Ok(pid) => pid,
            Err(e) => {
                process.lifecycle.failed_start(&process);
                return Err(e);
            }
        };
        process.set_pid(pid);
        let early_exit = if exec_id.is_empty() {
            None // watched since create
        } else {
            self.shared.exits.watch(pid, process.clone())
        };
        let event = process.lifecycle.started_event(&process, pid);
        self.shared.events.publish(event);
        // Stopped already (killed meanwhile) is fine: the exit stands.
        let _ = process.step(Step::Started);
        drop(gate);
        if let Some(code) = early_exit {
            report_exit(&*self.shared.events, &process, code);
        }
        Ok(pid)
    }

    pub fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let process = self.process(exec_id)?;
        process.lifecycle.kill(&process, signal, all)
    }

    /// Deletes a created or stopped exec; its waiters wake.
    pub fn delete_exec(&self, exec_id: &str) -> Result<Snapshot> {
        let process = self.process(exec_id)?;
        process.step(Step::Delete)?;
        lock(&self.execs).remove(exec_id);
        process.lifecycle.delete(&process)?;
        process.drop_io();
        Ok(process.snapshot())
    }

    /// Deletes the container (init created or stopped): runc state and rootfs go, every
    /// exec's waiters wake. Called without the registry's lock held.
    pub fn delete(&self) -> Result<Snapshot> {
        let _ops = lock(&self.ops);
        self.init.check(Step::Delete)?;
        self.init.lifecycle.delete(&self.init)?;
        self.init.step(Step::Delete)?;
        let execs: Vec<_> = lock(&self.execs).drain().map(|(_, p)| p).collect();
        for exec in execs {
            exec.force_deleted();
            let _ = exec.lifecycle.delete(&exec);
            exec.drop_io();
        }
        timed("drain-output", &self.id, || self.init.drop_io());
        info!("deleted {}", self.id);
        Ok(self.init.snapshot())
    }

    pub fn pause(&self) -> Result<()> {
        self.init.check(Step::Pause)?;
        self.shared.runtime.pause(&self.runc, &self.id)?;
        self.init.step(Step::Pause).map(|_| ())
    }

    pub fn resume(&self) -> Result<()> {
        self.init.check(Step::Resume)?;
        self.shared.runtime.resume(&self.runc, &self.id)?;
        self.init.step(Step::Resume).map(|_| ())
    }

    pub fn pids(&self) -> Result<Vec<u32>> {
        Ok(self.shared.runtime.ps(&self.runc, &self.id)?)
    }

    /// The init's cgroup metrics (v1 or v2, as containerd's runc shim reports them).
    pub fn stats(&self) -> Result<Any> {
        let snap = self.init.snapshot();
        if snap.state.is_final() || snap.pid == 0 {
            return Err(ShimError::Finished {
                process: self.init.describe(),
            });
        }
        let stats_err = |reason| ShimError::Stats {
            id: self.id.clone(),
            reason,
        };
        let cgroup = cgroups::of_pid(snap.pid).map_err(stats_err)?;
        cgroups::metrics(&cgroup).map_err(stats_err)
    }

    /// `runc update` with an OCI LinuxResources (JSON, as containerd sends it).
    pub fn update(&self, resources: &[u8]) -> Result<()> {
        let state = self.init.state();
        if !matches!(state, State::Created | State::Running | State::Paused) {
            return Err(ShimError::IllegalTransition {
                process: self.init.describe(),
                state,
                action: "update",
            });
        }
        let value: serde_json::Value = serde_json::from_slice(resources)
            .map_err(|e| ShimError::Invalid(format!("update resources: not JSON: {e}")))?;
        if !value.is_object() {
            return Err(ShimError::Invalid(format!(
                "update resources: expected a LinuxResources object, found {value}"
            )));
        }
        let mut file = tempfile::Builder::new()
            .prefix(".update-")
            .suffix(".json")
            .tempfile_in(&self.bundle)
            .map_err(|e| ShimError::io(format!("temp file in {}", self.bundle.display()), e))?;
        std::io::Write::write_all(&mut file, resources)
            .map_err(|e| ShimError::io(format!("write {}", file.path().display()), e))?;
        self.shared
            .runtime
            .update(&self.runc, &self.id, file.path())?;
        Ok(())
    }
}
