//! A container's metrics on cgroup v1 (and the v1/v2 hybrid layout, where runc puts every
//! resource controller on v1), read as containerd's runc shim reads them
//! (`containerd/cgroups/v1`): CPU from `cpuacct` (total, per CPU, user and kernel) and
//! `cpu` (throttling), memory from `memory` (usage, limit, max and failures of memory,
//! memory+swap, kernel and kernel TCP memory, and `memory.stat`), block I/O from `blkio`
//! (CFQ's recursive files, else the throttle files), hugetlb per page size. Pids are left to
//! `containerd_shim::cgroup::collect_metrics`, whose CPU figures are cgroup v2's, whose
//! memory entries carry usage alone and which reads no block I/O or hugetlb.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics::{
    BlkIOEntry, BlkIOStat, CPUStat, CPUUsage, HugetlbStat, MemoryEntry, MemoryStat, Metrics,
    Throttle,
};
use containerd_shim::protos::protobuf::MessageField;

/// `USER_HZ`, the unit of `cpuacct.stat`: 100 on every Linux architecture (containerd
/// assumes the same).
const CLOCK_TICKS: u64 = 100;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Where controller `controller` of `pid`'s cgroups is: its hierarchy's mount point (from
/// `mountinfo`, the root of the mount taken off) joined with the pid's path in it.
pub fn controller_dir(pid: u32, controller: &str) -> Option<PathBuf> {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    controller_dir_in(&cgroups, &mountinfo, controller)
}

fn controller_dir_in(cgroups: &str, mountinfo: &str, controller: &str) -> Option<PathBuf> {
    let path = cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })?;
    let (root, point) = mountinfo.lines().find_map(|l| {
        let (mount, fs) = l.split_once(" - ")?;
        let mut fs = fs.split_whitespace();
        let (fstype, _source, options) = (fs.next()?, fs.next()?, fs.next()?);
        if fstype != "cgroup" || !options.split(',').any(|o| o == controller) {
            return None;
        }
        let m: Vec<&str> = mount.split_whitespace().collect();
        Some((*m.get(3)?, *m.get(4)?))
    })?;
    let rel = path.strip_prefix(root).unwrap_or(path);
    Some(Path::new(point).join(rel.trim_start_matches('/')))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// The `key value` lines of a flat-keyed cgroup file.
fn flat_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k, v.trim().parse().ok()?))
        })
        .collect()
}

/// CPU time and throttling, or `None` where the `cpuacct` controller is not found.
pub fn cpu(pid: u32) -> Option<CPUStat> {
    cpu_in(
        &controller_dir(pid, "cpuacct")?,
        controller_dir(pid, "cpu").as_deref(),
    )
}

