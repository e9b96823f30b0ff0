//! The audit event ring buffer: typed events out of the shared `events` map.
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::Duration;

use libbpf_rs::{MapHandle, RingBuffer, RingBufferBuilder};

use crate::error::{Error, Result};
use crate::maps::RawEvent;
use crate::pins::PinLayout;
use crate::programs::Programs;
use crate::sys::{self, from_bytes};

/// What an audit event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// connect() refused with EPERM.
    DenyConnect,
    /// sendmsg() refused with EPERM.
    DenySendmsg,
    /// A packet dropped by the cgroup egress program.
    DropCgroup,
    /// A packet dropped by the TC egress program.
    DropTc,
    /// A new connection (when connection auditing is on).
    Connect,
    /// A packet dropped by the cgroup egress program for what it carries, not where it is
    /// headed: a source route, or headers that cannot be judged (truncated, too long a chain
    /// of IPv6 extension headers, a tunnel in a tunnel, GRE of an unknown kind).
    RefuseCgroup,
    /// The same, dropped by the TC egress program.
    RefuseTc,
    /// setsockopt() refused with EPERM: an option that would take packets around the
    /// policy (PACKET_QDISC_BYPASS, IP_OPTIONS, IPV6_RTHDR). The event's `protocol` is the
    /// option's level and its `dport` the option's name; it has no address.
    DenySockopt,
    /// socket(AF_PACKET) refused with EPERM: a container under a policy whose frames no TC
    /// program judges (host network). The event's `protocol` is the address family.
    DenySocket,
    Unknown,
}

impl EventKind {
    fn from_raw(k: u32) -> Self {
        match k {
            1 => EventKind::DenyConnect,
            2 => EventKind::DenySendmsg,
            3 => EventKind::DropCgroup,
            4 => EventKind::DropTc,
            5 => EventKind::Connect,
            6 => EventKind::RefuseCgroup,
            7 => EventKind::RefuseTc,
            8 => EventKind::DenySockopt,
            9 => EventKind::DenySocket,
            _ => EventKind::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DenyConnect => "deny_connect",
            EventKind::DenySendmsg => "deny_sendmsg",
            EventKind::DropCgroup => "drop_cgroup",
            EventKind::DropTc => "drop_tc",
            EventKind::Connect => "connect",
            EventKind::RefuseCgroup => "refuse_cgroup",
            EventKind::RefuseTc => "refuse_tc",
            EventKind::DenySockopt => "deny_sockopt",
            EventKind::DenySocket => "deny_socket",
            EventKind::Unknown => "unknown",
        }
    }
}

/// One audit event as the programs emitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub kind: EventKind,
    /// The calling process (0 for packet-level events).
    pub pid: u32,
    pub daddr: IpAddr,
    pub dport: u16,
    /// IP protocol number (6 tcp, 17 udp, ...).
    pub protocol: u16,
    /// The interface, for TC events.
    pub ifindex: u32,
}

impl Event {
    fn from_raw(r: &RawEvent) -> Self {
        let daddr = if r.family == 10 {
            IpAddr::V6(Ipv6Addr::from(r.daddr))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                r.daddr[0], r.daddr[1], r.daddr[2], r.daddr[3],
            ))
        };
        Event {
            ts_ns: r.ts_ns,
            cgroup_id: r.cgroup_id,
            kind: EventKind::from_raw(r.kind),
            pid: r.pid,
            daddr,
            dport: r.dport,
            protocol: r.protocol,
            ifindex: r.ifindex,
        }
    }
}

/// Reads the ring buffers of one or more object versions (each version has its own) in one
/// wait. Not `Send`: create it on the thread that polls.
pub struct EventReader {
    ring: RingBuffer<'static>,
    /// Events with the index, in the slice given to [`EventReader::over`], of the version
    /// whose ring they came from.
    queue: Rc<RefCell<Vec<(usize, Event)>>>,
    // Keep the maps open for as long as the ring buffers are mapped.
    _maps: Vec<MapHandle>,
}

impl EventReader {
    /// Reads the ring buffer of `programs`.
    pub fn new(programs: &Programs) -> Result<Self> {
        Self::over(&[programs])
    }

    /// Reads the ring buffers of every one of `versions`.
    pub fn over(versions: &[&Programs]) -> Result<Self> {
        let queue = Rc::new(RefCell::new(Vec::new()));
        let mut builder = RingBufferBuilder::new();
        let mut maps = Vec::with_capacity(versions.len());
        for programs in versions {
            let id = sys::map_info(programs.events_fd())?.id;
            let map = MapHandle::from_map_id(id).map_err(|source| Error::Libbpf {
                what: "open events map",
                source,
            })?;
            maps.push(map);
        }
        for (i, map) in maps.iter().enumerate() {
            let sink = Rc::clone(&queue);
            builder
                .add(map, move |data: &[u8]| {
                    if let Some(raw) = from_bytes::<RawEvent>(data) {
                        sink.borrow_mut().push((i, Event::from_raw(&raw)));
                    }
                    0
                })
                .map_err(|source| Error::Libbpf {
                    what: "add ring buffer",
                    source,
                })?;
        }
        let ring = builder.build().map_err(|source| Error::Libbpf {
            what: "build ring buffer",
            source,
        })?;
        Ok(EventReader {
            ring,
            queue,
            _maps: maps,
        })
    }

    /// Waits up to `timeout` for events and returns those available.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Event>> {
        Ok(self
            .poll_tagged(timeout)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// [`EventReader::poll`], each event with the index of the version it came from.
    pub fn poll_tagged(&mut self, timeout: Duration) -> Result<Vec<(usize, Event)>> {
        self.ring.poll(timeout).map_err(|source| Error::Libbpf {
            what: "poll ring buffer",
            source,
        })?;
        Ok(std::mem::take(&mut *self.queue.borrow_mut()))
    }
}

/// The map id of the events ring pinned for `version`: cheap enough to check at every poll
/// whether a reader still reads the pinned rings.
pub fn ring_id(layout: &PinLayout, version: &str) -> Result<u32> {
    let fd = sys::obj_get(&layout.map(version, "events"))?;
    Ok(sys::map_info(fd.as_fd())?.id)
}
