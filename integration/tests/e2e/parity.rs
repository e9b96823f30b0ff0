//! Parity with the Go runc shim where containerd's own client tests (integration/client)
//! once found tether differing: an exec's terminal, and ResizePty of a process without one.
//!
//! `ctr` cannot make these requests (`ctr task exec --tty` sets `terminal` in the exec's
//! process spec and in the request alike, and has no resize command), so they go to the shim's
//! Task service directly, as containerd's tasks service forwards them from its client: the
//! exec's process spec copied from the container's, with `terminal` only in the request.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use containerd_shim_protos::api::{
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, ResizePtyRequest, StartRequest,
    StartResponse, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::{any::Any, empty::Empty};
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::ttrpc::{Code, Status};
use tether_integration::{shim_api, TestEnv};

use crate::common::*;

/// typeurl of `specs.Process` as containerd registers it (JSON-encoded value).
const PROCESS_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// How long an exec's output may take to reach its fifo after the exec was deleted.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(20);

/// What a shim answered: the response, or the status it failed with.
type Answer<T> = std::result::Result<T, Status>;

/// The shim serving one task, reached as containerd reaches it.
struct Shim {
    endpoint: shim_api::ShimEndpoint,
    namespace: String,
    id: String,
}

impl Shim {
    fn of(env: &TestEnv, id: &str) -> Result<Self> {
        Ok(Self {
            endpoint: shim_api::shim_endpoint(env.containerd(), env.namespace(), id)?,
            namespace: env.namespace().to_owned(),
            id: id.to_owned(),
        })
    }

    fn call<Req: Message, Resp: Message>(&self, method: &str, req: &Req) -> Result<Answer<Resp>> {
        let payload = req
            .write_to_bytes()
            .with_context(|| format!("encoding {method}"))?;
        match shim_api::request(&self.endpoint, &self.namespace, method, payload).with_context(
            || format!("Task.{method} of {} via {}", self.id, self.endpoint.address),
        )? {
            Ok(bytes) => Ok(Ok(Resp::parse_from_bytes(&bytes)
                .with_context(|| format!("decoding the answer to {method}"))?)),
            Err(status) => Ok(Err(status)),
        }
    }

    /// Task.Exec of `args` with the container's own process spec (as containerd's client
    /// copies it), `terminal` only in the request unless `spec_terminal` overrides the spec's.
    fn exec(&self, e: &Exec<'_>) -> Result<Answer<()>> {
        let mut process = e.base.clone();
        process["args"] = serde_json::json!(e.args);
        if let Some(t) = e.spec_terminal {
            process["terminal"] = serde_json::json!(t);
        }
        let mut spec = Any::new();
        spec.type_url = PROCESS_URL.to_owned();
        spec.value = serde_json::to_vec(&process).context("encoding the process spec")?;
        let mut req = ExecProcessRequest::new();
        req.id = self.id.clone();
        req.exec_id = e.exec_id.to_owned();
        req.terminal = e.terminal;
        let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
        req.stdout = path(e.stdout);
        req.stderr = path(e.stderr);
        req.spec = Some(spec).into();
        Ok(self.call::<_, Empty>("Exec", &req)?.map(drop))
    }

    fn start(&self, exec_id: &str) -> Result<Answer<u32>> {
        let mut req = StartRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_id.to_owned();
        Ok(self.call::<_, StartResponse>("Start", &req)?.map(|r| r.pid))
    }

    fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<Answer<()>> {
        let mut req = ResizePtyRequest::new();
        req.id = id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.width = width;
        req.height = height;
        Ok(self.call::<_, Empty>("ResizePty", &req)?.map(drop))
    }

    fn kill(&self, exec_id: &str, signal: u32) -> Result<Answer<()>> {
        let mut req = KillRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_id.to_owned();
        req.signal = signal;
        Ok(self.call::<_, Empty>("Kill", &req)?.map(drop))
    }

    fn wait(&self, exec_id: &str) -> Result<Answer<u32>> {
        let mut req = WaitRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_id.to_owned();
        Ok(self
            .call::<_, WaitResponse>("Wait", &req)?
            .map(|r| r.exit_status))
    }

