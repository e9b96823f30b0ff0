//! One container: its bundle, rootfs mounts, runc handle, init and exec processes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::spec::{Spec, PID_NAMESPACE};
use containerd_shim::{
    asynchronous::io::Stdio,
    protos::api::{CreateTaskRequest, Status},
};
use log::warn;

use crate::{
    error::{Error, Result},
    lock::locked,
    options::ShimOptions,
    process::Process,
    runc::{error::RuncErrorKind, CreateArgs, RestoreArgs, Runc},
    stdio::Prepared,
};

pub const INIT_PID_FILE: &str = "init.pid";

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub opts: ShimOptions,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Set when Create asked for a restore: Start restores from here.
    pub checkpoint: Option<String>,
    /// The container shares the host's (or another's) pid namespace: its processes
    /// do not die with init, so they are killed when it exits.
    pub shared_pid_ns: bool,
    rootfs: Option<PathBuf>,
    /// Capabilities the container's processes run without (its exec'd ones too).
    pub withheld: &'static [&'static str],
    pub oom_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Reads the bundle's `config.json` (what the shim acts on; runc checks the rest).
pub fn load_spec(bundle: &Path) -> Result<Spec> {
    Spec::load(&bundle.join("config.json"))
}

/// Mounts the request's rootfs mounts at `<bundle>/rootfs`. On failure, undoes what
/// it mounted.
async fn mount_rootfs(req: &CreateTaskRequest, bundle: &Path) -> Result<Option<PathBuf>> {
    if req.rootfs.is_empty() {
        return Ok(None);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    for m in &req.rootfs {
        if let Err(e) = containerd_shim::util::mount_rootfs(m, &target).await {
            unmount_rootfs(&target);
            return Err(Error::framework("mount rootfs", e));
        }
    }
    Ok(Some(target))
}

fn unmount_rootfs(target: &Path) {
    let t = target.to_string_lossy();
    if let Err(e) = containerd_shim::mount::umount_recursive(Some(&t), libc::MNT_DETACH) {
        warn!("unmount {t}: {e}");
    }
}

impl Container {
    /// Mounts the rootfs and runs `runc create` (or prepares a restore). On failure
    /// nothing is left: runc's container is force-deleted and the rootfs unmounted.
    pub async fn create(
        req: &CreateTaskRequest,
        spec: &Spec,
        opts: ShimOptions,
        runc: Runc,
        withheld: &'static [&'static str],
    ) -> Result<Self> {
        let bundle = PathBuf::from(&req.bundle);
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        // No PID namespace of its own (none, or one it joins by path).
        let shared_pid_ns = spec
            .namespace(PID_NAMESPACE)
            .is_none_or(|n| n.path.is_some());
        let rootfs = mount_rootfs(req, &bundle).await?;
        let c = Container {
            id: req.id.clone(),
            bundle,
            runc,
            opts,
            init: Arc::new(Process::new("", stdio, None)),
            execs: Mutex::new(HashMap::new()),
            checkpoint: (!req.checkpoint.is_empty()).then(|| req.checkpoint.clone()),
            shared_pid_ns,
            rootfs,
            withheld,
            oom_watch: Mutex::new(None),
        };
        if c.checkpoint.is_some() {
            return Ok(c);
        }
        if let Err(e) = c.runc_create().await {
            c.cleanup().await;
            c.init.io.abort().await;
            return Err(e);
        }
        Ok(c)
    }

    async fn runc_create(&self) -> Result<()> {
        let init = &self.init;
        let mut prepared = Prepared::new(&init.stdio, self.opts.io_uid, self.opts.io_gid)?;
        let (io, console) = prepared.runc_side();
        let pid_file = self.bundle.join(INIT_PID_FILE);
        let args = CreateArgs {
            bundle: &self.bundle,
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot: self.opts.no_pivot_root,
            no_new_keyring: self.opts.no_new_keyring,
        };
        self.runc.create(&self.id, &args, io).await?;
        let pty = prepared.connect(&init.stdio, &init.io).await?;
        init.set_created(read_pid(&pid_file)?, pty);
        Ok(())
    }

    /// `runc restore` from the checkpoint Create was given; the Start of a restored task.
    pub async fn restore(&self, checkpoint: &str) -> Result<()> {
        let init = &self.init;
        let mut prepared = Prepared::new(&init.stdio, self.opts.io_uid, self.opts.io_gid)?;
        let (io, console) = prepared.runc_side();
        let pid_file = self.bundle.join(INIT_PID_FILE);
        let work = self.criu_work_path();
        let args = RestoreArgs {
            bundle: &self.bundle,
            image_path: Path::new(checkpoint),
            work_path: &work,
            pid_file: &pid_file,
            console_socket: console.as_deref(),
            no_pivot: self.opts.no_pivot_root,
        };
        self.runc.restore(&self.id, &args, io).await?;
        let pty = prepared.connect(&init.stdio, &init.io).await?;
        init.set_created(read_pid(&pid_file)?, pty);
        Ok(())
    }

    pub fn criu_work_path(&self) -> PathBuf {
        if self.opts.criu_work_path.is_empty() {
            self.bundle.join("criu-work")
        } else {
            PathBuf::from(&self.opts.criu_work_path)
        }
    }

    /// Force-deletes runc's container and unmounts the rootfs; idempotent.
    pub async fn cleanup(&self) {
        if let Err(e) = self.runc.delete(&self.id, true).await {
            if !matches!(&e, Error::Runc(r) if r.kind == RuncErrorKind::NotFound) {
                warn!("runc delete {}: {e}", self.id);
            }
        }
        if let Some(t) = &self.rootfs {
            unmount_rootfs(t);
        }
        if let Some(h) = locked(&self.oom_watch).take() {
            h.abort();
        }
    }

    pub fn exec(&self, exec_id: &str) -> Result<Arc<Process>> {
        locked(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} of container {}", self.id)))
    }

    /// The init process (empty `exec_id`) or an exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            Ok(self.init.clone())
        } else {
            self.exec(exec_id)
        }
    }

    pub fn add_exec(&self, p: Process) -> Result<()> {
        let mut execs = locked(&self.execs);
        if execs.contains_key(&p.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} of container {}",
                p.exec_id, self.id
            )));
        }
        execs.insert(p.exec_id.clone(), Arc::new(p));
        Ok(())
    }

    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        locked(&self.execs).remove(exec_id)
    }

    /// The live process (init or exec) with this pid, if it is one of ours: a process that
    /// exited no longer owns its pid, which the kernel may have given to another (in a
    /// shim that serves several containers, another container's exec).
    pub fn process_by_pid(&self, pid: u32) -> Option<Arc<Process>> {
        if self.init.pid() == pid && self.init.status() != Status::STOPPED {
            return Some(self.init.clone());
        }
        locked(&self.execs)
            .values()
            .find(|p| p.pid() == pid && p.status() != Status::STOPPED)
            .cloned()
    }

    pub fn exec_ids_by_pid(&self) -> HashMap<u32, String> {
        locked(&self.execs)
            .values()
            .map(|p| (p.pid(), p.exec_id.clone()))
            .collect()
    }

    pub fn running_execs(&self) -> Vec<Arc<Process>> {
        locked(&self.execs)
            .values()
            .filter(|p| p.status() == Status::RUNNING)
            .cloned()
            .collect()
    }
}

pub fn read_pid(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read pid file {}", path.display()), e))?;
    text.trim().parse().map_err(|_| {
        Error::InvalidArgument(format!("pid file {} holds {:?}", path.display(), text))
    })
}
