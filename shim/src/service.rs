//! The shim binary's three lives (containerd-shim's `Shim` trait):
//! - `start`: spawn the long-lived shim for this container, print its socket address;
//! - the long-lived shim itself: serve the Task service (`create_task_service`);
//! - `delete`: clean up after a shim that is gone (runc delete --force, unmount).

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{spawn, Config, Error, ExitSignal, Flags, Shim, StartOpts};
use log::warn;

use crate::bundle::Record;
use crate::events::Events;
use crate::mounts;
use crate::runc::Runc;
use crate::task::TaskService;

/// What a task killed with its shim reports: 128 + SIGKILL, like containerd's own shims.
const KILLED_EXIT_STATUS: u32 = 128 + 9;

pub struct Service {
    namespace: String,
    id: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

impl Shim for Service {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        // containerd runs every shim command in the bundle; -bundle only comes with delete.
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Service {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // One shim per container: the container id is the grouping.
        let grouping = opts.id.clone();
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
        if let Err(e) = runc.delete(&self.id, true) {
            if !e.is_not_found() {
                warn!("cleanup of {}: {e}", self.id);
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
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let ttrpc_address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        let events = Events::start(publisher, ttrpc_address, self.namespace.clone());
        match TaskService::new(&self.namespace, events, self.exit.clone()) {
            Ok(t) => t,
            Err(e) => {
                // Without the exit monitor the shim could never report an exit.
                eprintln!("containerd-shim-nestcache-v2: {e}");
                std::process::exit(1);
            }
        }
    }
}
