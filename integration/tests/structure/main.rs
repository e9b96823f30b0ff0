//! The source tree's shape, checked: no import circle between the files of a crate, no
//! source file over 800 lines, runc spawned only by the shim's runc driver, the shim built
//! without the daemon crate, and anyhow only in binaries and tests.

mod imports;
mod source;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use imports::{crate_graph, cycles, targets};
use source::{code_only, rust_files, workspace, CRATES, MAX_LINES};

fn rel(p: &Path) -> String {
    p.strip_prefix(workspace())
        .unwrap_or(p)
        .display()
        .to_string()
}

#[test]
fn no_import_circle_between_files() {
    let mut found = Vec::new();
    for c in CRATES {
        for t in targets(&workspace().join(c)) {
            for cycle in cycles(&crate_graph(&t)) {
                let g = crate_graph(&t);
                let detail: Vec<String> = cycle
                    .iter()
                    .map(|f| {
                        let to: Vec<String> = g.edges[f]
                            .iter()
                            .filter(|x| cycle.contains(x))
                            .map(|x| rel(x))
                            .collect();
                        format!("{} -> {}", rel(f), to.join(", "))
                    })
                    .collect();
                found.push(detail.join("\n  "));
            }
        }
    }
    assert!(
        found.is_empty(),
        "import circles:\n  {}",
        found.join("\n\n  ")
    );
}

#[test]
fn the_checker_sees_a_circle() {
    // The control: two modules of a scratch crate that import each other are found.
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("m")).expect("mkdir");
    fs::write(
        src.join("lib.rs"),
        "pub mod a;\npub mod m;\npub use m::Thing;\n",
    )
    .expect("write");
    fs::write(src.join("a.rs"), "use crate::Thing;\npub struct A;\n").expect("write");
    fs::write(src.join("m/mod.rs"), "mod inner;\npub use inner::Thing;\n").expect("write");
    fs::write(
        src.join("m/inner.rs"),
        "// crate::a::A in a comment is no import\npub struct Thing(crate::a::A);\n",
    )
    .expect("write");
    let t = &targets(dir.path())[0];
    let c = cycles(&crate_graph(t));
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].len(), 2);
    assert!(
        c[0].iter().any(|p| p.ends_with("a.rs")) && c[0].iter().any(|p| p.ends_with("m/inner.rs"))
    );
    // Without the path in code, no circle: the comment and the re-export hub don't count.
    fs::write(
        src.join("m/inner.rs"),
        "// crate::a::A\npub struct Thing;\n",
    )
    .expect("write");
    assert!(cycles(&crate_graph(&targets(dir.path())[0])).is_empty());
}

#[test]
fn no_source_file_over_800_lines() {
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&workspace().join(c), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", rel(f)))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn runc_is_spawned_only_by_the_runc_driver() {
    let mut files = Vec::new();
    rust_files(&workspace().join("shim/src"), &mut files);
    let owner = workspace().join("shim/src/runc.rs");
    let spawners: Vec<String> = files
        .iter()
        .filter(|f| **f != owner)
        .filter(|f| {
            let code = code_only(&fs::read_to_string(f).unwrap_or_default());
            code.contains("Command::new(") && !only_spawns_itself(&code)
        })
        .map(|f| rel(f))
        .collect();
    assert!(
        spawners.is_empty(),
        "Command::new outside shim/src/runc.rs: {spawners:?}"
    );
}

/// Whether every `Command::new(` of a file runs the current executable (the shim or
/// tether-runc starting a copy of itself), never another program.
fn only_spawns_itself(code: &str) -> bool {
    code.match_indices("Command::new(").all(|(i, _)| {
        let arg: String = code[i + 13..].chars().take_while(|c| *c != ')').collect();
        arg.contains("current_exe") || matches!(arg.trim(), "exe" | "&exe" | "me" | "&me")
    })
}

#[test]
fn the_shim_does_not_build_the_daemon() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace())
        .args([
            "tree",
            "-p",
            "tether-shim",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("tether-bpf"),
        "cargo tree printed no tree: {tree}"
    );
    let unwanted: Vec<&&str> = [
        "tether-broker",
        "clap",
        "anyhow",
        "hyper",
        "tiny_http",
        "prometheus-client",
    ]
    .iter()
    .filter(|n| names.contains(**n))
    .collect();
    assert!(
        unwanted.is_empty(),
        "the shim's dependency tree has {unwanted:?}"
    );
}

#[test]
fn anyhow_only_in_binaries_and_tests() {
    let mut found = Vec::new();
    for c in ["bpf", "proto", "broker", "shim"] {
        let src = workspace().join(c).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            if f.starts_with(src.join("bin")) || f.ends_with("main.rs") {
                continue;
            }
            if code_only(&fs::read_to_string(&f).unwrap_or_default()).contains("anyhow") {
                found.push(rel(&f));
            }
        }
        let manifest =
            fs::read_to_string(workspace().join(c).join("Cargo.toml")).unwrap_or_default();
        let deps = manifest.split("[dependencies]").nth(1).unwrap_or("");
        let deps = deps.split("\n[").next().unwrap_or("");
        if deps.lines().any(|l| l.trim_start().starts_with("anyhow"))
            && !Path::new(&src.join("bin")).exists()
        {
            found.push(format!("{c}/Cargo.toml"));
        }
    }
    assert!(found.is_empty(), "anyhow in library code: {found:?}");
}
