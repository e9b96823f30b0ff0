//! The task API (`containerd.task.v2.Task` / `v3`) over runc.
//!
//! State transitions that must be ordered against exits (create, start, exec start)
//! and the handling of exits hold `lifecycle`, so a process that exits the moment it
//! starts still gets its TaskStart before its TaskExit, and its pid is known before
//! its exit is looked up.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::io::Stdio,
    protos::{
        api::*,
        events::task::*,
        protobuf::{well_known_types::empty::Empty, MessageField},
        shim::oci::ProcessDetails,
        shim_async::Task,
        ttrpc::{self, r#async::TtrpcContext},
    },
};
use log::{debug, info, warn};
use nix::sys::signal::{kill, Signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    attach::attacher::{Attacher, CreatedContainer},
    attach::plan::Plan,
    config::Config,
    container::{load_spec, read_pid, Container},
    error::{Error, Result},
    events::Events,
    lock::locked,
    options::{checkpoint_options, ShimOptions},
    process::{timestamp, Process},
    reaper::{Exit, Reaper},
    runc::{CheckpointArgs, Runc},
    stdio::{resize, Prepared},
};

pub struct TaskService {
    namespace: String,
    reaper: Arc<Reaper>,
    events: Arc<Events>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    attacher: Arc<Attacher>,
    shutdown: CancellationToken,
}

impl TaskService {
    /// Creates the service and spawns the task that turns process exits into state
    /// and events.
    pub fn new(
        namespace: &str,
        reaper: Arc<Reaper>,
        exits: mpsc::UnboundedReceiver<Exit>,
        events: Events,
        attacher: Arc<Attacher>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let s = Arc::new(Self {
            namespace: namespace.to_string(),
            reaper,
            events: Arc::new(events),
            containers: Mutex::new(HashMap::new()),
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            attacher,
            shutdown,
        });
        tokio::spawn(Self::handle_exits(Arc::downgrade(&s), exits));
        s
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        locked(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    async fn handle_exits(this: std::sync::Weak<Self>, mut exits: mpsc::UnboundedReceiver<Exit>) {
        while let Some(exit) = exits.recv().await {
            let Some(s) = this.upgrade() else { return };
            let _g = s.lifecycle.lock().await;
            let containers: Vec<_> = locked(&s.containers).values().cloned().collect();
            for c in containers {
                let Some(p) = c.process_by_pid(exit.pid as u32) else {
                    continue;
                };
                debug!(
                    "container {} process {:?} pid {} exited {}",
                    c.id, p.exec_id, exit.pid, exit.status
                );
                if p.exec_id.is_empty() && c.shared_pid_ns {
                    // Without its own pid namespace the container's other processes
                    // outlive init; the runc shim kills them too, before the exit is seen.
                    if let Err(e) = c.runc.kill(&c.id, Signal::SIGKILL as u32, true).await {
                        debug!("kill remaining processes of {}: {e}", c.id);
                    }
                }
                // As the runc shim: the exit is recorded (Wait returns), then published.
                p.set_exited(exit);
                s.events
                    .send(TaskExit {
                        container_id: c.id.clone(),
                        id: if p.exec_id.is_empty() {
                            c.id.clone()
                        } else {
                            p.exec_id.clone()
                        },
                        pid: exit.pid as u32,
                        exit_status: exit.status,
                        exited_at: MessageField::some(timestamp(exit.at)),
                        ..Default::default()
                    })
                    .await;
                break;
            }
        }
    }

    async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        if locked(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle)?;
        let opts = ShimOptions::from_any(req.options.as_ref())?;
        let config = Config::load(opts.config_path.as_deref())?;
        // Resolved once: a bad plan fails Create before runc runs.
        let plan = Plan::resolve(&config, &spec)?;
        self.attacher
            .prepare(&req.id, &plan, &config, opts.config_path.as_deref())
            .await?;
        let runc = Runc::new(
            opts.runc_config(&config, &self.namespace),
            &bundle,
            self.reaper.clone(),
        );
        opts.save(&bundle)?;

        let _g = self.lifecycle.lock().await;
        // Again under the lock, which is held until the container is in the map: of two
        // Creates of one id, the second must not run (or clean up after) `runc create`.
        if locked(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let c = Arc::new(Container::create(&req, &spec, opts, runc).await?);
        let pid = c.init.pid();
        if c.checkpoint.is_none() {
            let created = CreatedContainer {
                namespace: &self.namespace,
                id: &c.id,
                plan: &plan,
                config: &config,
                config_path: c.opts.config_path.clone(),
                pid,
            };
            if let Err(e) = self.attacher.attach(&created).await {
                c.cleanup().await;
                c.init.io.abort().await;
                return Err(e);
            }
            self.watch_oom(&c);
        }
        locked(&self.containers).insert(c.id.clone(), c.clone());
        self.events
            .send(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            })
            .await;
        info!("created container {} pid {pid}", c.id);
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn watch_oom(&self, c: &Arc<Container>) {
        let pid = c.init.pid();
        let events = self.events.clone();
        let id = c.id.clone();
        let handle = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let watch = crate::cgroup::watch_oom(pid, move || {
                let _ = tx.send(());
            });
            let forward = async {
                while rx.recv().await.is_some() {
                    events
                        .send(TaskOOM {
                            container_id: id.clone(),
                            ..Default::default()
                        })
                        .await;
                }
            };
            let (r, _) = tokio::join!(watch, forward);
            if let Err(e) = r {
                warn!("OOM watch of {id}: {e}");
            }
        });
        *locked(&c.oom_watch) = Some(handle);
    }