    fn delete(&self, exec_id: &str) -> Result<Answer<()>> {
        let mut req = DeleteRequest::new();
        req.id = self.id.clone();
        req.exec_id = exec_id.to_owned();
        Ok(self.call::<_, DeleteResponse>("Delete", &req)?.map(drop))
    }
}

/// One Task.Exec request.
struct Exec<'a> {
    exec_id: &'a str,
    /// The container's process spec, which the exec's is copied from.
    base: &'a serde_json::Value,
    args: &'a [&'a str],
    terminal: bool,
    /// `terminal` written into the exec's process spec (None: the container's, copied).
    spec_terminal: Option<bool>,
    stdout: Option<&'a Path>,
    stderr: Option<&'a Path>,
}

/// Succeeds on an OK answer; names the call and the shim's status otherwise.
fn ok<T>(what: &str, answer: Answer<T>) -> Result<T> {
    answer.map_err(|s| anyhow!("{what}: {:?} {}", s.code(), s.message))
}

/// The container's own process spec (`process` of its bundle's `config.json`).
fn container_process(env: &TestEnv, id: &str) -> Result<serde_json::Value> {
    let path = env
        .containerd()
        .bundle_dir(env.namespace(), id)
        .join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let spec: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(spec["process"].clone())
}

/// A fifo at `path` whose reader (a thread: the open blocks until the shim opens the write
/// end) returns everything written until the last writer closes it.
fn fifo_reader(path: &Path) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .with_context(|| format!("mkfifo {}", path.display()))?;
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    thread::spawn(move || {
        let read = || -> Result<Vec<u8>> {
            let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let mut v = Vec::new();
            f.read_to_end(&mut v)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(v)
        };
        let _ = tx.send(read());
    });
    Ok(rx)
}

fn output(rx: &mpsc::Receiver<Result<Vec<u8>>>) -> Result<String> {
    let bytes = rx
        .recv_timeout(OUTPUT_TIMEOUT)
        .map_err(|_| anyhow!("no end of output within {OUTPUT_TIMEOUT:?}"))??;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Says whether stdout is a terminal, waits (bounded) until the terminal has a size, prints
/// it and exits 7. busybox `stty size` prints nothing (or `0 0`) before the size is set.
const TTY_SCRIPT: &str = "if [ -t 1 ]; then echo tty; else echo notty; fi; i=0; \
    while s=$(stty size 2>/dev/null); [ -z \"$s\" ] || [ \"$s\" = \"0 0\" ]; do \
    i=$((i+1)); [ $i -gt 200 ] && break; sleep 0.05; done; echo \"size $s\"; exit 7";

scenario!(exec_terminal_from_request);
/// An exec's terminal is the request's `terminal`, whatever its process spec says (the Go shim
/// overwrites the spec's): an exec asking for a terminal, with the spec of a container that has
/// none, runs on a terminal whose output reaches its stdout fifo and which ResizePty sizes; an
/// exec asking for none, with a spec that says `terminal: true`, gets plain stdio.
fn exec_terminal_from_request(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "exectty", &[])?;
    let shim = Shim::of(env, &id)?;
    let base = container_process(env, &id)?;
    ensure!(
        base["terminal"].as_bool() != Some(true),
        "the container has a terminal: {base}"
    );
    let dir = tempfile::tempdir().context("creating the fifo directory")?;

    // A terminal in the request only.
    let stdout: PathBuf = dir.path().join("tty-stdout");
    let out = fifo_reader(&stdout)?;
    let tty = Exec {
        exec_id: "tty",
        base: &base,
        args: &["/bin/sh", "-c", TTY_SCRIPT],
        terminal: true,
        spec_terminal: None,
        stdout: Some(&stdout),
        // A terminal has no stderr of its own (containerd's client sends none).
        stderr: None,
    };
    ok("Exec with a terminal", shim.exec(&tty)?)?;
    ok("Start of the exec with a terminal", shim.start("tty")?)?;
    ok("ResizePty of the exec", shim.resize(&id, "tty", 100, 40)?)?;
    let code = ok("Wait of the exec", shim.wait("tty")?)?;
    ok("Delete of the exec", shim.delete("tty")?)?;
    let text = output(&out)?;
    ensure!(
        code == 7 && text == "tty\r\nsize 40 100\r\n",
        "exec with a terminal: exit {code}, output {text:?}"
    );

    // No terminal in the request, one in the spec.
    let stdout: PathBuf = dir.path().join("plain-stdout");
    let stderr: PathBuf = dir.path().join("plain-stderr");
    let out = fifo_reader(&stdout)?;
    let err = fifo_reader(&stderr)?;
    let plain = Exec {
        exec_id: "plain",
        base: &base,
        args: &[
            "/bin/sh",
            "-c",
            "if [ -t 1 ]; then echo tty; else echo notty; fi; exit 4",
        ],
        terminal: false,
        spec_terminal: Some(true),
        stdout: Some(&stdout),
        stderr: Some(&stderr),
    };
    ok("Exec without a terminal", shim.exec(&plain)?)?;
    ok("Start of the exec without a terminal", shim.start("plain")?)?;
    let code = ok("Wait of the exec", shim.wait("plain")?)?;
    ok("Delete of the exec", shim.delete("plain")?)?;
    let text = output(&out)?;
    let errors = output(&err)?;
    ensure!(
        code == 4 && text == "notty\n" && errors.is_empty(),
        "exec without a terminal: exit {code}, stdout {text:?}, stderr {errors:?}"
    );

    wait_status(env, &id, "RUNNING")?;
    kill_and_delete(env, &id)
}

