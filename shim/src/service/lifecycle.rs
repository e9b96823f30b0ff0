//! The task service's state changes: create (with the attach step), start, exec start,
//! delete, kill, exec and checkpoint, each ordered against exits as the service's module
//! docs say.

use super::exec_spec::exec_process_spec;
use super::*;

impl TaskService {
    pub(super) async fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        if locked(&self.containers).contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!("container {}", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = load_spec(&bundle)?;
        let mut opts = ShimOptions::from_any(req.options.as_ref())?;
        let config = Config::load(opts.config_path.as_deref())?;
        // containerd's CRI hands a runtime type it does not know as runc no SystemdCgroup
        // option, but writes the cgroup path in systemd's form where the node uses systemd's
        // driver: runc needs --systemd-cgroup for it, as under runc.v2 with the option.
        if spec.systemd_cgroups_path()
            && !opts.systemd_cgroup
            && config.runc.systemd_cgroup != Some(false)
        {
            info!(
                "container {}: cgroupsPath is in systemd's form: runc uses the systemd cgroup \
                 driver",
                req.id
            );
            opts.systemd_cgroup = true;
        }
        // Resolved once: a bad plan fails Create before runc runs.
        let plan = Plan::resolve(&config, &spec)?;
        // A restore runs the container's processes from inside `runc restore` on: there is
        // no gap between create and start for the attach step. A plan that must not let an
        // instruction run unattached refuses it; an open one attaches right after.
        if !req.checkpoint.is_empty() && plan.enabled && plan.fail_closed {
            return Err(Error::FailedPrecondition(format!(
                "container {}: restore from checkpoint {} refused: a restored container runs \
                 from inside runc restore, before tether can attach its programs, and its plan \
                 fails closed (failure-policy; deny rules make it so)",
                req.id, req.checkpoint
            )));
        }
        self.attacher
            .prepare(&req.id, &plan, &config, opts.config_path.as_deref())
            .await?;
        let hardening = self.attacher.hardening(&plan, &config);
        if hardening.apply(&bundle)? {
            info!(
                "container {}: runs without {hardening}: the kernel runs no tether LSM \
                 program to judge its packet sockets",
                req.id,
            );
        }
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
        let c = Arc::new(Container::create(&req, &spec, opts, runc, hardening.withheld).await?);
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

    /// Attaches a container `runc restore` started (only under an open plan: Create refuses
    /// a restore under a closed one). Its restored processes ran unattached until here, which
    /// the log says; a failure is logged, as an open plan's failures are.
    async fn attach_restored(&self, c: &Arc<Container>) {
        let attached = async {
            let spec = load_spec(&c.bundle)?;
            let config = Config::load(c.opts.config_path.as_deref())?;
            let plan = Plan::resolve(&config, &spec)?;
            if !plan.enabled {
                return Ok(());
            }
            warn!(
                "{}: restored from a checkpoint: its processes ran from runc restore until \
                 this attach (an open plan allows it)",
                c.id
            );
            let created = CreatedContainer {
                namespace: &self.namespace,
                id: &c.id,
                plan: &plan,
                config: &config,
                config_path: c.opts.config_path.clone(),
                pid: c.init.pid(),
            };
            self.attacher.attach(&created).await
        };
        if let Err(e) = attached.await {
            warn!("{}: attach after restore: {e}", c.id);
        }
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

    pub(super) async fn do_start(&self, req: StartRequest) -> Result<StartResponse> {
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
                    self.attach_restored(&c).await;
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

    pub(super) async fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
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

    pub(super) async fn do_kill(&self, req: KillRequest) -> Result<()> {
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

    pub(super) async fn do_exec(&self, req: ExecProcessRequest) -> Result<()> {
        let c = self.container(&req.id)?;
        if c.init.status() == Status::STOPPED {
            return Err(Error::FailedPrecondition(format!(
                "container {} is stopped",
                c.id
            )));
        }
        let spec =
            req.spec.as_ref().map(|a| &a.value).ok_or_else(|| {
                Error::InvalidArgument("exec request without a process spec".into())
            })?;
        let spec = exec_process_spec(&req.exec_id, spec, req.terminal, c.withheld)?;
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

    pub(super) async fn do_checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
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
