//! End-to-end tests of the real tetherd: the tetherd and tetherctl binaries against the
//! real kernel, each test on a private bpffs with its own socket, config and audit log.
//! Restart and crash safety, permissions, bad input, garbage collection and audit events.
mod kernel;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kernel::*;
use tether_api::types::{AcquireReply, AuditEvent, ContainerInfo, GcReport, StatusInfo};
use tether_api::Client;
use tether_bpf::{container, Cidr, ContainerConfig, PinLayout, Prog, Programs};

/// Re-executed by [`Probe`]; does nothing in a normal test run.
#[test]
fn probe_entry() -> Result<()> {
    Ok(tether_bpf::testing::probe_entry()?)
}

fn prog_ids(a: &AcquireReply) -> BTreeMap<String, u32> {
    a.acquired
        .programs
        .iter()
        .map(|p| (p.name.clone(), p.id))
        .collect()
}

fn stats_of<'a>(lines: &'a [serde_json::Value], id: &str) -> Result<&'a serde_json::Value> {
    lines
        .iter()
        .find(|l| l["id"] == id)
        .with_context(|| format!("no stats for {id}: {lines:?}"))
}

#[test]
fn restart_adopts_pins_and_counters_keep_counting() -> Result<()> {
    let mut node = Node::new()?;
    let first_pid = node.start_tetherd()?;
    let first = node.acquire()?;
    assert!(first.loaded_now);
    assert_eq!(prog_ids(&first).len(), tether_bpf::Prog::ALL.len());

    // A "container": its entries in the shared maps, and one packet counted.
    let pkt = ipv4_packet([198, 51, 100, 1], 100);
    {
        let progs = node.programs()?;
        progs.maps().set_container(
            TEST_RUN_CGROUP,
            &ContainerConfig::default(),
            "test",
            "restart",
        )?;
        assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt)?, 1);
    }

    node.kill9(first_pid)?;
    let second_pid = node.start_tetherd()?;
    assert_ne!(first_pid, second_pid);
    let status = node.status()?;
    assert_eq!(status.loads, 0, "a restarted tetherd adopts: {status:?}");
    assert_eq!(status.versions.len(), 1, "{status:?}");
    assert_eq!(status.versions[0].problem, None);
    // How full the maps are, read from the kernel's maps: the one container.
    let usage = |map: &str| {
        status.versions[0]
            .usage
            .iter()
            .find(|u| u.map == map)
            .map(|u| (u.entries, u.max_entries))
    };
    assert!(
        matches!(usage("cgroups"), Some((1, max)) if max > 1),
        "{status:?}"
    );
    assert_eq!(
        usage("tc_slots"),
        Some((0, u64::from(tether_bpf::maps::TC_SLOTS))),
        "{status:?}"
    );
    let text = node.ctl(&["status"])?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["cgroups", "1"])),
        "{text}"
    );
    let again = node.acquire()?;
    assert!(!again.loaded_now);
    assert_eq!(prog_ids(&again), prog_ids(&first));

    // The data plane did not notice: the same programs, the same counters.
    let progs = node.programs()?;
    let by_name: BTreeMap<String, u32> = progs
        .ids()
        .into_iter()
        .map(|(p, id)| (p.name().to_string(), id))
        .collect();
    assert_eq!(by_name, prog_ids(&first));
    assert_eq!(progs.test_run(Prog::CgroupEgress, &pkt)?, 1);

    let lines = node.stats_lines()?;
    let s = stats_of(&lines, "restart")?;
    assert_eq!(s["namespace"], "test");
    assert_eq!(s["cgroup_id"], TEST_RUN_CGROUP);
    assert_eq!(s["tx_packets"], 2, "{s}");
    assert_eq!(s["tx_bytes"], 2 * (pkt.len() as u64 - 14), "{s}");
    assert_eq!(node.status()?.loads, 0);
    Ok(())
}

/// What a killed tetherd may leave under the pin root: nothing, a complete version that
/// opens, or staging directories. Returns whether a staging directory was found.
fn check_pin_root(layout: &PinLayout) -> Result<bool> {
    let entries = match fs::read_dir(layout.root()) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut staging = false;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name == tether_bpf::VERSION {
            Programs::open(layout, &name)
                .with_context(|| format!("a killed load left a broken version dir {name}"))?;
        } else if name.starts_with("staging-") {
            staging = true;
        } else if name != "containers" {
            bail!("unexpected entry {name} under the pin root");
        }
    }
    Ok(staging)
}