    async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
        let c = self.container(&req.id)?;
        let _g = self.lifecycle.lock().await;
        if req.exec_id.is_empty() {
            if c.init.status() != Status::CREATED {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not in created state",
                    c.id
                )));
            }
            match &c.checkpoint {
                Some(cp) => {
                    c.restore(cp).await?;
                    self.watch_oom(&c);
                }
                None => {
                    self.attacher.before_start(&c.id).await?;
                    c.runc.start(&c.id).await?;
                }
            }
            c.init.set_status(Status::RUNNING);
            let pid = c.init.pid();
            self.events
                .send(TaskStart {
                    container_id: c.id.clone(),
                    pid,
                    ..Default::default()
                })
                .await;
            return Ok(StartResponse {
                pid,
                ..Default::default()
            });
        }
        let p = c.exec(&req.exec_id)?;
        if p.status() != Status::CREATED {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is not in created state",
                p.exec_id
            )));
        }
        let pid = self.start_exec(&c, &p).await?;
        p.set_status(Status::RUNNING);
        self.events
            .send(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: p.exec_id.clone(),
                pid,
                ..Default::default()
            })
            .await;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_exec(&self, c: &Container, p: &Process) -> Result<u32> {
        let spec_path = c.bundle.join(format!(".{}.process.json", p.exec_id));
        let pid_path = c.bundle.join(format!("{}.pid", p.exec_id));
        std::fs::write(&spec_path, p.spec.as_deref().unwrap_or_default())
            .map_err(|e| Error::io(format!("write {}", spec_path.display()), e))?;
        // The error, and whether the process was started by then.
        let result: std::result::Result<u32, (Error, bool)> = async {
            let mut prepared =
                Prepared::new(&p.stdio, c.opts.io_uid, c.opts.io_gid).map_err(|e| (e, false))?;
            let (io, console) = prepared.runc_side();
            c.runc
                .exec(&c.id, &spec_path, &pid_path, console.as_deref(), io)
                .await
                .map_err(|e| (e, false))?;
            let pty = prepared
                .connect(&p.stdio, &p.io)
                .await
                .map_err(|e| (e, true))?;
            let pid = read_pid(&pid_path).map_err(|e| (e, true))?;
            p.set_created(pid, pty);
            Ok(pid)
        }
        .await;
        // Read before the file goes, and only for a process runc started but the shim
        // cannot serve.
        let started_pid = match &result {
            Err((_, true)) => Some(read_pid(&pid_path).unwrap_or(0)),
            _ => None,
        };
        let _ = std::fs::remove_file(&spec_path);
        let _ = std::fs::remove_file(&pid_path);
        match result {
            Ok(pid) => Ok(pid),
            Err((e, _)) => {
                p.io.abort().await;
                if let Some(pid) = started_pid {
                    // It does not run on untracked: the exec ends as killed (Wait returns,
                    // Delete works).
                    if pid != 0 {
                        let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                    p.set_exited(crate::reaper::Exit {
                        pid: pid as i32,
                        status: 128 + libc::SIGKILL as u32,
                        at: std::time::SystemTime::now(),
                    });
                }
                Err(e)
            }
        }
    }

    async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let c = self.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.exec(&req.exec_id)?;
            if p.status() == Status::RUNNING {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} of {} is running",
                    p.exec_id, c.id
                )));
            }
            c.remove_exec(&req.exec_id);
            p.io.shutdown().await;
            return Ok(delete_response(&p));
        }
        if matches!(c.init.status(), Status::RUNNING | Status::PAUSED) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is running: stop it before deleting",
                c.id
            )));
        }
        let config = Config::load(c.opts.config_path.as_deref()).unwrap_or_default();
        self.attacher.before_delete(&self.namespace, &c.id, &config);
        c.cleanup().await;
        self.attacher.detach(&self.namespace, &c.id, &config).await;
        // A created-but-never-started init is killed by `runc delete --force`: wait
        // (bounded) for its exit so the response carries it.
        if c.init.pid() != 0 && c.init.exit().is_none() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), c.init.wait()).await;
        }
        c.init.io.shutdown().await;
        let execs: Vec<_> = locked(&c.execs).values().cloned().collect();
        for p in execs {
            p.io.abort().await;
        }
        locked(&self.containers).remove(&c.id);
        let resp = delete_response(&c.init);
        self.events
            .send(TaskDelete {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: resp.pid,
                exit_status: resp.exit_status,
                exited_at: resp.exited_at.clone(),
                ..Default::default()
            })
            .await;
        info!("deleted container {}", c.id);
        Ok(resp)
    }

    async fn do_kill(&self, req: KillRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.exec_id.is_empty() {
            if p.exit().is_some() && !req.all {
                return Err(Error::NotFound(format!(
                    "process already finished: container {}",
                    c.id
                )));
            }
            return c.runc.kill(&c.id, req.signal, req.all).await;
        }
        if p.pid() == 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {} is not started",
                p.exec_id
            )));
        }
        if p.exit().is_some() {
            return Err(Error::NotFound(format!(
                "process already finished: exec {}",
                p.exec_id
            )));
        }
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidArgument(format!("signal {}", req.signal)))?;
        kill(nix::unistd::Pid::from_raw(p.pid() as i32), sig).map_err(|e| match e {
            nix::errno::Errno::ESRCH => {
                Error::NotFound(format!("process already finished: exec {}", p.exec_id))
            }
            e => Error::sys("kill", e),
        })
    }

    async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if c.init.status() == Status::STOPPED {
            return Err(Error::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let spec =
            req.spec.as_ref().map(|a| a.value.clone()).ok_or_else(|| {
                Error::InvalidArgument("exec request without a process spec".into())
            })?;
        serde_json::from_slice::<crate::spec::Process>(&spec).map_err(|source| Error::Json {
            context: format!("exec {} process spec", req.exec_id),
            source,
        })?;
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        c.add_exec(Process::new(&req.exec_id, stdio, Some(spec)))?;
        self.events
            .send(TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
            .await;
        Ok(())
    }

    async fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        let o = checkpoint_options(req.options.as_ref())?;
        let image = if o.image_path.is_empty() {
            PathBuf::from(&req.path)
        } else {
            PathBuf::from(&o.image_path)
        };
        let work = if o.work_path.is_empty() {
            c.criu_work_path()
        } else {
            PathBuf::from(&o.work_path)
        };
        std::fs::create_dir_all(&work)
            .map_err(|e| Error::io(format!("create {}", work.display()), e))?;
        let args = CheckpointArgs {
            image_path: &image,
            work_path: &work,
            leave_running: !o.exit,
            tcp_established: o.open_tcp,
            ext_unix_sk: o.external_unix_sockets,
            shell_job: o.terminal,
            file_locks: o.file_locks,
            empty_namespaces: &o.empty_namespaces,
            cgroups_mode: &o.cgroups_mode,
        };
        if let Err(e) = c.runc.checkpoint(&c.id, &args).await {
            return Err(with_criu_log(e, &work));
        }
        self.events
            .send(TaskCheckpointed {
                container_id: c.id.clone(),
                checkpoint: image.display().to_string(),
                ..Default::default()
            })
            .await;
        Ok(())
    }
}

