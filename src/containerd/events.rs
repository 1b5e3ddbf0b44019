//! containerd's event stream (the events service's Subscribe), decoded into one flat
//! [`Event`] per envelope: topic, namespace, time, the container it concerns and the
//! attributes a user cares about (pid, exit status, exec id, image, runtime).

use std::collections::BTreeMap;
use std::time::SystemTime;

use containerd_client::events as ev;
use containerd_client::services::v1::SubscribeRequest;
use prost::Message;
use serde::Serialize;
use tokio_stream::StreamExt;

use super::containers::timestamp;
use super::Client;
use crate::Result;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339 UTC with nanoseconds.
    pub time: Option<String>,
    pub namespace: String,
    /// e.g. `/tasks/exit`, `/containers/create`.
    pub topic: String,
    /// The container id, when the event concerns one.
    pub id: Option<String>,
    /// Topic-specific fields (pid, exit_status, exec_id, ...), as strings.
    pub attributes: BTreeMap<String, String>,
}

impl Client {
    /// Subscribes to the events of this client's namespace; `on_event` is called for
    /// each until it returns false or the stream ends.
    pub async fn subscribe_events(&self, mut on_event: impl FnMut(Event) -> bool) -> Result<()> {
        let filter = format!("namespace=={}", self.namespace);
        // The subscription is not namespaced by header but by filter.
        let req = tonic::Request::new(SubscribeRequest {
            filters: vec![filter],
        });
        let mut stream = match self.inner.events().subscribe(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Err(self.error("subscribe to events", s)),
        };
        while let Some(item) = stream.next().await {
            let envelope = item.map_err(|s| self.error("receive events", s))?;
            if !on_event(decode(envelope)) {
                break;
            }
        }
        Ok(())
    }
}

/// The envelope with its payload decoded by topic (unknown topics keep only the topic).
pub fn decode(e: containerd_client::types::Envelope) -> Event {
    let time = e
        .timestamp
        .and_then(timestamp)
        .map(|t: SystemTime| humantime::format_rfc3339_nanos(t).to_string());
    let payload = e.event.map(|a| a.value).unwrap_or_default();
    let (id, attributes) = attributes(&e.topic, &payload);
    Event {
        time,
        namespace: e.namespace,
        topic: e.topic,
        id,
        attributes,
    }
}

type Attrs = (Option<String>, BTreeMap<String, String>);

fn attributes(topic: &str, payload: &[u8]) -> Attrs {
    fn with<M: Message + Default>(payload: &[u8], f: impl FnOnce(M) -> Attrs) -> Attrs {
        match M::decode(payload) {
            Ok(m) => f(m),
            Err(e) => (
                None,
                BTreeMap::from([("decode_error".to_string(), e.to_string())]),
            ),
        }
    }
    let kv = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    match topic {
        "/tasks/create" => with(payload, |m: ev::TaskCreate| {
            (Some(m.container_id), kv(&[("pid", m.pid.to_string())]))
        }),
        "/tasks/start" => with(payload, |m: ev::TaskStart| {
            (Some(m.container_id), kv(&[("pid", m.pid.to_string())]))
        }),
        "/tasks/exit" => with(payload, |m: ev::TaskExit| {
            let exec = if m.id == m.container_id {
                String::new()
            } else {
                m.id
            };
            let pairs = [
                ("pid", m.pid.to_string()),
                ("exit_status", m.exit_status.to_string()),
                ("exec_id", exec),
            ];
            (Some(m.container_id), kv(&pairs))
        }),
        "/tasks/delete" => with(payload, |m: ev::TaskDelete| {
            let pairs = [
                ("pid", m.pid.to_string()),
                ("exit_status", m.exit_status.to_string()),
            ];
            (Some(m.container_id), kv(&pairs))
        }),
        "/tasks/oom" => with(payload, |m: ev::TaskOom| (Some(m.container_id), kv(&[]))),
        "/tasks/exec-added" => with(payload, |m: ev::TaskExecAdded| {
            (Some(m.container_id), kv(&[("exec_id", m.exec_id)]))
        }),
        "/tasks/exec-started" => with(payload, |m: ev::TaskExecStarted| {
            let pairs = [("exec_id", m.exec_id), ("pid", m.pid.to_string())];
            (Some(m.container_id), kv(&pairs))
        }),
        "/tasks/paused" => with(payload, |m: ev::TaskPaused| (Some(m.container_id), kv(&[]))),
        "/tasks/resumed" => with(payload, |m: ev::TaskResumed| {
            (Some(m.container_id), kv(&[]))
        }),
        "/containers/create" => with(payload, |m: ev::ContainerCreate| {
            let runtime = m.runtime.map(|r| r.name).unwrap_or_default();
            (Some(m.id), kv(&[("image", m.image), ("runtime", runtime)]))
        }),
        "/containers/update" => with(payload, |m: ev::ContainerUpdate| (Some(m.id), kv(&[]))),
        "/containers/delete" => with(payload, |m: ev::ContainerDelete| (Some(m.id), kv(&[]))),
        _ => (None, BTreeMap::new()),
    }
}

impl std::fmt::Display for Event {
    /// `TIME TOPIC ID key=value...`, as `ctr events` and `docker events` print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.time.as_deref().unwrap_or("-"),
            self.topic,
            self.id.as_deref().unwrap_or("-")
        )?;
        for (k, v) in &self.attributes {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_task_exit_and_keeps_unknown_topics() {
        let exit = ev::TaskExit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 3,
            exited_at: None,
        };
        let env = containerd_client::types::Envelope {
            timestamp: None,
            namespace: "nestcache".into(),
            topic: "/tasks/exit".into(),
            event: Some(prost_types::Any {
                type_url: String::new(),
                value: exit.encode_to_vec(),
            }),
        };
        let e = decode(env);
        assert_eq!(e.id.as_deref(), Some("c1"));
        assert_eq!(
            e.attributes.get("exit_status").map(String::as_str),
            Some("3")
        );
        assert!(
            !e.attributes.contains_key("exec_id"),
            "init process: no exec id"
        );
        let other = decode(containerd_client::types::Envelope {
            topic: "/snapshot/prepare".into(),
            ..Default::default()
        });
        assert!(other.id.is_none() && other.attributes.is_empty());
        // A payload that is not the topic's message is reported, not a panic.
        let bad = attributes("/tasks/exit", &[0xff, 0xff, 0xff]);
        assert!(bad.1.contains_key("decode_error"));
    }
}
