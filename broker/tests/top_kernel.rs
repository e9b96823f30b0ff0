//! `tetherctl top` against the real tetherd: in a real terminal (a private tmux server
//! with a fixed-size window, read back with `capture-pane`) and with stdout not a
//! terminal. Two tracked containers, one of them sending packets all along.
mod kernel;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kernel::*;
use tether_bpf::{container, ContainerConfig, Prog, Programs};

/// In BPF_PROG_TEST_RUN the packet's socket belongs to no cgroup, which the kernel reports
/// as the root cgroup (id 1): a container on cgroup 1 counts the test runs' packets.
const TEST_RUN_CGROUP: u64 = 1;
const BUSY: &str = "b05y0123456789abcdef";
const IDLE: &str = "1d1e0123456789abcdef";

/// A tetherd with a busy container (packets counted every 20 ms by a thread until
/// dropped) and an idle one attached to a cgroup of its own.
struct Scene {
    node: Node,
    _idle: TestCgroup,
    stop: Arc<AtomicBool>,
    traffic: Option<JoinHandle<Result<()>>>,
}

impl Scene {
    fn new() -> Result<Scene> {
        let mut node = Node::new()?;
        node.start_tetherd()?;
        node.acquire()?;
        let progs = node.programs()?;
        progs
            .maps()
            .set_container(TEST_RUN_CGROUP, &ContainerConfig::default(), "test", BUSY)?;
        let idle = TestCgroup::new()?;
        container::attach_cgroup(
            &progs,
            node.layout(),
            "test",
            IDLE,
            idle.open()?.as_fd(),
            &ContainerConfig::default(),
            &[],
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let layout = node.layout().clone();
        let traffic = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<()> {
                let progs = Programs::open(&layout, tether_bpf::VERSION)?;
                let pkt = ipv4_packet([198, 51, 100, 1], 1000);
                while !stop.load(Ordering::Relaxed) {
                    progs.test_run(Prog::CgroupEgress, &pkt)?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            })
        };
        Ok(Scene {
            node,
            _idle: idle,
            stop,
            traffic: Some(traffic),
        })
    }

    fn stop_traffic(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.traffic.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = self.stop_traffic();
        if let Ok(progs) = self.node.programs() {
            let _ = container::detach(&progs, self.node.layout(), "test", IDLE);
            let _ = container::detach(&progs, self.node.layout(), "test", BUSY);
        }
    }
}

/// A tmux server of the test's own (its own socket, no config file) with one session of
/// a fixed size running `sh` with the prompt [`PROMPT`]; `kill-server` in `Drop`.
struct Tmux {
    socket: PathBuf,
}

const PROMPT: &str = "top-test$ ";