fn cpu_in(acct: &Path, cpu: Option<&Path>) -> Option<CPUStat> {
    let mut usage = CPUUsage {
        total: read_u64(acct, "cpuacct.usage")?,
        per_cpu: read(acct, "cpuacct.usage_percpu")
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(stat) = read(acct, "cpuacct.stat") {
        let stat = flat_keyed(&stat);
        let ns = |ticks: u64| ticks.saturating_mul(NANOS_PER_SECOND) / CLOCK_TICKS;
        usage.user = stat.get("user").copied().map_or(0, ns);
        usage.kernel = stat.get("system").copied().map_or(0, ns);
    }
    let mut throttling = Throttle::default();
    if let Some(stat) = cpu.and_then(|d| read(d, "cpu.stat")) {
        let stat = flat_keyed(&stat);
        let get = |k: &str| stat.get(k).copied().unwrap_or(0);
        throttling.periods = get("nr_periods");
        throttling.throttled_periods = get("nr_throttled");
        throttling.throttled_time = get("throttled_time");
    }
    Some(CPUStat {
        usage: MessageField::some(usage),
        throttling: MessageField::some(throttling),
        ..Default::default()
    })
}

/// One `memory.<prefix>usage_in_bytes`-style family: usage, limit, max usage, failures.
fn entry(dir: &Path, prefix: &str) -> Option<MemoryEntry> {
    Some(MemoryEntry {
        usage: read_u64(dir, &format!("{prefix}usage_in_bytes"))?,
        limit: read_u64(dir, &format!("{prefix}limit_in_bytes")).unwrap_or(0),
        max: read_u64(dir, &format!("{prefix}max_usage_in_bytes")).unwrap_or(0),
        failcnt: read_u64(dir, &format!("{prefix}failcnt")).unwrap_or(0),
        ..Default::default()
    })
}

type Setter = fn(&mut MemoryStat, u64);

/// `memory.stat` keys and the fields they fill, as containerd's v1 collector maps them.
const MEMORY_STAT: &[(&str, Setter)] = &[
    ("cache", |m, v| m.cache = v),
    ("rss", |m, v| m.rss = v),
    ("rss_huge", |m, v| m.rss_huge = v),
    ("mapped_file", |m, v| m.mapped_file = v),
    ("dirty", |m, v| m.dirty = v),
    ("writeback", |m, v| m.writeback = v),
    ("pgpgin", |m, v| m.pg_pg_in = v),
    ("pgpgout", |m, v| m.pg_pg_out = v),
    ("pgfault", |m, v| m.pg_fault = v),
    ("pgmajfault", |m, v| m.pg_maj_fault = v),
    ("inactive_anon", |m, v| m.inactive_anon = v),
    ("active_anon", |m, v| m.active_anon = v),
    ("inactive_file", |m, v| m.inactive_file = v),
    ("active_file", |m, v| m.active_file = v),
    ("unevictable", |m, v| m.unevictable = v),
    ("hierarchical_memory_limit", |m, v| {
        m.hierarchical_memory_limit = v
    }),
    ("hierarchical_memsw_limit", |m, v| {
        m.hierarchical_swap_limit = v
    }),
    ("total_cache", |m, v| m.total_cache = v),
    ("total_rss", |m, v| m.total_rss = v),
    ("total_rss_huge", |m, v| m.total_rss_huge = v),
    ("total_mapped_file", |m, v| m.total_mapped_file = v),
    ("total_dirty", |m, v| m.total_dirty = v),
    ("total_writeback", |m, v| m.total_writeback = v),
    ("total_pgpgin", |m, v| m.total_pg_pg_in = v),
    ("total_pgpgout", |m, v| m.total_pg_pg_out = v),
    ("total_pgfault", |m, v| m.total_pg_fault = v),
    ("total_pgmajfault", |m, v| m.total_pg_maj_fault = v),
    ("total_inactive_anon", |m, v| m.total_inactive_anon = v),
    ("total_active_anon", |m, v| m.total_active_anon = v),
    ("total_inactive_file", |m, v| m.total_inactive_file = v),
    ("total_active_file", |m, v| m.total_active_file = v),
    ("total_unevictable", |m, v| m.total_unevictable = v),
];

/// Memory, or `None` where the `memory` controller is not found.
pub fn memory(pid: u32) -> Option<MemoryStat> {
    memory_in(&controller_dir(pid, "memory")?)
}

fn memory_in(dir: &Path) -> Option<MemoryStat> {
    let mut m = MemoryStat {
        usage: MessageField::some(entry(dir, "memory.")?),
        ..Default::default()
    };
    if let Some(stat) = read(dir, "memory.stat") {
        let stat = flat_keyed(&stat);
        for (key, set) in MEMORY_STAT {
            if let Some(v) = stat.get(key) {
                set(&mut m, *v);
            }
        }
    }
    // Each is absent where the kernel lacks it (swap accounting off, kmem gone in 6.x).
    m.swap = entry(dir, "memory.memsw.").into();
    m.kernel = entry(dir, "memory.kmem.").into();
    m.kernel_tcp = entry(dir, "memory.kmem.tcp.").into();
    Some(m)
}

/// `/dev/<name>` of each block device by (major, minor), from `/proc/partitions`.
fn device_names(partitions: &str) -> HashMap<(u64, u64), String> {
    partitions
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [major, minor, _blocks, name] = f.as_slice() else {
                return None;
            };
            Some((
                (major.parse().ok()?, minor.parse().ok()?),
                format!("/dev/{name}"),
            ))
        })
        .collect()
}

/// The entries of one blkio file (`MAJOR:MINOR [OP] VALUE` lines; `Total` lines skipped).
fn blkio_entries(text: &str, devices: &HashMap<(u64, u64), String>) -> Vec<BlkIOEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, value] => (*dev, *op, *value),
                [dev, value] => (*dev, "", *value),
                _ => return None,
            };
            let (major, minor) = dev.split_once(':')?;
            let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
            Some(BlkIOEntry {
                op: op.to_string(),
                device: devices.get(&(major, minor)).cloned().unwrap_or_default(),
                major,
                minor,
                value: value.parse().ok()?,
                ..Default::default()
            })
        })
        .collect()
}

type BlkioField = fn(&mut BlkIOStat) -> &mut Vec<BlkIOEntry>;