#[test]
fn kill_during_load_never_leaves_half_written_pins() -> Result<()> {
    let mut node = Node::new()?;
    let mut outcomes = Vec::new();
    let (mut during, mut after) = (false, false);
    // Delays from 0 ms in 10 ms steps, then growing by half (a slow machine, such as an
    // emulated one, loads in seconds), until one kill has landed during a load (a staging
    // directory is left: the load pins into it before the rename) and one after it.
    let mut delay_ms = 0u64;
    while !(during && after) && delay_ms <= 30_000 {
        let pid = node.start_tetherd()?;
        let socket = node.socket.clone();
        let (connected_tx, connected) = std::sync::mpsc::channel();
        let acquire = std::thread::spawn(move || {
            block_on(async move {
                let c = Client::connect(&socket, DEADLINE)
                    .await?
                    .with_timeout(DEADLINE);
                let _ = connected_tx.send(());
                Ok(c.acquire("").await?)
            })
        });
        // Connected before the kill: a client connecting after it would retry until its
        // deadline.
        connected
            .recv_timeout(DEADLINE)
            .context("the client did not connect")?;
        // The fault's timing, not a synchronisation: the steps land before, during and
        // after the load.
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.kill9(pid)?;
        let replied = acquire
            .join()
            .map_err(|_| anyhow::anyhow!("acquire thread panicked"))?
            .is_ok();
        let staging = check_pin_root(node.layout())?;
        let complete = node.layout().versions()? == [tether_bpf::VERSION];
        during |= staging && !replied;
        after |= complete;
        outcomes.push(format!(
            "{delay_ms} ms: replied={replied} complete={complete} staging={staging}"
        ));
        // Remove a complete version so the next tetherd loads again instead of adopting.
        if complete {
            fs::remove_dir_all(node.layout().version_dir(tether_bpf::VERSION))?;
        }
        delay_ms = if delay_ms < 100 {
            delay_ms + 10
        } else {
            delay_ms * 3 / 2
        };
    }
    eprintln!("kills: {outcomes:#?}");
    ensure!(during, "no kill landed during a load: {outcomes:#?}");
    ensure!(after, "no kill landed after a load: {outcomes:#?}");

    node.start_tetherd()?;
    let a = node.acquire()?;
    assert!(a.loaded_now);
    assert_eq!(node.layout().versions()?, [tether_bpf::VERSION]);
    assert_eq!(
        node.layout().staging_dirs()?,
        Vec::<std::path::PathBuf>::new(),
        "unfinished loads are cleaned up"
    );
    node.programs()?;
    let status = node.status()?;
    assert_eq!(status.loads, 1);
    assert_eq!(status.versions[0].problem, None);
    Ok(())
}

#[test]
fn non_root_callers_are_refused() -> Result<()> {
    let mut node = Node::new()?;
    node.start_tetherd()?;
    // Let uid 65534 reach the socket, so the refusal is tetherd's and not the file system's.
    chmod_755(node.dir.path())?;
    chmod_755(node.socket.parent().context("socket dir")?)?;
    fs::set_permissions(&node.socket, fs::Permissions::from_mode(0o666))?;
    let bin = tempfile::Builder::new()
        .prefix("tetherctl-bin-")
        .tempdir()?;
    chmod_755(bin.path())?;
    let ctl = bin.path().join("tetherctl");
    fs::copy(TETHERCTL, &ctl)?;
    chmod_755(&ctl)?;

    for args in [
        vec!["status"],
        vec!["acquire", "--tetherd", NO_SPAWN],
        vec!["gc"],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&ctl)
            .arg("--socket")
            .arg(&node.socket)
            .args(&args)
            .output()
            .context("setpriv")?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("neither root nor in"), "{args:?}: {err}");
        assert!(err.contains("65534"), "{args:?}: {err}");
    }

    // Root still works, and nobody's acquire loaded nothing.
    let status: StatusInfo = node.ctl_json(&["status"])?;
    assert_eq!(status.loads, 0);
    assert!(node.acquire()?.loaded_now);
    Ok(())
}

