//! Task events to containerd, delivered in the order they are sent.
//!
//! One task owns the ttrpc connection to containerd's event service and forwards the
//! queue one envelope at a time. Any failure (containerd restarting is the common
//! one) drops the connection, reconnects with backoff and retries the *same* envelope,
//! so a restarted containerd still gets every event, in order. An event that cannot be
//! delivered within the retry budget is logged and dropped, as the Go shim does.

use std::time::Duration;

use containerd_shim::{
    protos::{
        events::task::{
            TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit,
            TaskOOM, TaskPaused, TaskResumed, TaskStart,
        },
        shim::{event::Envelope, events::ForwardRequest},
        shim_async::{Client, EventsClient},
        topics::*,
    },
    util::timestamp,
};
use log::{debug, warn};
use tokio::sync::mpsc;

use crate::any::{pack, Named};
use crate::error::{Error, Result};

const QUEUE: usize = 1024;
const ATTEMPTS: u32 = 8;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A task event and the topic it is published under.
pub trait TaskEvent: Named {
    const TOPIC: &'static str;
}

macro_rules! topics {
    ($($event:ident => $topic:ident),* $(,)?) => {
        $(impl TaskEvent for $event {
            const TOPIC: &'static str = $topic;
        })*
    };
}

topics! {
    TaskCreate => TASK_CREATE_EVENT_TOPIC,
    TaskStart => TASK_START_EVENT_TOPIC,
    TaskExit => TASK_EXIT_EVENT_TOPIC,
    TaskDelete => TASK_DELETE_EVENT_TOPIC,
    TaskExecAdded => TASK_EXEC_ADDED_EVENT_TOPIC,
    TaskExecStarted => TASK_EXEC_STARTED_EVENT_TOPIC,
    TaskPaused => TASK_PAUSED_EVENT_TOPIC,
    TaskResumed => TASK_RESUMED_EVENT_TOPIC,
    TaskCheckpointed => TASK_CHECKPOINTED_EVENT_TOPIC,
    TaskOOM => TASK_OOM_EVENT_TOPIC,
}

pub struct Events {
    tx: mpsc::Sender<Envelope>,
    namespace: String,
}

fn socket(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    }
}

async fn connect(address: &str) -> Option<EventsClient> {
    match Client::connect(&socket(address)).await {
        Ok(c) => Some(EventsClient::new(c)),
        Err(e) => {
            debug!("connect to containerd events {address}: {e}");
            None
        }
    }
}

impl Events {
    /// Starts the forwarder for containerd's ttrpc `address`.
    pub fn start(address: &str, namespace: &str) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(forward(address.to_string(), rx));
        Self {
            tx,
            namespace: namespace.to_string(),
        }
    }

    /// Queues `event` under its topic.
    pub async fn send<E: TaskEvent>(&self, event: E) {
        if let Err(e) = self.envelope(&event).map(|env| self.tx.try_send(env)) {
            warn!("publish {}: {e}", E::TOPIC);
        }
    }

    fn envelope<E: TaskEvent>(&self, event: &E) -> Result<Envelope> {
        let any = pack(event)?;
        let mut env = Envelope::new();
        env.set_topic(E::TOPIC.to_string());
        env.set_namespace(self.namespace.clone());
        env.set_timestamp(timestamp().map_err(|e| Error::framework("event time", e))?);
        env.set_event(any);
        Ok(env)
    }
}

async fn forward(address: String, mut rx: mpsc::Receiver<Envelope>) {
    let mut client = connect(&address).await;
    while let Some(env) = rx.recv().await {
        let topic = env.topic.clone();
        let req = ForwardRequest {
            envelope: Some(env).into(),
            ..Default::default()
        };
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if client.is_none() {
                client = connect(&address).await;
            }
            if let Some(c) = &client {
                let ctx = containerd_shim::protos::ttrpc::context::with_timeout(
                    FORWARD_TIMEOUT.as_nanos() as i64,
                );
                match c.forward(ctx, &req).await {
                    Ok(_) => {
                        delivered = true;
                        break;
                    }
                    Err(e) => {
                        debug!("forward {topic} (attempt {attempt}): {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
        }
        if !delivered {
            warn!("event {topic} dropped: containerd's event service unreachable at {address}");
        }
    }
}