/// Block I/O as containerd reads it: CFQ's recursive files where the kernel has them and
/// they hold anything, else the throttle files.
fn blkio_in(dir: &Path, partitions: &str) -> BlkIOStat {
    let devices = device_names(partitions);
    let mut stat = BlkIOStat::default();
    let cfq: [(&str, BlkioField); 8] = [
        ("blkio.sectors_recursive", |s| &mut s.sectors_recursive),
        ("blkio.io_service_bytes_recursive", |s| {
            &mut s.io_service_bytes_recursive
        }),
        ("blkio.io_serviced_recursive", |s| {
            &mut s.io_serviced_recursive
        }),
        ("blkio.io_queued_recursive", |s| &mut s.io_queued_recursive),
        ("blkio.io_service_time_recursive", |s| {
            &mut s.io_service_time_recursive
        }),
        ("blkio.io_wait_time_recursive", |s| {
            &mut s.io_wait_time_recursive
        }),
        ("blkio.io_merged_recursive", |s| &mut s.io_merged_recursive),
        ("blkio.time_recursive", |s| &mut s.io_time_recursive),
    ];
    let mut found = 0;
    if dir.join("blkio.io_serviced_recursive").exists() {
        for (file, field) in cfq {
            let entries = read(dir, file).map_or_else(Vec::new, |t| blkio_entries(&t, &devices));
            found += entries.len();
            *field(&mut stat) = entries;
        }
    }
    if found == 0 {
        let throttle: [(&str, BlkioField); 2] = [
            ("blkio.throttle.io_serviced", |s| {
                &mut s.io_serviced_recursive
            }),
            ("blkio.throttle.io_service_bytes", |s| {
                &mut s.io_service_bytes_recursive
            }),
        ];
        for (file, field) in throttle {
            *field(&mut stat) =
                read(dir, file).map_or_else(Vec::new, |t| blkio_entries(&t, &devices));
        }
    }
    stat
}

/// Block I/O, or `None` where the `blkio` controller is not found.
pub fn blkio(pid: u32) -> Option<BlkIOStat> {
    let partitions = fs::read_to_string("/proc/partitions").unwrap_or_default();
    Some(blkio_in(&controller_dir(pid, "blkio")?, &partitions))
}

/// The bytes of a huge page size as the hugetlb files name it (`2MB`, `1GB`, `64KB`).
fn page_bytes(size: &str) -> u64 {
    let split = size
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(size.len());
    let n: u64 = size[..split].parse().unwrap_or(0);
    let unit = match &size[split..] {
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => 1,
    };
    n.saturating_mul(unit)
}

/// Usage, max and failures per huge page size (`hugetlb.<size>.usage_in_bytes`, ...).
fn hugetlb_in(dir: &Path) -> Vec<HugetlbStat> {
    let mut sizes: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let size = name
                    .strip_prefix("hugetlb.")?
                    .strip_suffix(".usage_in_bytes")?;
                Some(size.to_string())
            })
            .collect()
        })
        .unwrap_or_default();
    // Smallest page first, as the kernel lists them (`2MB` before `1GB`).
    sizes.sort_by_key(|s| page_bytes(s));
    sizes
        .into_iter()
        .map(|size| HugetlbStat {
            usage: read_u64(dir, &format!("hugetlb.{size}.usage_in_bytes")).unwrap_or(0),
            max: read_u64(dir, &format!("hugetlb.{size}.max_usage_in_bytes")).unwrap_or(0),
            failcnt: read_u64(dir, &format!("hugetlb.{size}.failcnt")).unwrap_or(0),
            pagesize: size,
            ..Default::default()
        })
        .collect()
}

