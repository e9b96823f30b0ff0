//! The final counters of deleted containers: a shim detaches a container on delete (nothing
//! of it stays in bpffs or the maps) and reports its last counters through Retire; this
//! module keeps them readable for a while, so Stats callers still see what a short-lived
//! container did after it is gone. Owns the retention policy (how many, how long) and
//! nothing else: no backend, no ttrpc, no clock of its own (callers pass `now`).
//!
//! Memory only: a restart of tetherd forgets retired containers. Their counters are a
//! convenience for the minutes after a delete, not a record; the audit log is the record.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tether_api::types::ContainerStatsInfo;

/// At most this many retired containers are kept; the oldest retirement is dropped first.
///
/// Why 1024: it bounds tetherd's memory under churn (a crash-looping pod, a CI node
/// deleting hundreds of containers a minute) to well under a megabyte, an entry being a few
/// hundred bytes plus its interfaces, and still covers the whole [`RETIRED_TTL`] of a node
/// deleting about one container a second. When churn is higher, the newest deletions are
/// the ones someone is most likely to ask about, so they are the ones kept.
pub const MAX_RETIRED: usize = 1024;

/// How long a retired container's counters stay readable after Retire.
///
/// Why 15 minutes: long enough for an operator to look a few minutes after a short-lived
/// container exited, and for a collector polling Stats every minute or few to pick up the
/// final counters; short enough that deleted containers do not crowd out the live ones in
/// `tetherctl stats`.
pub const RETIRED_TTL: Duration = Duration::from_secs(15 * 60);

/// One retired container.
#[derive(Debug)]
struct Entry {
    /// When it was retired, on the monotonic clock: a step of the wall clock must neither
    /// expire entries early nor keep them forever.
    at: Instant,
    stats: ContainerStatsInfo,
}

/// Retired containers' stats, in the order they were retired.
#[derive(Debug)]
pub struct Retired {
    entries: VecDeque<Entry>,
    capacity: usize,
    ttl: Duration,
}

impl Default for Retired {
    /// Keeps [`MAX_RETIRED`] entries for [`RETIRED_TTL`].
    fn default() -> Self {
        Self::with_limits(MAX_RETIRED, RETIRED_TTL)
    }
}

impl Retired {
    /// Keeps at most `capacity` entries, each for `ttl`.
    pub fn with_limits(capacity: usize, ttl: Duration) -> Self {
        Retired {
            entries: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// Keeps `stats` as retired at `now` (`now_unix_ns` on the wall clock): sets `deleted`
    /// and `deleted_at_unix_ns`, replaces an earlier entry with the same namespace and id,
    /// and drops expired entries and then the oldest ones beyond the capacity.
    pub fn insert(&mut self, mut stats: ContainerStatsInfo, now: Instant, now_unix_ns: u64) {
        self.expire(now);
        self.entries
            .retain(|e| !(e.stats.namespace == stats.namespace && e.stats.id == stats.id));
        stats.deleted = true;
        stats.deleted_at_unix_ns = now_unix_ns;
        self.entries.push_back(Entry { at: now, stats });
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// The entries still kept at `now`, oldest retirement first; forgets expired ones.
    pub fn list(&mut self, now: Instant) -> Vec<ContainerStatsInfo> {
        self.expire(now);
        self.entries.iter().map(|e| e.stats.clone()).collect()
    }

    fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|e| now.saturating_duration_since(e.at) < ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(namespace: &str, id: &str, rx_packets: u64) -> ContainerStatsInfo {
        let mut s = ContainerStatsInfo {
            id: id.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        s.total.rx_packets = rx_packets;
        s
    }

    fn ids(v: &[ContainerStatsInfo]) -> Vec<&str> {
        v.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn insert_marks_deleted_and_replaces_same_container() {
        let t0 = Instant::now();
        let mut r = Retired::default();
        r.insert(stats("default", "a", 1), t0, 100);
        r.insert(stats("k8s.io", "a", 2), t0, 101);
        r.insert(stats("default", "b", 3), t0, 102);
        // Same namespace and id again: replaces the first, now the newest.
        r.insert(stats("default", "a", 4), t0 + Duration::from_secs(1), 200);
        let list = r.list(t0 + Duration::from_secs(1));
        let keys: Vec<_> = list
            .iter()
            .map(|s| (s.namespace.as_str(), s.id.as_str(), s.total.rx_packets))
            .collect();
        assert_eq!(
            keys,
            [("k8s.io", "a", 2), ("default", "b", 3), ("default", "a", 4)]
        );
        assert!(list.iter().all(|s| s.deleted));
        assert_eq!(list[2].deleted_at_unix_ns, 200);
    }

    #[test]
    fn oldest_dropped_beyond_capacity() {
        let t0 = Instant::now();
        let mut r = Retired::with_limits(3, RETIRED_TTL);
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            r.insert(stats("default", id, 0), t0, i as u64);
        }
        assert_eq!(ids(&r.list(t0)), ["c", "d", "e"]);
        // Replacing an entry does not count twice.
        r.insert(stats("default", "d", 0), t0, 9);
        assert_eq!(ids(&r.list(t0)), ["c", "e", "d"]);
    }

    #[test]
    fn default_capacity_is_max_retired() {
        let t0 = Instant::now();
        let mut r = Retired::default();
        for i in 0..MAX_RETIRED + 10 {
            r.insert(stats("default", &format!("c{i}"), 0), t0, 0);
        }
        let list = r.list(t0);
        assert_eq!(list.len(), MAX_RETIRED);
        assert_eq!(list[0].id, "c10");
        assert_eq!(list[MAX_RETIRED - 1].id, format!("c{}", MAX_RETIRED + 9));
    }

    #[test]
    fn entries_expire_after_ttl() {
        let t0 = Instant::now();
        let mut r = Retired::default();
        r.insert(stats("default", "old", 0), t0, 0);
        r.insert(stats("default", "new", 0), t0 + Duration::from_secs(60), 60);
        let just_before = t0 + RETIRED_TTL - Duration::from_nanos(1);
        assert_eq!(ids(&r.list(just_before)), ["old", "new"]);
        assert_eq!(ids(&r.list(t0 + RETIRED_TTL)), ["new"]);
        assert!(r
            .list(t0 + Duration::from_secs(60) + RETIRED_TTL)
            .is_empty());
    }

    #[test]
    fn replacing_restarts_the_ttl() {
        let t0 = Instant::now();
        let mut r = Retired::default();
        r.insert(stats("default", "a", 1), t0, 0);
        let later = t0 + RETIRED_TTL - Duration::from_secs(1);
        r.insert(stats("default", "a", 2), later, 0);
        let list = r.list(t0 + RETIRED_TTL);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].total.rx_packets, 2);
    }
}