impl Tmux {
    fn new(dir: &Path, cols: u16, rows: u16) -> Result<Tmux> {
        let t = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let out = t.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            "/bin/sh",
        ])?;
        ensure!(out.status.success(), "tmux new-session: {out:?}");
        // dash gives root `# ` whatever the environment says; a prompt of our own tells
        // the shell's screen from tetherctl's.
        t.wait("the shell's first prompt", |s| !s.trim().is_empty())?;
        t.send(&[&format!("PS1='{PROMPT}'"), "Enter"])?;
        Ok(t)
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .context("run tmux (is it installed? scripts/deps.sh installs it)")
    }

    /// Types `keys` (tmux key names, e.g. `Enter`) into the pane.
    fn send(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        let out = self.run(&args)?;
        ensure!(out.status.success(), "tmux send-keys: {out:?}");
        Ok(())
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the pane shows what `check` wants; returns that screen.
    fn wait(&self, what: &str, check: impl Fn(&str) -> bool) -> Result<String> {
        let mut last = String::new();
        wait_for(what, DEADLINE, || {
            last = self.screen();
            check(&last).then(|| last.clone())
        })
        .with_context(|| format!("the pane shows:\n{last}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The line of the table whose first column is `id`'s short form.
fn row<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.starts_with(&id[..12]))
}

/// The TX rate column (packets per second) of a row.
fn tx_packets(row: &str) -> Option<f64> {
    // CONTAINER NAMESPACE RXPKT RX unit TXPKT ...
    row.split_whitespace().nth(5)?.parse().ok()
}

#[test]
fn top_refreshes_in_a_terminal_and_q_restores_the_shell() -> Result<()> {
    let mut scene = Scene::new()?;
    let tmux = Tmux::new(scene.node.dir.path(), 110, 20)?;
    tmux.wait("the shell's prompt", |s| {
        s.lines().any(|l| l.trim_end().ends_with(PROMPT.trim_end()))
    })?;
    let command = format!(
        "{TETHERCTL} --socket {} top; echo \"top exited $?\"",
        scene.node.socket.display()
    );
    tmux.send(&[&command, "Enter"])?;

    // The first frame: the title, the header, both containers.
    let first = tmux.wait("the first frame", |s| {
        s.starts_with("tetherctl top  ") && row(s, BUSY).is_some() && row(s, IDLE).is_some()
    })?;
    let lines: Vec<&str> = first.lines().collect();
    ensure!(lines[0].contains("2 containers"), "{first}");
    ensure!(
        lines[2].split_whitespace().collect::<Vec<_>>()
            == [
                "CONTAINER",
                "NAMESPACE",
                "RX",
                "PKT/s",
                "RX",
                "TX",
                "PKT/s",
                "TX",
                "DROPS/s",
                "DENIALS/s"
            ],
        "{first}"
    );

    // Refreshed in place: a new title time, and the busy container on top with packets
    // per second, the idle one below it at zero.
    let title = lines[0].to_string();
    let later = tmux.wait("a refresh with rates", |s| {
        s.lines().next().is_some_and(|l| l != title)
            && row(s, BUSY).and_then(tx_packets).is_some_and(|tx| tx > 0.0)
    })?;
    let lines: Vec<&str> = later.lines().collect();
    ensure!(lines[3].starts_with(&BUSY[..12]), "busiest first:\n{later}");
    ensure!(lines[4].starts_with(&IDLE[..12]), "{later}");
    ensure!(
        row(&later, IDLE).and_then(tx_packets) == Some(0.0),
        "{later}"
    );
    ensure!(
        row(&later, BUSY).is_some_and(|r| r.contains("test") && r.contains("KiB/s")),
        "{later}"
    );
    // And again.
    let title = lines[0].to_string();
    tmux.wait("a second refresh", |s| {
        s.lines()
            .next()
            .is_some_and(|l| l.starts_with("tetherctl top") && l != title)
    })?;

    // q quits with status 0, and the shell's screen is back (the alternate screen left).
    tmux.send(&["q"])?;
    // The command line itself holds `"top exited $?"`: wait for the echo's own line.
    let after = tmux.wait("tetherctl to exit", |s| {
        s.lines()
            .any(|l| l.starts_with("top exited ") && !l.contains('$'))
    })?;
    ensure!(after.contains("top exited 0"), "{after}");
    ensure!(
        !after.contains("CONTAINER"),
        "the view was left on screen:\n{after}"
    );
    ensure!(
        after.contains(&command[..20]),
        "the shell's screen is back:\n{after}"
    );
    ensure!(
        after
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_end() == PROMPT.trim_end()),
        "a prompt after the exit:\n{after}"
    );
    scene.stop_traffic()
}

#[test]
fn top_without_a_terminal_prints_one_table() -> Result<()> {
    let mut scene = Scene::new()?;
    let out = scene.node.ctl(&["top", "--interval", "0.5"])?;
    ensure!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(lines.len() == 3, "{text}");
    ensure!(
        lines[0]
            .split_whitespace()
            .take(2)
            .eq(["CONTAINER", "NAMESPACE"]),
        "{text}"
    );
    ensure!(lines[1].starts_with(&BUSY[..12]), "{text}");
    ensure!(tx_packets(lines[1]).is_some_and(|tx| tx > 0.0), "{text}");
    ensure!(lines[2].starts_with(&IDLE[..12]), "{text}");

    let out = scene
        .node
        .ctl(&["--json", "top", "--no-stream", "--interval", "0.5"])?;
    ensure!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(rows.len() == 2, "{rows:?}");
    ensure!(rows[0]["id"] == BUSY, "{rows:?}");
    ensure!(
        rows[0]["tx_packets"].as_f64().is_some_and(|v| v > 0.0),
        "{rows:?}"
    );
    ensure!(
        rows[1]["id"] == IDLE && rows[1]["tx_packets"] == 0.0,
        "{rows:?}"
    );
    scene.stop_traffic()
}