/// Adds criu's own reason (the error lines of its dump log) to a failed checkpoint.
fn with_criu_log(e: Error, work: &Path) -> Error {
    let Error::Runc(mut r) = e else { return e };
    let log = work.join("dump.log");
    if let Ok(text) = std::fs::read_to_string(&log) {
        let reasons: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error") || l.contains("error"))
            .collect();
        let tail = &reasons[reasons.len().saturating_sub(3)..];
        if !tail.is_empty() {
            r.message = format!(
                "{}; criu ({}): {}",
                r.message,
                log.display(),
                tail.join(" | ")
            );
        }
    }
    Error::Runc(r)
}

fn delete_response(p: &Process) -> DeleteResponse {
    let exit = p.exit();
    DeleteResponse {
        pid: p.pid(),
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        ..Default::default()
    }
}

fn state_response(c: &Container, p: &Process) -> StateResponse {
    let exit = p.exit();
    StateResponse {
        id: if p.exec_id.is_empty() {
            c.id.clone()
        } else {
            p.exec_id.clone()
        },
        bundle: c.bundle.display().to_string(),
        pid: p.pid(),
        status: p.status().into(),
        stdin: p.stdio.stdin.clone(),
        stdout: p.stdio.stdout.clone(),
        stderr: p.stdio.stderr.clone(),
        terminal: p.stdio.terminal,
        exit_status: exit.map(|e| e.status).unwrap_or(0),
        exited_at: exit.map(|e| timestamp(e.at)).into(),
        exec_id: p.exec_id.clone(),
        ..Default::default()
    }
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn log_err<T>(what: &str, id: &str, r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        debug!("{what} {id}: {e}");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let r = self.container(&req.id).and_then(|c| {
            let p = c.process(&req.exec_id)?;
            Ok(state_response(&c, &p))
        });
        log_err("state", &req.id, r)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        let r = self.do_create(req).await;
        if let Err(e) = &r {
            warn!("create {id}: {e}");
        }
        log_err("create", &id, r)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let id = req.id.clone();
        log_err("start", &id, self.do_start(req).await)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let id = req.id.clone();
        log_err("delete", &id, self.do_delete(req).await)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let r = async {
            let c = self.container(&req.id)?;
            let pids = c.runc.ps(&c.id).await?;
            let execs = c.exec_ids_by_pid();
            let mut processes = Vec::with_capacity(pids.len());
            for pid in pids {
                let mut info = ProcessInfo {
                    pid,
                    ..Default::default()
                };
                if let Some(exec_id) = execs.get(&pid) {
                    let d = ProcessDetails {
                        exec_id: exec_id.clone(),
                        ..Default::default()
                    };
                    info.info = MessageField::some(crate::any::pack(&d)?);
                }
                processes.push(info);
            }
            Ok(PidsResponse {
                processes,
                ..Default::default()
            })
        }
        .await;
        log_err("pids", &req.id, r)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let r = async {
            let c = self.container(&req.id)?;
            c.runc.pause(&c.id).await?;
            c.init.set_status(Status::PAUSED);
            self.events
                .send(TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                })
                .await;
            Ok(Empty::new())
        }
        .await;
        log_err("pause", &req.id, r)
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let r = async {
            let c = self.container(&req.id)?;
            c.runc.resume(&c.id).await?;
            c.init.set_status(Status::RUNNING);
            self.events
                .send(TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                })
                .await;
            Ok(Empty::new())
        }
        .await;
        log_err("resume", &req.id, r)
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err(
            "checkpoint",
            &id,
            self.do_checkpoint(req).await.map(|_| Empty::new()),
        )
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("kill", &id, self.do_kill(req).await.map(|_| Empty::new()))
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("exec", &id, self.do_exec(req).await.map(|_| Empty::new()))
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            let p = c.process(&req.exec_id)?;
            let pty = p.pty().ok_or_else(|| {
                Error::FailedPrecondition(format!("process {} has no terminal", req.exec_id))
            })?;
            resize(&pty, req.width, req.height)?;
            Ok(Empty::new())
        });
        log_err("resize pty", &req.id, r)
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            let p = c.process(&req.exec_id)?;
            if req.stdin {
                p.io.close_input();
            }
            Ok(Empty::new())
        });
        log_err("close io", &req.id, r)
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let r = async {
            let c = self.container(&req.id)?;
            let resources = req
                .resources
                .as_ref()
                .ok_or_else(|| Error::InvalidArgument("update without resources".into()))?;
            serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&resources.value).map_err(
                |source| Error::Json {
                    context: "update resources".into(),
                    source,
                },
            )?;
            c.runc.update(&c.id, resources.value.clone()).await?;
            Ok(Empty::new())
        }
        .await;
        log_err("update", &req.id, r)
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let p = log_err(
            "wait",
            &req.id,
            self.container(&req.id)
                .and_then(|c| c.process(&req.exec_id)),
        )?;
        let exit = p.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let r = self.container(&req.id).and_then(|c| {
            let pid = c.init.pid();
            if pid == 0 || c.init.exit().is_some() {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not running",
                    c.id
                )));
            }
            Ok(StatsResponse {
                stats: MessageField::some(crate::cgroup::metrics(pid)?),
                ..Default::default()
            })
        });
        log_err("stats", &req.id, r)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.container(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if locked(&self.containers).is_empty() {
            info!("no containers left: shutting down");
            self.shutdown.cancel();
        }
        Ok(Empty::new())
    }
}
