//! Task events for containerd, in order, without blocking the RPC that caused them.
//!
//! Events go to containerd's ttrpc `Events.Forward` at `TTRPC_ADDRESS` (what the publish
//! binary would do, minus a process per event). One thread sends them in the order they
//! were queued; when containerd is restarting the connection is re-dialled and the event
//! retried for a while, so an exit that happens while containerd is down still arrives.
//! The Task service publishes through `EventSink`, so its tests can record events instead.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use log::{debug, warn};

/// How long one event is retried before it is dropped (containerd gone for good).
const RETRY_FOR: Duration = Duration::from_secs(60);
const RETRY_EVERY: Duration = Duration::from_millis(250);

struct Event {
    topic: &'static str,
    message: Box<dyn MessageDyn>,
}

/// Where the Task service sends its events (in the order it sends them).
pub trait EventSink: Send + Sync {
    fn publish(&self, topic: &'static str, message: Box<dyn MessageDyn>);
}

/// A handle for queueing events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Event>,
}

impl Events {
    /// Starts the sender thread. `first` is the connection containerd-shim already made.
    pub fn start(first: RemotePublisher, ttrpc_address: String, namespace: String) -> Self {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || send_loop(rx, first, &ttrpc_address, &namespace))
            .expect("spawn the events thread");
        Events { tx }
    }
}

impl EventSink for Events {
    fn publish(&self, topic: &'static str, message: Box<dyn MessageDyn>) {
        if self.tx.send(Event { topic, message }).is_err() {
            warn!("events thread gone; dropping {topic}");
        }
    }
}

fn send_loop(rx: Receiver<Event>, first: RemotePublisher, address: &str, namespace: &str) {
    let mut publisher = Some(first);
    for event in rx.iter() {
        let deadline = std::time::Instant::now() + RETRY_FOR;
        loop {
            if publisher.is_none() {
                publisher = RemotePublisher::new(address).ok();
            }
            if let Some(p) = publisher.as_ref() {
                // publish() consumes its message; send a copy so a retry has one.
                match p.publish(
                    Context::default(),
                    event.topic,
                    namespace,
                    event.message.clone_box(),
                ) {
                    Ok(()) => {
                        debug!("published {}", event.topic);
                        break;
                    }
                    Err(e) => {
                        warn!("publish {}: {e}; reconnecting", event.topic);
                        publisher = None;
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
