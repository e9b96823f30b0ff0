//! Loading and pinning against a real bpffs: pins validated on open, atomic loads, versions
//! side by side and their garbage collection, and the maps' limits.
mod common;

use std::os::fd::AsFd;

use common::*;
use tether_bpf::{container, ContainerConfig, Prog};

#[test]
fn pins_are_validated_on_open() {
    let fs = Bpffs::new().unwrap();
    let _progs = fs.load().unwrap();
    let v = tether_bpf::VERSION;
    // A map pinned where a program belongs.
    let prog_pin = fs.layout.prog(v, Prog::Connect4.name());
    std::fs::remove_file(&prog_pin).unwrap();
    let err = tether_bpf::Programs::open(&fs.layout, v).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let wrong = fs.layout.map(v, "cgroups");
    let mut m = libbpf_rs::MapHandle::from_pinned_path(&wrong).unwrap();
    m.pin(&prog_pin).unwrap();
    let err = tether_bpf::Programs::open(&fs.layout, v)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not tether's"), "{err}");
    assert!(err.contains("tether_connect4"), "{err}");
}

#[test]
fn load_is_atomic_and_adoptable() {
    let fs = Bpffs::new().unwrap();
    let report = tether_bpf::programs::load_and_pin(&fs.layout, tether_bpf::VERSION).unwrap();
    assert!(!report.lost_race);
    // The kernel reports what its verifier processed from 5.16 on (0 before).
    let reports_insns = {
        let r = nix::sys::utsname::uname().unwrap();
        let v: Vec<u32> = r
            .release()
            .to_string_lossy()
            .split(|c: char| !c.is_ascii_digit())
            .take(2)
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        (v[0], v[1]) >= (5, 16)
    };
    assert_eq!(report.verified_insns > 0, reports_insns, "{report:?}");
    assert_eq!(
        fs.layout.versions().unwrap(),
        vec![tether_bpf::VERSION.to_string()]
    );
    assert!(fs.layout.staging_dirs().unwrap().is_empty());
    let a = tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap();
    // A second load of the same version loses the race and leaves the first pins in place.
    let again = tether_bpf::programs::load_and_pin(&fs.layout, tether_bpf::VERSION).unwrap();
    assert!(again.lost_race);
    let b = tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap();
    assert_eq!(a.ids(), b.ids());
}

#[test]
fn missing_bpffs_is_a_clear_error() {
    require_root().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = tether_bpf::PinLayout::new(dir.path().join("tether"));
    let err = tether_bpf::programs::load_and_pin(&layout, tether_bpf::VERSION)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not on a bpf file system"), "{err}");
}

#[test]
fn a_full_map_is_a_clear_error() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    let cfg = ContainerConfig::default();
    // identities and containers hold 16384 entries each.
    let mut n = 0u64;
    let err = loop {
        n += 1;
        match maps.set_container(n, &cfg, "full", &format!("c{n}")) {
            Ok(()) => assert!(n <= 16384, "more entries than the map holds"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, 16385, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("is full") && msg.contains("16384"), "{msg}");
    // Entries already written stay usable; removing one makes room again.
    assert!(maps.remove_container(1).unwrap() >= 2);
    maps.set_container(n, &cfg, "full", "again").unwrap();
}

#[test]
fn the_longest_names_containerd_allows_fit() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let maps = progs.maps();
    // containerd's identifiers (namespaces and container ids) have at most 76 characters.
    let (ns, id) = ("n".repeat(76), "i".repeat(76));
    maps.set_container(7, &ContainerConfig::default(), &ns, &id)
        .unwrap();
    assert_eq!(maps.cgroup_of(&ns, &id).unwrap(), Some(7));
    let err = maps
        .set_container(8, &ContainerConfig::default(), &"n".repeat(77), "x")
        .unwrap_err()
        .to_string();
    assert!(err.contains("longer than 76"), "{err}");
}

