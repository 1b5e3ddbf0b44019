//! Container metadata: create / get / list by label filter / update labels / delete.
//! A containerd container is only a record (id, labels, runtime, OCI spec); the process
//! is its task (see `tasks.rs`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_client::services::v1::{
    container::Runtime, Container as RawContainer, CreateContainerRequest, DeleteContainerRequest,
    GetContainerRequest, ListContainersRequest, UpdateContainerRequest,
};
use oci_spec::runtime::Spec;
use tonic::Code;

use super::{labels, validate_id, Client};
use crate::{Error, Result};

/// What to create.
#[derive(Debug, Clone)]
pub struct NewContainer {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub spec: Spec,
    /// Overrides the client's runtime (default `io.containerd.runc.v2`).
    pub runtime: Option<String>,
    /// The runtime's options, passed by containerd to the shim at task create.
    pub runtime_options: Option<prost_types::Any>,
}

/// A container as containerd holds it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub runtime: String,
    /// The OCI runtime spec JSON, if the container has one.
    pub spec_json: Option<Vec<u8>>,
    pub created_at: Option<SystemTime>,
}

impl Container {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The container's OCI spec, parsed.
    pub fn spec(&self) -> Result<Spec> {
        let raw = self
            .spec_json
            .as_deref()
            .ok_or_else(|| Error::Invalid(format!("container {} has no OCI spec", self.id)))?;
        serde_json::from_slice(raw).map_err(|e| {
            Error::Invalid(format!("container {}: OCI spec is not valid: {e}", self.id))
        })
    }

    fn from_raw(c: RawContainer) -> Container {
        Container {
            id: c.id,
            labels: c.labels,
            runtime: c.runtime.map(|r| r.name).unwrap_or_default(),
            spec_json: c.spec.map(|a| a.value),
            created_at: c.created_at.and_then(timestamp),
        }
    }
}

/// A protobuf timestamp as SystemTime (None before 1970 or when malformed).
pub(crate) fn timestamp(t: prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

impl Client {
    /// Creates the container record. An id already in use is an `Invalid` error naming it.
    pub async fn create_container(&self, new: NewContainer) -> Result<Container> {
        validate_id("container id", &new.id)?;
        let spec = serde_json::to_vec(&new.spec)
            .map_err(|e| Error::Invalid(format!("container {}: OCI spec: {e}", new.id)))?;
        let raw = RawContainer {
            id: new.id.clone(),
            labels: new.labels,
            runtime: Some(Runtime {
                name: new.runtime.unwrap_or_else(|| self.runtime.clone()),
                options: new.runtime_options,
            }),
            spec: Some(prost_types::Any {
                type_url: labels::SPEC_TYPE_URL.to_string(),
                value: spec,
            }),
            ..Default::default()
        };
        let req = self.request(CreateContainerRequest {
            container: Some(raw),
        });
        match self.inner.containers().create(req).await {
            Ok(r) => r
                .into_inner()
                .container
                .map(Container::from_raw)
                .ok_or_else(|| self.empty_answer("create container", &new.id)),
            Err(s) if s.code() == Code::AlreadyExists => Err(Error::Invalid(format!(
                "container {} already exists in namespace {}",
                new.id, self.namespace
            ))),
            Err(s) => Err(self.error(format_args!("create container {}", new.id), s)),
        }
    }

    /// The container with that id, or None.
    pub async fn get_container(&self, id: &str) -> Result<Option<Container>> {
        let what = format!("get container {id}");
        let call = || {
            let req = self.request(GetContainerRequest { id: id.to_string() });
            let mut containers = self.inner.containers();
            async move { containers.get(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(r) => Ok(r.into_inner().container.map(Container::from_raw)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Containers matching a containerd filter (see [`labels::filter`]); several filters
    /// are OR-ed, the comma-separated parts of one filter AND-ed.
    pub async fn list_containers(&self, filters: &[String]) -> Result<Vec<Container>> {
        let req = self.request(ListContainersRequest {
            filters: filters.to_vec(),
        });
        match self.inner.containers().list(req).await {
            Ok(r) => Ok(r
                .into_inner()
                .containers
                .into_iter()
                .map(Container::from_raw)
                .collect()),
            Err(s) => Err(self.error("list containers", s)),
        }
    }

    /// Containers whose labels hold every pair.
    pub async fn list_by_labels(&self, pairs: &[(&str, &str)]) -> Result<Vec<Container>> {
        self.list_containers(&[labels::filter(pairs)]).await
    }

    /// Sets (or, with an empty value, clears) the given labels, leaving the others alone.
    pub async fn update_labels(&self, id: &str, set: &[(&str, &str)]) -> Result<Container> {
        let raw = RawContainer {
            id: id.to_string(),
            labels: set
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let mask = prost_types::FieldMask {
            paths: set.iter().map(|(k, _)| format!("labels.{k}")).collect(),
        };
        let what = format!("update container {id}");
        let call = || {
            let req = self.request(UpdateContainerRequest {
                container: Some(raw.clone()),
                update_mask: Some(mask.clone()),
            });
            let mut containers = self.inner.containers();
            async move { containers.update(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(r) => r
                .into_inner()
                .container
                .map(Container::from_raw)
                .ok_or_else(|| self.empty_answer("update container", id)),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    /// Deletes the container record; false when there was none. containerd refuses while
    /// a task exists: delete the task first.
    pub async fn delete_container(&self, id: &str) -> Result<bool> {
        let what = format!("delete container {id}");
        let call = || {
            let req = self.request(DeleteContainerRequest { id: id.to_string() });
            let mut containers = self.inner.containers();
            async move { containers.delete(req).await }
        };
        match self.reconnecting(&what, call).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(self.error(&what, s)),
        }
    }

    fn empty_answer(&self, what: &str, id: &str) -> Error {
        Error::Containerd {
            address: self.address.clone(),
            message: format!("{what} {id}: empty answer"),
        }
    }
}
