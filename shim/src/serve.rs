//! The shim server: the long-lived process containerd talks ttrpc to.

use std::{collections::HashMap, sync::Arc};

use containerd_shim::{
    protos::{
        shim_async::create_task,
        ttrpc::{
            self,
            r#async::{transport::Listener, Server, Service},
        },
    },
    Flags,
};
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{
    attach::attacher::Attacher,
    error::{Error, Result},
    events::Events,
    reaper::Reaper,
    service::TaskService,
};

const TASK_V3: &str = "containerd.task.v3.Task";
const TASK_V2: &str = "containerd.task.v2.Task";

/// The task service under both names: containerd 1.6/1.7 (and 2.x given a plain
/// address) call `containerd.task.v2.Task`, 2.x with the bootstrap reply calls
/// `containerd.task.v3.Task`. The two APIs are the same messages under two names.
fn task_services(svc: Arc<TaskService>) -> HashMap<String, Service> {
    let mut services = create_task(svc.clone());
    if let Some(v2) = create_task(svc).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v2);
    }
    services
}

/// Binds the shim socket. `Ok(None)`: another server of this group already serves it.
fn bind(address: &str) -> Result<Option<std::os::unix::net::UnixListener>> {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(path).map_err(|e| Error::io(format!("remove {path}"), e))?;
            std::os::unix::net::UnixListener::bind(path)
                .map(Some)
                .map_err(|e| Error::io(format!("bind {path}"), e))
        }
        Err(e) => Err(Error::io(format!("bind {path}"), e)),
    }
}

/// Tells `start` we are serving: it reads our stdout until EOF.
fn signal_ready() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
}

/// containerd opens the reading end of the bundle's `log` fifo before it runs `start`; with
/// no reader, the containerd that started this shim is gone, and opening the fifo to write
/// (as the logger does) would block for ever, with `start` waiting on this process. Then the
/// shim does not serve: `start` fails, and nothing is left running. A missing fifo is left
/// to the logger to report.
fn log_has_reader(fifo: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Err(Error::FailedPrecondition(
            "nothing reads the shim log fifo: the containerd that started this shim is gone".into(),
        )),
        _ => Ok(()),
    }
}

pub async fn serve(flags: &Flags) -> Result<()> {
    if flags.socket.is_empty() {
        return Err(Error::InvalidArgument(
            "-socket is required to serve".into(),
        ));
    }
    log_has_reader(std::path::Path::new("log"))?;
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| Error::framework("open the shim log", e))?;
    let (reaper, exits) = Reaper::start()?;
    let Some(listener) = bind(&flags.socket)? else {
        info!("{} is already served by this group's shim", flags.socket);
        signal_ready();
        return Ok(());
    };
    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| Error::InvalidArgument("TTRPC_ADDRESS is not set".into()))?;
    let shutdown = CancellationToken::new();
    let service = TaskService::new(
        &flags.namespace,
        reaper,
        exits,
        Events::start(&ttrpc_address, &flags.namespace),
        Arc::new(Attacher::new()),
        shutdown.clone(),
    );
    let listener = Listener::try_from(listener).map_err(|e| Error::io("ttrpc listener", e))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(task_services(service));
    server.start().await.map_err(ttrpc_err)?;
    signal_ready();
    info!("serving {}", flags.socket);

    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    // A containerd going away must not take the shim with it.
    let _pipe = signal(SignalKind::pipe()).map_err(|e| Error::io("SIGPIPE handler", e))?;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
    // Let the Shutdown reply reach containerd before the server goes.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    if let Err(e) = server.shutdown().await {
        warn!("stop server: {e}");
    }
    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket);
    let _ = std::fs::remove_file(path);
    Ok(())
}

fn ttrpc_err(e: ttrpc::Error) -> Error {
    Error::io("start ttrpc server", std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// A log fifo nobody reads (containerd died after making it) fails at once instead
    /// of blocking; one with a reader, or none at all, goes on.
    #[test]
    fn a_log_fifo_without_a_reader_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = log_has_reader(&fifo).unwrap_err();
        assert!(e.to_string().contains("gone"), "{e}");
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        log_has_reader(&fifo).unwrap();
        log_has_reader(&dir.path().join("missing")).unwrap();
    }
}
