//! The burst against the real kernel: 50 concurrent `tetherctl acquire` with no tetherd
//! running spawn tetherd on demand and cause exactly one load of each program. Alone in
//! its test binary, so no other test loads programs while the kernel's ids are counted.
mod kernel;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use kernel::*;
use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions};
use tether_api::types::{AcquireReply, StatusInfo};

const BURST: usize = 50;

/// The ids of the programs pinned under `dir` (in `progs` directories, where tetherd pins
/// programs), at any depth.
fn pinned_programs(dir: &std::path::Path, out: &mut Vec<u32>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            pinned_programs(&path, out)?;
        } else if path.parent().and_then(|p| p.file_name()) == Some("progs".as_ref()) {
            let fd = tether_bpf::sys::obj_get(&path)?;
            out.push(tether_bpf::sys::prog_info(std::os::fd::AsFd::as_fd(&fd))?.id);
        }
    }
    Ok(())
}

#[test]
fn fifty_acquires_load_each_program_once_in_the_kernel() -> Result<()> {
    let node = Node::new()?;
    let before = kernel_prog_ids()?.into_iter().max().unwrap_or(0);

    let children: Vec<_> = (0..BURST)
        .map(|_| {
            Command::new(TETHERCTL)
                .arg("--socket")
                .arg(&node.socket)
                .args(["--json", "--timeout", "30", "acquire", "--config"])
                .arg(&node.config)
                .arg("--tetherd")
                .arg(TETHERD)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut replies = Vec::new();
    for c in children {
        let out = c.wait_with_output()?;
        ensure!(
            out.status.success(),
            "tetherctl acquire failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.logs()
        );
        let r: AcquireReply = serde_json::from_slice(&out.stdout)
            .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
        replies.push(r);
    }

    // Every caller got the same pins; exactly one of them caused the load.
    let ids = |r: &AcquireReply| -> BTreeMap<String, u32> {
        r.acquired
            .programs
            .iter()
            .map(|p| (p.name.clone(), p.id))
            .collect()
    };
    let first = ids(&replies[0]);
    assert_eq!(first.len(), tether_bpf::Prog::ALL.len(), "{first:?}");
    for r in &replies {
        assert_eq!(r.acquired.version, tether_bpf::VERSION);
        assert_eq!(ids(r), first);
    }
    assert_eq!(replies.iter().filter(|r| r.loaded_now).count(), 1);

    let status: StatusInfo = node.ctl_json(&["status"])?;
    assert_eq!(status.loads, 1, "{status:?}");
    assert_eq!(status.acquires, BURST as u64, "{status:?}");
    assert_eq!(Some(status.pid as i32), node.lock_pid());

    // The kernel's view: one program per name loaded since the burst began, and they are
    // the ones every caller was given. Other processes on the machine may load tether's
    // programs meanwhile (tether-bpf's own tests, another node's tetherd): theirs use
    // other maps, so programs are attributed to this node by the maps they use.
    let our_maps: HashSet<u32> = replies[0].acquired.maps.iter().map(|m| m.id).collect();
    assert_eq!(our_maps.len(), 12, "{:?}", replies[0].acquired.maps);
    let maps_of: HashMap<u32, Vec<u32>> =
        ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true))
            .map(|p| (p.id, p.map_ids))
            .collect();
    let mut ours = BTreeMap::new();
    let mut others = Vec::new();
    for id in kernel_prog_ids()?.into_iter().filter(|id| *id > before) {
        let Some(info) = tether_bpf::sys::prog_info_by_id(id)? else {
            continue;
        };
        // The programs containers attach (the node-wide LSM program, where the kernel runs
        // BPF LSM, is not handed out). The kernel keeps 15 bytes of a name.
        if !first
            .keys()
            .any(|n| n.chars().take(15).collect::<String>() == info.name)
        {
            continue;
        }
        let uses_ours = maps_of
            .get(&id)
            .is_some_and(|maps| maps.iter().any(|m| our_maps.contains(m)));
        if uses_ours {
            ensure!(
                ours.insert(info.name.clone(), id).is_none(),
                "program {} loaded twice: {ours:?}",
                info.name
            );
        } else {
            others.push((id, info.name));
        }
    }
    if !others.is_empty() {
        eprintln!("tether programs loaded by other processes meanwhile: {others:?}");
    }
    assert_eq!(ours.len(), tether_bpf::Prog::ALL.len(), "{ours:?}");
    let mut given: Vec<u32> = first.values().copied().collect();
    let mut found: Vec<u32> = ours.values().copied().collect();
    given.sort_unstable();
    found.sort_unstable();
    assert_eq!(given, found);

    // A second load that survived would be pinned on this node's bpffs (under another
    // version or a staging directory), whatever maps it uses: every program pinned there
    // is one of those given.
    let mut pinned = Vec::new();
    pinned_programs(node.bpffs.layout.root(), &mut pinned)?;
    pinned.sort_unstable();
    assert_eq!(pinned, given, "programs pinned on the node's bpffs");

    // A duplicate load that lost the race would have been freed at once, out of the
    // kernel's sight: every tetherd spawned for this node logs to one file, and exactly
    // one load ran.
    let log = std::fs::read_to_string(node.socket.with_file_name("tetherd.log"))?;
    assert_eq!(
        log.matches("instructions verified").count(),
        1,
        "one load across every tetherd spawned: {log}"
    );
    assert!(!log.contains("another loader was first"), "{log}");
    Ok(())
}
