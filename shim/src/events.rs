//! Task events to containerd, in the order they are sent.

use containerd_shim::{
    asynchronous::publisher::RemotePublisher,
    protos::{protobuf::MessageDyn, ttrpc::context::Context},
};
use log::warn;

pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    /// Queues `event` under `topic`. The publisher sends in queue order and retries;
    /// a failure to queue is logged here (the task operation itself succeeded).
    pub async fn send(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }
}