#[test]
fn garbage_and_tampered_pins_are_reported_not_fatal() -> Result<()> {
    let mut node = Node::new()?;
    let pid = node.start_tetherd()?;
    node.acquire()?;

    // Garbage, and a frame header announcing 100 MiB: each closes only its connection.
    let mut garbage = UnixStream::connect(&node.socket)?;
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\nthis is not ttrpc at all")?;
    let mut oversized = UnixStream::connect(&node.socket)?;
    let mut header = Vec::new();
    header.extend_from_slice(&(100u32 << 20).to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&[1, 0]);
    header.extend_from_slice(&[0u8; 4096]);
    oversized.write_all(&header)?;
    let status: StatusInfo = node.ctl_json(&["status"])?;
    assert_eq!(status.pid, pid);
    assert_eq!(status.loads, 1);
    drop((garbage, oversized));
    assert!(node.is_running(pid)?);
    assert_eq!(node.status()?.pid, pid);

    // A map pinned where a program belongs, found by the next tetherd.
    node.kill9(pid)?;
    let v = tether_bpf::VERSION;
    let prog_pin = node.layout().prog(v, Prog::Connect4.name());
    fs::remove_file(&prog_pin)?;
    let mut map = libbpf_rs::MapHandle::from_pinned_path(node.layout().map(v, "cgroups"))?;
    map.pin(&prog_pin)?;
    let pid = node.start_tetherd()?;

    let out = node.ctl(&["acquire", "--tetherd", NO_SPAWN])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&prog_pin.display().to_string()), "{err}");
    assert!(
        err.contains("tampered") || err.contains("not tether's"),
        "{err}"
    );

    let status: StatusInfo = node.ctl_json(&["status"])?;
    assert_eq!(status.pid, pid);
    assert_eq!(status.versions.len(), 1, "{status:?}");
    let problem = status.versions[0].problem.as_deref().unwrap_or_default();
    assert!(problem.contains("not tether's"), "{problem}");
    assert!(problem.contains("tether_connect4"), "{problem}");
    assert!(node.is_running(pid)?);
    Ok(())
}

fn find<'a>(ps: &'a [ContainerInfo], id: &str) -> Option<&'a ContainerInfo> {
    ps.iter().find(|c| c.namespace == "test" && c.id == id)
}

#[test]
fn gc_removes_containers_whose_cgroup_is_gone() -> Result<()> {
    let mut node = Node::with_broker_keys("gc_interval = 0")?;
    node.start_tetherd()?;
    node.acquire()?;
    let progs = node.programs()?;
    let attach = |id: &str, cg: &TestCgroup| -> Result<u64> {
        let a = container::attach_cgroup(
            &progs,
            node.layout(),
            "test",
            id,
            cg.open()?.as_fd(),
            &ContainerConfig::default(),
            &["127.0.0.2/32".parse::<Cidr>()?],
        )?;
        Ok(a.cgroup_id)
    };
    let gone_cg = TestCgroup::new()?;
    let gone = attach("gone", &gone_cg)?;
    let alive_cg = TestCgroup::new()?;
    let alive = attach("alive", &alive_cg)?;

    let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"])?;
    let c = find(&ps, "gone").context("gone is listed")?;
    assert_eq!((c.cgroup_id, c.stale), (gone, false));
    assert_eq!(c.attachments.len(), 7, "{c:?}");
    assert_eq!(c.version, tether_bpf::VERSION);

    fs::remove_dir(&gone_cg.path)?;
    // The kernel releases a removed cgroup's links asynchronously.
    wait_for(
        "the removed cgroup's container to turn stale",
        DEADLINE,
        || {
            let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"]).ok()?;
            find(&ps, "gone").is_some_and(|c| c.stale).then_some(())
        },
    )?;

    let dry: GcReport = node.ctl_json(&["gc", "--dry-run"])?;
    assert_eq!(dry.removed_containers, ["test/gone"]);
    let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"])?;
    assert!(find(&ps, "gone").is_some(), "a dry run removes nothing");

    let report: GcReport = node.ctl_json(&["gc"])?;
    assert_eq!(report.removed_containers, ["test/gone"], "{report:?}");
    assert!(report.removed_versions.is_empty(), "{report:?}");
    assert!(report.removed_map_entries >= 1, "{report:?}");

    let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"])?;
    assert!(find(&ps, "gone").is_none(), "{ps:?}");
    let kept = find(&ps, "alive").context("a live container is kept")?;
    assert!(!kept.stale);

    let maps = progs.maps();
    let known = maps.known_cgroups()?;
    assert!(!known.contains(&gone), "{known:?}");
    assert!(known.contains(&alive), "{known:?}");
    assert!(maps.deny_rules(gone)?.is_empty());
    assert_eq!(maps.deny_rules(alive)?.len(), 1);
    assert!(maps.identities()?.iter().all(|(_, i)| i.id != "gone"));
    assert!(!node.layout().container_dir("test", "gone")?.exists());
    Ok(())
}

