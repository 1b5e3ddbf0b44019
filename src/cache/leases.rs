//! Which store leases still protect something. A lease is stale only when the process that
//! took it has exited *and* containerd (the one the lease names, at its address and
//! namespace) answers that the container is gone; a containerd that does not answer keeps
//! every lease it holds. `store gc`, `images rm` and the removal of content dirs ask here.

use std::collections::HashMap;
use std::path::Path;

use crate::containerd::Client;
use crate::store::{Lease, Store, StoreError};
use crate::{Error, Result};

/// Leases sorted by what protects them.
#[derive(Debug, Default)]
pub struct LeaseVerdicts {
    /// Still in force, with why (one line each).
    pub live: Vec<(Lease, String)>,
    /// Confirmed stale: creator gone, container gone.
    pub stale: Vec<Lease>,
}

impl LeaseVerdicts {
    /// `container (why)` for each live lease, for messages.
    pub fn live_holders(&self) -> Vec<String> {
        self.live
            .iter()
            .map(|(l, why)| format!("{} ({why})", l.holder.container))
            .collect()
    }
}

/// Asks each lease's containerd whether its container still exists.
pub async fn classify(leases: Vec<Lease>) -> LeaseVerdicts {
    let mut clients: HashMap<String, std::result::Result<Client, String>> = HashMap::new();
    let mut out = LeaseVerdicts::default();
    for lease in leases {
        if lease.creator_alive() {
            let pid = lease.creator.as_ref().map_or(0, |c| c.pid);
            out.live
                .push((lease, format!("the process that took it, pid {pid}, runs")));
            continue;
        }
        let h = &lease.holder;
        if !clients.contains_key(&h.address) {
            let c = Client::connect(&h.address, &h.namespace)
                .await
                .map_err(|e| e.to_string());
            clients.insert(h.address.clone(), c);
        }
        let answer = match &clients[&h.address] {
            Ok(c) => match c.with_namespace(&h.namespace) {
                Ok(c) => c
                    .get_container(&h.container)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.clone()),
        };
        match answer {
            Ok(None) => out.stale.push(lease),
            Ok(Some(_)) => out.live.push((lease, "its container exists".into())),
            Err(e) => out.live.push((lease, format!("containerd unsure: {e}"))),
        }
    }
    out
}

/// The live leases of the store at `content_dir` (none when it is not a store).
pub async fn live_in(content_dir: &Path) -> Result<LeaseVerdicts> {
    let store = match Store::open_existing(content_dir) {
        Ok(s) => s,
        Err(Error::Store(StoreError::NoStore { .. })) => return Ok(LeaseVerdicts::default()),
        Err(e) => return Err(e),
    };
    Ok(classify(store.leases()?).await)
}
