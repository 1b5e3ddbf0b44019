//! The shim binary's three lives (containerd-shim's `Shim` trait):
//! - `start`: print the socket address of the long-lived shim of this container's group,
//!   spawning it first if none runs;
//! - the long-lived shim itself: serve the Task service (`create_task_service`);
//! - `delete`: clean up after a shim that is gone (runc delete --force, unmount).

use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::{ConnectRequest, DeleteResponse};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::shim_ttrpc::TaskClient;
use containerd_shim::protos::ttrpc;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{socket_address, spawn, Config, Error, ExitSignal, Flags, Shim, StartOpts};
use log::warn;
use nestcache::labels::NESTCACHE_SHIM_GROUP;

use crate::bundle::{Record, Spec};
use crate::direct::Direct;
use crate::events::Events;
use crate::mounts;
use crate::panic_guard::Guarded;
use crate::runc::Runc;
use crate::task::{Serving, TaskService};

/// CRI puts every container of a pod in the pod's sandbox: one shim per pod.
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a task killed with its shim reports: 128 + SIGKILL, like containerd's own shims.
const KILLED_EXIT_STATUS: u32 = 128 + 9;

/// The shim a container joins: its `io.nestcache.group` annotation, else its CRI pod
/// (sandbox id), else a shim of its own.
pub fn group_of(spec: &Spec, id: &str) -> String {
    [NESTCACHE_SHIM_GROUP, CRI_SANDBOX_ID]
        .iter()
        .filter_map(|k| spec.annotations.get(*k))
        .find(|v| !v.is_empty())
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

/// How long a `start` waits for a running group shim to answer its join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Joins the group shim serving `address` for task `id`: its `Connect` keeps that shim up
/// until the task's Create (`lifetime`). False when none will serve it: no socket, a dead
/// shim's socket (removed here, so the new shim can bind at once), or a shim on its way
/// out (which has unlinked its socket already).
fn join_group_shim(address: &str, id: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                let _ = std::fs::remove_file(path);
            }
            return false;
        }
    };
    let client = match ttrpc::Client::new(stream.into_raw_fd()) {
        Ok(c) => TaskClient::new(c),
        Err(e) => {
            warn!("join the shim at {address}: {e}");
            return false;
        }
    };
    let req = ConnectRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let timeout = JOIN_TIMEOUT.as_nanos() as i64;
    match client.connect(ttrpc::context::with_timeout(timeout), &req) {
        Ok(_) => true,
        Err(e) => {
            warn!("join the shim at {address}: {e}");
            false
        }
    }
}

pub struct Service {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
    /// The socket this process serves on (only for the long-lived shim).
    socket: String,
    /// containerd's address (the holder named in store leases).
    address: String,
}

impl Shim for Service {
    type T = Guarded<TaskService>;

    fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The long-lived shim (neither `start` nor `delete`) logs through crate::logger,
        // which does not spin on SIGPIPE once containerd closes the log.
        if !matches!(args.action.as_str(), "start" | "delete") {
            config.no_setup_logger = true;
            if let Err(e) = crate::logger::init(args.debug) {
                eprintln!("shim log (bundle's log FIFO): {e}");
            }
        }
        // containerd runs every shim command in the bundle; -bundle only comes with delete.
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        crate::image_config::set_containerd(&args.address, &args.namespace);
        Service {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
            socket: args.socket.clone(),
            address: args.address.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = Spec::load(&self.bundle)
            .map(|s| group_of(&s, &opts.id))
            .unwrap_or_else(|_| opts.id.clone());
        // Prefixed: the bare group id is often another shim's own id (the cache container's,
        // run by containerd's runc shim, which derives its socket the same way).
        let grouping = format!("nestcache-{grouping}");
        let address = socket_address(&opts.address, &opts.namespace, &grouping);
        if join_group_shim(&address, &opts.id) {
            // containerd runs `start` for every task: joining a running shim costs this
            // process and nothing else.
            write_address(&address)?;
            return Ok(address);
        }
        let (_pid, address) = spawn(opts, &grouping, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let record = Record::load(&self.bundle);
        let runc = record
            .as_ref()
            .map(|r| r.runc.clone())
            .unwrap_or_else(|| Runc::new(None, None, &self.namespace, &self.bundle));
        // containerd runs this after every task of a group shim too, once the task is long
        // deleted: without runc state for the id there is nothing for runc to do, and
        // not starting it saves a runc process per nested run.
        let has_state = runc.root.join(&self.id).exists();
        if has_state {
            if let Err(e) = runc.delete(&self.id, true) {
                if !e.is_not_found() {
                    warn!("cleanup of {}: {e}", self.id);
                }
            }
        }
        mounts::teardown(&self.bundle, record.as_ref())
            .map_err(|e| Error::Other(format!("cleanup of {}: {e}", self.id)))?;
        Ok(DeleteResponse {
            pid: 0,
            exit_status: KILLED_EXIT_STATUS,
            exited_at: MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        // The socket is gone already: `lifetime` unlinks it before the exit is signalled.
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // crate::events dials its own connection at the first event: this one would
        // hold a socket and two ttrpc threads in a shim with no task yet.
        drop(publisher);
        let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::start(ttrpc_address, self.namespace.clone());
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        let serving = Serving {
            socket: Some(PathBuf::from(path)).filter(|p| !p.as_os_str().is_empty()),
            first: Some(self.id.clone()),
        };
        let service = TaskService::new(
            &self.namespace,
            &self.address,
            Arc::new(Direct),
            Arc::new(events),
            self.exit.clone(),
            serving,
        );
        match service {
            Ok(t) => Guarded(t),
            Err(e) => {
                // Without the exit monitor the shim could never report an exit.
                eprintln!("containerd-shim-nestcache-v2: {e}");
                std::process::exit(1);
            }
        }
    }
}