/// Attaches container `id` of `programs` to a new test cgroup with `deny` as its one deny
/// rule, has a process in it connect() to `deny` port 9 (refused), and returns the cgroup,
/// its id and the deny_connect event tetherd wrote to the audit log.
fn denied_connect_event(
    node: &Node,
    programs: &Programs,
    id: &str,
    deny: &str,
) -> Result<(TestCgroup, u64, AuditEvent)> {
    let cg = TestCgroup::new()?;
    let attached = container::attach_cgroup(
        programs,
        node.layout(),
        "test",
        id,
        cg.open()?.as_fd(),
        &ContainerConfig::default(),
        &[format!("{deny}/32").parse::<Cidr>()?],
    )?;
    let r = Probe::new(&format!("connect {deny}:9"))
        .cgroup(&cg)
        .result()?;
    assert_eq!(r, "permission denied:1");
    let event = wait_for("the deny_connect event in the audit log", DEADLINE, || {
        fs::read_to_string(&node.audit_log)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<AuditEvent>(l).ok())
            .find(|e| e.kind == "deny_connect" && e.id == id)
    })
    .with_context(|| node.logs())?;
    Ok((cg, attached.cgroup_id, event))
}

#[test]
fn denied_connect_reaches_the_audit_log() -> Result<()> {
    let mut node = Node::new()?;
    node.start_tetherd()?;
    node.acquire()?;
    let progs = node.programs()?;
    let (_cg, cgroup_id, event) = denied_connect_event(&node, &progs, "audited", "127.0.0.2")?;
    assert_eq!(event.namespace, "test");
    assert_eq!(event.cgroup_id, cgroup_id);
    assert_eq!(event.daddr, "127.0.0.2");
    assert_eq!(event.dport, 9);
    assert_eq!(event.family, "ipv4");
    assert_eq!(event.protocol, "tcp");
    let lines = node.stats_lines()?;
    let s = stats_of(&lines, "audited")?;
    assert!(s["denials"].as_u64().unwrap_or(0) >= 1, "{s}");

    // A container on another object version (pinned beside, as after an upgrade) has its
    // own ring buffer, which tetherd reads as well.
    let other = "00000000000000aa";
    tether_bpf::programs::load_and_pin(node.layout(), other)?;
    let old = Programs::open(node.layout(), other)?;
    let (_cg_old, cgroup_id, event) =
        denied_connect_event(&node, &old, "audited-old", "127.0.0.3")?;
    assert_eq!(event.cgroup_id, cgroup_id);
    assert_eq!(event.daddr, "127.0.0.3");
    container::detach(&old, node.layout(), "test", "audited-old")?;
    container::detach(&progs, node.layout(), "test", "audited")?;
    Ok(())
}

