//! Task events for containerd, in order, without blocking the RPC that caused them.
//!
//! Events go to containerd's ttrpc `Events.Forward` at `TTRPC_ADDRESS` (what the publish
//! binary would do, minus a process per event). One thread sends them in the order they
//! were queued; when containerd is restarting the connection is re-dialled and the event
//! retried for a while, so an exit that happens while containerd is down still arrives.
//! The connection is dialled at the first event: a shim with no task yet holds neither
//! the socket nor the ttrpc client's two threads.
//! The Task service publishes through `EventSink`, so its tests can record events instead.
//!
//! An event is encoded where it is raised, through the message's static type. Encoding a
//! `dyn MessageDyn` (and `clone_box`, and containerd-shim's `RemotePublisher`, which names
//! the type from the message's descriptor) goes through protobuf reflection, which builds
//! and keeps the descriptors of the events proto and of every file it imports,
//! descriptor.proto with its comments among them: ~400 KiB of heap in every shim from its
//! first event on.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::{Client, EventsClient};
use log::{debug, warn};

/// How long one event is retried before it is dropped (containerd gone for good).
const RETRY_FOR: Duration = Duration::from_secs(60);
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// The protobuf package of containerd's task events (events/task.proto).
const EVENTS_PACKAGE: &str = "containerd.events";

/// One task event, encoded.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: &'static str,
    /// The message's full protobuf name (`Any.type_url`, as containerd's typeurl reads it).
    pub type_url: String,
    pub value: Vec<u8>,
}

impl Event {
    /// `message` (one of containerd's task events) under `topic`.
    pub fn new<M: Message>(topic: &'static str, message: &M) -> Event {
        let value = message.write_to_bytes().unwrap_or_else(|e| {
            // proto3 messages have no required fields; only a >2 GiB one could fail.
            warn!("event {topic}: encoding {}: {e}", M::NAME);
            Vec::new()
        });
        Event {
            topic,
            type_url: format!("{EVENTS_PACKAGE}.{}", M::NAME),
            value,
        }
    }

    /// containerd's `ForwardRequest` for this event.
    fn forward_request(&self, namespace: &str) -> Result<ForwardRequest, String> {
        let mut envelope = Envelope::new();
        envelope.set_topic(self.topic.to_string());
        envelope.set_namespace(namespace.to_string());
        envelope.set_timestamp(containerd_shim::util::timestamp().map_err(|e| e.to_string())?);
        envelope.set_event(Any {
            type_url: self.type_url.clone(),
            value: self.value.clone(),
            ..Default::default()
        });
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope);
        Ok(request)
    }
}

/// Where the Task service sends its events (in the order it sends them).
pub trait EventSink: Send + Sync {
    fn publish(&self, event: Event);
}

/// A handle for queueing events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Event>,
}

impl Events {
    /// Starts the sender thread, which dials `ttrpc_address` when it has an event.
    pub fn start(ttrpc_address: String, namespace: String) -> Self {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || send_loop(rx, &ttrpc_address, &namespace))
            .expect("spawn the events thread");
        Events { tx }
    }
}

impl EventSink for Events {
    fn publish(&self, event: Event) {
        let topic = event.topic;
        if self.tx.send(event).is_err() {
            warn!("events thread gone; dropping {topic}");
        }
    }
}

fn send_loop(rx: Receiver<Event>, address: &str, namespace: &str) {
    let mut client: Option<EventsClient> = None;
    for event in rx.iter() {
        let request = match event.forward_request(namespace) {
            Ok(r) => r,
            Err(e) => {
                warn!("event {}: {e}; dropped", event.topic);
                continue;
            }
        };
        let deadline = std::time::Instant::now() + RETRY_FOR;
        loop {
            if client.is_none() {
                client = dial(address)
                    .map_err(|e| warn!("events: connect {address}: {e}"))
                    .ok();
            }
            if let Some(c) = client.as_ref() {
                match c.forward(Context::default(), &request) {
                    Ok(_) => {
                        debug!("published {}", event.topic);
                        break;
                    }
                    Err(e) => {
                        warn!("publish {}: {e}; reconnecting", event.topic);
                        client = None;
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                warn!("giving up on event {} after {:?}", event.topic, RETRY_FOR);
                break;
            }
            std::thread::sleep(RETRY_EVERY);
        }
    }
}

fn dial(address: &str) -> Result<EventsClient, String> {
    let fd = containerd_shim::util::connect(address).map_err(|e| e.to_string())?;
    let client = Client::new(fd).map_err(|e| e.to_string())?;
    Ok(EventsClient::new(client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit,
        TaskOOM, TaskPaused, TaskResumed, TaskStart,
    };
    use containerd_shim::protos::protobuf::MessageFull;

    fn type_url_of<M: MessageFull + Default>() {
        let e = Event::new("/tasks/x", &M::default());
        assert_eq!(e.type_url, M::descriptor().full_name());
    }

    /// The type names built from the static names are what the descriptors say.
    #[test]
    fn type_urls_match_the_descriptors() {
        type_url_of::<TaskCreate>();
        type_url_of::<TaskStart>();
        type_url_of::<TaskOOM>();
        type_url_of::<TaskExit>();
        type_url_of::<TaskDelete>();
        type_url_of::<TaskExecAdded>();
        type_url_of::<TaskExecStarted>();
        type_url_of::<TaskPaused>();
        type_url_of::<TaskResumed>();
        type_url_of::<TaskCheckpointed>();
    }

    /// The envelope carries topic, namespace and the message's bytes under its type.
    #[test]
    fn forward_request_wraps_the_message() {
        let start = TaskStart {
            container_id: "c1".into(),
            pid: 42,
            ..Default::default()
        };
        let r = Event::new("/tasks/start", &start)
            .forward_request("ns1")
            .unwrap();
        let e = r.envelope.as_ref().unwrap();
        assert_eq!(
            (e.topic.as_str(), e.namespace.as_str()),
            ("/tasks/start", "ns1")
        );
        assert!(e.timestamp.is_some());
        let any = e.event.as_ref().unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskStart");
        assert_eq!(TaskStart::parse_from_bytes(&any.value).unwrap(), start);
    }
}