/// Puts what containerd's runc shim gives and `collect_metrics` does not (CPU, memory in
/// full, block I/O, hugetlb) into `metrics`; the rest stays as it is.
pub fn complete(metrics: &mut Metrics, pid: u32) {
    if let Some(cpu) = cpu(pid) {
        metrics.cpu = MessageField::some(cpu);
    }
    if let Some(memory) = memory(pid) {
        metrics.memory = MessageField::some(memory);
    }
    if let Some(blkio) = blkio(pid) {
        metrics.blkio = MessageField::some(blkio);
    }
    if let Some(dir) = controller_dir(pid, "hugetlb") {
        metrics.hugetlb = hugetlb_in(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const CGROUPS: &str = "\
4:memory:/ns/ctr
3:cpu,cpuacct:/ns/ctr
0::/ns/ctr
";

    #[test]
    fn a_controller_is_found_through_its_hierarchy() {
        assert_eq!(
            controller_dir_in(CGROUPS, MOUNTINFO, "cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/ns/ctr"))
        );
        assert_eq!(
            controller_dir_in(CGROUPS, MOUNTINFO, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/ns/ctr"))
        );
        assert_eq!(controller_dir_in(CGROUPS, MOUNTINFO, "pids"), None);
        // A hierarchy mounted from below its root (inside a container).
        let inner = "40 1 0:29 /ns /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n";
        assert_eq!(
            controller_dir_in(CGROUPS, inner, "cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpuacct/ctr"))
        );
    }

    #[test]
    fn cpu_and_memory_read_as_containerd_reads_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::write(p.join("cpuacct.usage"), "24000000\n").unwrap();
        fs::write(p.join("cpuacct.usage_percpu"), "20000000 4000000 \n").unwrap();
        fs::write(p.join("cpuacct.stat"), "user 2\nsystem 1\n").unwrap();
        fs::write(
            p.join("cpu.stat"),
            "nr_periods 5\nnr_throttled 2\nthrottled_time 300\n",
        )
        .unwrap();
        let cpu = cpu_in(p, Some(p)).unwrap();
        assert_eq!(cpu.usage.total, 24_000_000);
        assert_eq!(cpu.usage.per_cpu, vec![20_000_000, 4_000_000]);
        assert_eq!((cpu.usage.user, cpu.usage.kernel), (20_000_000, 10_000_000));
        assert_eq!(
            (
                cpu.throttling.periods,
                cpu.throttling.throttled_periods,
                cpu.throttling.throttled_time
            ),
            (5, 2, 300)
        );

        fs::write(p.join("memory.usage_in_bytes"), "4096\n").unwrap();
        fs::write(p.join("memory.limit_in_bytes"), "8192\n").unwrap();
        fs::write(p.join("memory.max_usage_in_bytes"), "6000\n").unwrap();
        fs::write(p.join("memory.failcnt"), "1\n").unwrap();
        fs::write(
            p.join("memory.stat"),
            "cache 10\nrss 20\ntotal_inactive_file 30\npgfault 40\n",
        )
        .unwrap();
        let m = memory_in(p).unwrap();
        assert_eq!(
            (m.usage.usage, m.usage.limit, m.usage.max, m.usage.failcnt),
            (4096, 8192, 6000, 1)
        );
        assert_eq!(
            (m.cache, m.rss, m.total_inactive_file, m.pg_fault),
            (10, 20, 30, 40)
        );
        assert!(m.swap.is_none() && m.kernel.is_none());
        assert!(cpu_in(&p.join("missing"), None).is_none());
    }

    #[test]
    fn block_io_and_hugetlb_read_as_containerd_reads_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let partitions = "major minor  #blocks  name\n\n 254        0  262144000 vda\n";
        // No CFQ files: the throttle ones.
        fs::write(
            p.join("blkio.throttle.io_service_bytes"),
            "254:0 Read 4096\n254:0 Write 8192\nTotal 12288\n",
        )
        .unwrap();
        fs::write(
            p.join("blkio.throttle.io_serviced"),
            "254:0 Read 1\nTotal 1\n",
        )
        .unwrap();
        let b = blkio_in(p, partitions);
        assert_eq!(b.io_service_bytes_recursive.len(), 2);
        let w = &b.io_service_bytes_recursive[1];
        assert_eq!(
            (w.op.as_str(), w.device.as_str(), w.major, w.minor, w.value),
            ("Write", "/dev/vda", 254, 0, 8192)
        );
        assert_eq!(b.io_serviced_recursive.len(), 1);
        // CFQ's files, where they hold anything, win.
        fs::write(
            p.join("blkio.io_serviced_recursive"),
            "254:0 Read 7\nTotal 7\n",
        )
        .unwrap();
        fs::write(p.join("blkio.sectors_recursive"), "254:0 16\n").unwrap();
        let b = blkio_in(p, partitions);
        assert_eq!(b.io_serviced_recursive[0].value, 7);
        assert_eq!(b.sectors_recursive[0].op, "");
        assert!(b.io_service_bytes_recursive.is_empty());

        fs::write(p.join("hugetlb.2MB.usage_in_bytes"), "2097152\n").unwrap();
        fs::write(p.join("hugetlb.2MB.max_usage_in_bytes"), "4194304\n").unwrap();
        fs::write(p.join("hugetlb.2MB.failcnt"), "3\n").unwrap();
        fs::write(p.join("hugetlb.1GB.usage_in_bytes"), "0\n").unwrap();
        let h = hugetlb_in(p);
        assert_eq!(h.len(), 2);
        assert_eq!(
            (h[0].pagesize.as_str(), h[1].pagesize.as_str()),
            ("2MB", "1GB")
        );
        assert_eq!((h[0].usage, h[0].max, h[0].failcnt), (2097152, 4194304, 3));
    }
}
