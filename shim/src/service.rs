//! The shim binary's three lives (containerd-shim's `Shim` trait):
//! - `start`: print the socket address of the long-lived shim of this container's group,
//!   spawning it first if none runs;
//! - the long-lived shim itself: serve the Task service (`create_task_service`);
//! - `delete`: clean up after a shim that is gone (runc delete --force, unmount).

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
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
use crate::task::TaskService;

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

/// Whether a shim already serves `address`. A socket file nobody answers on is left by a
/// shim that died; it is removed so the new shim can bind at once.
fn group_shim_answers(address: &str) -> bool {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    match UnixStream::connect(path) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let _ = std::fs::remove_file(path);
            false
        }
        Err(_) => false,
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

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
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
        if group_shim_answers(&address) {
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
        self.exit.wait();
        // The shim crate removes the socket named in the `address` file of its working
        // dir, the bundle of the group's first container, which containerd may have
        // deleted by now; a socket left behind would make the group's next shim wait for
        // it. Ours goes here, by the name we were started with.
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::start(publisher, ttrpc_address, self.namespace.clone());
        let service = TaskService::new(
            &self.namespace,
            &self.address,
            Arc::new(Direct),
            Arc::new(events),
            self.exit.clone(),
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