scenario!(resize_without_terminal);
/// ResizePty of a process without a terminal succeeds and does nothing: the init (running
/// and exited), an exec (created and running). An exec that has exited cannot be resized, and
/// a process or container the shim does not have is NOT_FOUND.
fn resize_without_terminal(env: &mut TestEnv) -> Result<()> {
    let id = detached_sleep(env, "resize", &[])?;
    let shim = Shim::of(env, &id)?;
    let base = container_process(env, &id)?;
    ok("ResizePty of the init", shim.resize(&id, "", 80, 24)?)?;

    let sleeper = Exec {
        exec_id: "sleeper",
        base: &base,
        args: &["/bin/sleep", "1000"],
        terminal: false,
        spec_terminal: None,
        stdout: None,
        stderr: None,
    };
    ok("Exec", shim.exec(&sleeper)?)?;
    ok(
        "ResizePty of a created exec",
        shim.resize(&id, "sleeper", 80, 24)?,
    )?;
    ok("Start of the exec", shim.start("sleeper")?)?;
    ok(
        "ResizePty of a running exec",
        shim.resize(&id, "sleeper", 120, 50)?,
    )?;
    ok("Kill of the exec", shim.kill("sleeper", 9)?)?;
    let code = ok("Wait of the exec", shim.wait("sleeper")?)?;
    ensure!(code == 137, "the killed exec exited {code}");
    if shim.resize(&id, "sleeper", 80, 24)?.is_ok() {
        bail!("ResizePty of an exited exec succeeded");
    }
    ok("Delete of the exec", shim.delete("sleeper")?)?;

    for (what, cid, exec_id) in [
        ("a deleted exec", id.as_str(), "sleeper"),
        ("an exec id never used", id.as_str(), "missing"),
        ("a container the shim does not have", "missing", ""),
    ] {
        match shim.resize(cid, exec_id, 80, 24)? {
            Ok(()) => bail!("ResizePty of {what} succeeded"),
            Err(s) => ensure!(
                s.code() == Code::NOT_FOUND,
                "ResizePty of {what}: {:?} {}",
                s.code(),
                s.message
            ),
        }
    }

    // The init, exited but not deleted.
    env.ctr.ok(["task", "kill", "--signal", "SIGKILL", &id])?;
    wait_status(env, &id, "STOPPED")?;
    ok("ResizePty of an exited init", shim.resize(&id, "", 80, 24)?)?;
    env.ctr.ok(["task", "delete", &id])?;
    env.ctr.ok(["container", "delete", &id])?;
    env.assert_no_leaks(&id)
}