#[test]
fn a_new_version_is_pinned_beside_the_old_and_gc_removes_it_once_unused() {
    let fs = Bpffs::new().unwrap();
    let current = fs.load().unwrap();
    // An older build's object, pinned under its own version.
    let old_version = "00000000000000aa";
    tether_bpf::programs::load_and_pin(&fs.layout, old_version).unwrap();
    let old = tether_bpf::Programs::open(&fs.layout, old_version).unwrap();
    assert_ne!(
        old.ids(),
        current.ids(),
        "each version has its own programs"
    );
    let mut versions = fs.layout.versions().unwrap();
    versions.sort();
    assert_eq!(versions.len(), 2);

    // A container attached with the old version keeps it alive.
    let cg = TestCgroup::new().unwrap();
    container::attach_cgroup(
        &old,
        &fs.layout,
        "test",
        "old",
        cg.open().unwrap().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    let all = [
        tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap(),
        tether_bpf::Programs::open(&fs.layout, old_version).unwrap(),
    ];
    let r = tether_bpf::gc::collect(&fs.layout, &all, tether_bpf::VERSION, false).unwrap();
    assert!(r.versions.is_empty(), "{r:?}");
    assert!(fs.layout.version_dir(old_version).exists());

    container::detach(&old, &fs.layout, "test", "old").unwrap();
    let r = tether_bpf::gc::collect(&fs.layout, &all, tether_bpf::VERSION, false).unwrap();
    assert_eq!(r.versions, vec![old_version.to_string()]);
    assert!(!fs.layout.version_dir(old_version).exists());
    assert!(
        fs.layout.version_dir(tether_bpf::VERSION).exists(),
        "current stays"
    );

    // A version this build cannot open (another build's map layouts; here a map pin gone)
    // goes by its programs alone: kept while a container runs them or while it is young,
    // removed once unused.
    let other = "00000000000000bb";
    tether_bpf::programs::load_and_pin(&fs.layout, other).unwrap();
    let other_progs = tether_bpf::Programs::open(&fs.layout, other).unwrap();
    let cg2 = TestCgroup::new().unwrap();
    container::attach_cgroup(
        &other_progs,
        &fs.layout,
        "test",
        "other",
        cg2.open().unwrap().as_fd(),
        &ContainerConfig::default(),
        &[],
    )
    .unwrap();
    std::fs::remove_file(fs.layout.map(other, "deny4")).unwrap();
    assert!(tether_bpf::Programs::open(&fs.layout, other).is_err());
    let current = [tether_bpf::Programs::open(&fs.layout, tether_bpf::VERSION).unwrap()];
    let gc = |grace| {
        tether_bpf::gc::collect_with_grace(&fs.layout, &current, tether_bpf::VERSION, false, grace)
            .unwrap()
            .versions
    };
    let no_grace = std::time::Duration::ZERO;
    assert!(gc(no_grace).is_empty(), "its programs are in use");
    container::detach(&other_progs, &fs.layout, "test", "other").unwrap();
    assert!(gc(std::time::Duration::from_secs(3600)).is_empty(), "young");
    assert_eq!(gc(no_grace), vec![other.to_string()]);
    assert!(!fs.layout.version_dir(other).exists());
}

/// Garbage collection found a container stale (its cgroup gone); before it acts, a new
/// container takes the id. The new container's directory and links are its own: they stay.
/// A directory still stale is removed.
#[test]
fn gc_leaves_a_directory_a_new_container_took_since_the_listing() {
    let fs = Bpffs::new().unwrap();
    let progs = fs.load().unwrap();
    let attach = |cg: &TestCgroup| {
        container::attach_cgroup(
            &progs,
            &fs.layout,
            "test",
            "reused",
            cg.open().unwrap().as_fd(),
            &ContainerConfig::default(),
            &[],
        )
        .unwrap()
    };
    let stale = |c: &container::ContainerLinks| c.is_stale();
    // Attaches to a cgroup, removes the cgroup, and lists until the container is stale
    // (the kernel releases a cgroup link from a work item).
    let stale_listing = || {
        let cg = TestCgroup::new().unwrap();
        attach(&cg);
        std::fs::remove_dir(&cg.path).unwrap();
        for _ in 0..250 {
            let listed = container::list(&fs.layout).unwrap();
            if listed.len() == 1 && stale(&listed[0]) {
                return listed[0].clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("never stale: {:?}", container::list(&fs.layout));
    };

    let found = stale_listing();
    let new = TestCgroup::new().unwrap();
    let a = attach(&new);
    assert!(!container::remove_if_stale(&found, stale).unwrap());
    let now = container::list(&fs.layout).unwrap();
    assert!(now.len() == 1 && !stale(&now[0]), "{now:?}");
    assert!(now[0].links.iter().all(|(_, l)| l.cgroup_id == a.cgroup_id));
    container::detach(&progs, &fs.layout, "test", "reused").unwrap();

    let found = stale_listing();
    assert!(container::remove_if_stale(&found, stale).unwrap());
    assert!(!found.dir.exists());
}
