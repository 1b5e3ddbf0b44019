//! The containers of one shim (one, or all those of a group: see `service::group_of`).
//! The map's lock is held only to look up, insert or remove: never across runc, a mount
//! or a wait, so one container's slow step never stalls the group's other RPCs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::container::Container;
use crate::error::{Result, ShimError};

#[derive(Default)]
pub struct Registry {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids whose create is under way.
    creating: Mutex<HashSet<String>>,
}

/// An id reserved for one create; released when the create returns, however it returns.
pub struct Reservation<'a> {
    registry: &'a Registry,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.registry.creating).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    /// Claims `id` for a create, so that runc can work without the lock held and a
    /// second create of the same id is refused instead of racing the first (whose
    /// cleanup would delete the winner).
    pub fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let containers = lock(&self.containers);
        let mut creating = lock(&self.creating);
        if containers.contains_key(id) || !creating.insert(id.to_string()) {
            return Err(ShimError::ContainerExists(id.to_string()));
        }
        Ok(Reservation {
            registry: self,
            id: id.to_string(),
        })
    }

    /// Adds a created container; `_reserved` proves its id was claimed.
    pub fn insert(&self, _reserved: &Reservation, container: Arc<Container>) {
        lock(&self.containers).insert(container.id.clone(), container);
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::ContainerNotFound(id.to_string()))
    }

    pub fn remove(&self, id: &str) {
        lock(&self.containers).remove(id);
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.containers).is_empty()
    }
}
