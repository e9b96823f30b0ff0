//! A background `ctr events` subscription, recorded line by line.
//!
//! [`EventLog::start`] returns only once the subscription is known to be live: it labels the
//! namespace (which publishes `/namespaces/update`) until that event comes back. Events
//! published after `start` returns are therefore never missed.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::ctr::Ctr;
use crate::process::kill_and_reap;
use crate::wait;

/// How long to wait for the subscription to become live.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one sentinel may take to come back before another is sent.
const SENTINEL_PERIOD: Duration = Duration::from_millis(500);

/// One event as printed by `ctr events`:
/// `2026-01-01 00:00:00.000000000 +0000 UTC NAMESPACE TOPIC {JSON}`.
#[derive(Debug, Clone)]
pub struct Event {
    pub namespace: String,
    /// E.g. `/tasks/exit`.
    pub topic: String,
    /// The event body; `Null` if absent or not JSON.
    pub payload: serde_json::Value,
    pub line: String,
}

impl Event {
    /// Parses one line of `ctr events` output.
    pub fn parse(line: &str) -> Option<Event> {
        let mut tokens = line.split_whitespace();
        // Date, time, zone offset, zone name.
        tokens.by_ref().take_while(|t| *t != "UTC").for_each(drop);
        let namespace = tokens.next()?.to_owned();
        let topic = tokens.next()?.to_owned();
        if !topic.starts_with('/') {
            return None;
        }
        let rest = tokens.collect::<Vec<_>>().join(" ");
        Some(Event {
            namespace,
            topic,
            payload: serde_json::from_str(&rest).unwrap_or(serde_json::Value::Null),
            line: line.to_owned(),
        })
    }

    /// The container the event is about (`container_id`, or `id` for container events).
    pub fn container_id(&self) -> Option<&str> {
        self.payload
            .get("container_id")
            .or_else(|| self.payload.get("id"))
            .and_then(|v| v.as_str())
    }

    /// Whether this is `topic` about container `id`.
    pub fn is(&self, topic: &str, id: &str) -> bool {
        self.topic == topic && self.container_id() == Some(id)
    }
}

/// A running `ctr events`; killed on drop.
pub struct EventLog {
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
    reader: Option<JoinHandle<()>>,
    namespace: String,
}

impl EventLog {
    /// Subscribes with `ctr events` and waits until the subscription is live.
    pub fn start(ctr: &Ctr) -> Result<Self> {
        let mut child = ctr.spawn(["events"])?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("ctr events has no stdout pipe"))?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(ev) = Event::parse(&line) {
                    if let Ok(mut v) = sink.lock() {
                        v.push(ev);
                    }
                }
            }
        });
        let log = EventLog {
            child,
            events,
            reader: Some(reader),
            namespace: ctr.namespace().to_owned(),
        };
        log.sync(ctr)?;
        Ok(log)
    }

    /// Sends sentinels (namespace label updates) until one is seen.
    fn sync(&self, ctr: &Ctr) -> Result<()> {
        let ns = ctr.namespace();
        let listed = ctr.ok(["namespaces", "ls", "--quiet"])?;
        if !listed.stdout.lines().any(|l| l.trim() == ns) {
            ctr.ok(["namespaces", "create", ns])?;
        }
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        for n in 0.. {
            let value = format!("{}-{n}", std::process::id());
            ctr.ok([
                "namespaces",
                "label",
                ns,
                &format!("tether.test.sentinel={value}"),
            ])?;
            let seen = wait::wait_until("sentinel event", SENTINEL_PERIOD, || {
                Ok(self
                    .snapshot()
                    .iter()
                    .any(|e| {
                        e.topic == "/namespaces/update"
                            && e.payload["labels"]["tether.test.sentinel"] == value.as_str()
                    })
                    .then_some(()))
            });
            if seen.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(anyhow!(
            "ctr events did not deliver a sentinel event within {SUBSCRIBE_TIMEOUT:?}"
        ))
    }

    /// All events of this log's namespace received so far.
    pub fn snapshot(&self) -> Vec<Event> {
        self.events
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|e| e.namespace == self.namespace)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until an event satisfying `pred` has arrived.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        wait::wait_until(what, timeout, || {
            Ok(self.snapshot().into_iter().find(|e| pred(e)))
        })
        .with_context(|| format!("events so far:\n{}", self.dump()))
    }

    /// Waits for `topic` about container `id`.
    pub fn wait_for_topic(&self, topic: &str, id: &str, timeout: Duration) -> Result<Event> {
        self.wait_for(&format!("{topic} for {id}"), timeout, |e| e.is(topic, id))
    }

    /// The raw lines received so far, for error messages.
    pub fn dump(&self) -> String {
        self.snapshot()
            .iter()
            .map(|e| e.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_events_lines() {
        let e = Event::parse(
            "2026-11-25 19:46:47.98201725 +0000 UTC t1 /tasks/oom {\"container_id\":\"oom1\"}",
        )
        .unwrap();
        assert_eq!(e.namespace, "t1");
        assert_eq!(e.topic, "/tasks/oom");
        assert!(e.is("/tasks/oom", "oom1"));

        let e = Event::parse(
            "2026-11-25 19:46:47.822859624 +0000 UTC t1 /containers/delete {\"id\":\"d1\"}",
        )
        .unwrap();
        assert_eq!(e.container_id(), Some("d1"));
        assert!(Event::parse("time=\"...\" level=warning msg=x").is_none());
    }
}
