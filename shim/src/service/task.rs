//! The ttrpc face of the task service: each `Task` call, with its errors mapped to ttrpc
//! statuses.

use super::*;

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
        let _in_flight = CreateInFlight::new(&self.creates);
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

    /// As in the Go runc shim: a process without a terminal is "resized" by doing nothing
    /// (containerd's client resizes whatever it attached to), an exec that has exited
    /// cannot be resized, and an unknown container or exec id is NOT_FOUND.
    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self.container(&req.id).and_then(|c| {
            let p = c.process(&req.exec_id)?;
            if !p.exec_id.is_empty() && p.status() == Status::STOPPED {
                return Err(Error::FailedPrecondition(format!(
                    "exec {} of {} has exited: no terminal to resize",
                    p.exec_id, c.id
                )));
            }
            if let Some(pty) = p.pty() {
                resize(&pty, req.width, req.height)?;
            }
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