/// Between `runc delete` (the cgroup goes) and its shim's detach, a container looks stale;
/// marked as being deleted, gc leaves its pins and entries, so the detach still reads its
/// final counters and hands them to tetherd. The control, unmarked, is collected in the same pass.
#[test]
fn gc_leaves_a_container_that_is_being_deleted() -> Result<()> {
    let mut node = Node::with_broker_keys("gc_interval = 0")?;
    node.start_tetherd()?;
    node.acquire()?;
    let progs = node.programs()?;
    let mut cgroups = Vec::new();
    for id in ["deleting", "unmarked"] {
        let cg = TestCgroup::new()?;
        let a = container::attach_cgroup(
            &progs,
            node.layout(),
            "test",
            id,
            cg.open()?.as_fd(),
            &ContainerConfig::default(),
            &["127.0.0.2/32".parse::<Cidr>()?],
        )?;
        cgroups.push((id, cg, a.cgroup_id));
    }
    container::mark_deleting(node.layout(), "test", "deleting")?;
    for (_, cg, _) in &cgroups {
        fs::remove_dir(&cg.path)?;
    }
    wait_for("both containers to turn stale", DEADLINE, || {
        let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"]).ok()?;
        ["deleting", "unmarked"]
            .iter()
            .all(|id| find(&ps, id).is_some_and(|c| c.stale))
            .then_some(())
    })?;

    let report: GcReport = node.ctl_json(&["gc"])?;
    assert_eq!(report.removed_containers, ["test/unmarked"], "{report:?}");
    let (_, _, deleting_cg) = &cgroups[0];
    assert!(
        progs.maps().known_cgroups()?.contains(deleting_cg),
        "the entries of the container being deleted were removed"
    );
    // What the shim's detach reads and removes is all there: its cgroup's entries (the
    // deny rule among them) and its links.
    assert_eq!(progs.maps().deny_rules(*deleting_cg)?.len(), 1);
    let detached = container::detach(&progs, node.layout(), "test", "deleting")?;
    assert_eq!(detached.cgroup_id, Some(*deleting_cg), "{detached:?}");
    assert!(
        detached.links >= 1 && detached.map_entries >= 2,
        "{detached:?}"
    );
    assert!(!node.layout().container_dir("test", "deleting")?.exists());
    Ok(())
}

#[test]
fn gc_leaves_a_container_that_is_still_attaching() -> Result<()> {
    let mut node = Node::with_broker_keys("gc_interval = 0")?;
    node.start_tetherd()?;
    node.acquire()?;
    let progs = node.programs()?;
    // What `container::attach_cgroup` has done just before it pins its first link: the
    // container's directory exists, its map entries are written, no link is pinned yet.
    let cg = TestCgroup::new()?;
    let cgid = container::cgroup_id(cg.open()?.as_fd())?;
    let dir = node.layout().container_dir("test", "attaching")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    progs
        .maps()
        .set_container(cgid, &ContainerConfig::default(), "test", "attaching")?;

    let report: GcReport = node.ctl_json(&["gc"])?;
    assert!(report.removed_containers.is_empty(), "{report:?}");
    assert_eq!(report.removed_map_entries, 0, "{report:?}");
    assert!(
        dir.exists(),
        "the attaching container's directory was removed"
    );
    assert!(progs.maps().known_cgroups()?.contains(&cgid));

    // The attach completes.
    container::attach_cgroup(
        &progs,
        node.layout(),
        "test",
        "attaching",
        cg.open()?.as_fd(),
        &ContainerConfig::default(),
        &[],
    )?;
    let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"])?;
    let c = find(&ps, "attaching").context("listed")?;
    assert!(!c.stale);
    Ok(())
}

#[test]
fn periodic_gc_removes_containers_whose_cgroup_is_gone() -> Result<()> {
    let mut node = Node::with_broker_keys("gc_interval = 1")?;
    node.start_tetherd()?;
    node.acquire()?;
    let progs = node.programs()?;
    let cg = TestCgroup::new()?;
    let attached = container::attach_cgroup(
        &progs,
        node.layout(),
        "test",
        "swept",
        cg.open()?.as_fd(),
        &ContainerConfig::default(),
        &[],
    )?;
    fs::remove_dir(&cg.path)?;
    // No GarbageCollect call: tetherd's own timer removes it. A collection removes the
    // container's directory before its map entries: wait for both.
    wait_for("periodic garbage collection", DEADLINE, || {
        let ps: Vec<ContainerInfo> = node.ctl_json(&["ps"]).ok()?;
        let entries = progs.maps().known_cgroups().ok()?;
        (find(&ps, "swept").is_none() && !entries.contains(&attached.cgroup_id)).then_some(())
    })
    .with_context(|| node.logs())?;
    assert!(!progs.maps().known_cgroups()?.contains(&attached.cgroup_id));
    assert!(node
        .logs()
        .contains("garbage collected 1 containers (test/swept)"));
    Ok(())
}
