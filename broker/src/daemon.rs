//! tetherd's command line and top level: flags, config loading, the backend, signal
//! handling (SIGTERM/SIGINT end serving), and the call into `server::serve`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use crate::backend::testing::FakeBackend;
use crate::backend::Backend;
use crate::bpf_backend;
use crate::config::{Config, Overrides};
use crate::error::Error;
use crate::server;

/// tetherd: loads tether's eBPF programs once per node, pins them, and serves the broker
/// API to shims and tetherctl.
#[derive(Debug, Parser)]
#[command(name = "tetherd", disable_version_flag = true)]
pub struct Args {
    /// tether's config file (default /etc/tether/config.toml if it exists).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The broker socket (overrides [broker] socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The bpffs directory for pins (overrides [broker] pin_root).
    #[arg(long, value_name = "PATH")]
    pub pin_root: Option<PathBuf>,
    /// The audit JSON-lines file (overrides [broker] audit_log).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Metrics: off, unix:/path, or a loopback ip:port (overrides [broker] metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log at debug level (otherwise RUST_LOG, default info).
    #[arg(long)]
    pub debug: bool,
    /// Print the eBPF object version this tetherd carries and exit.
    #[arg(long)]
    pub version: bool,
    /// Print what this kernel gives tether (TC attach mode, netns keys, BTF) and exit.
    #[arg(long)]
    pub features: bool,
    /// Serve from an in-memory fake backend that loads nothing (for tests of tetherd
    /// itself and of its clients, without root or bpf).
    #[arg(long, hide = true)]
    pub fake_backend: bool,
}

impl Args {
    /// The effective configuration: file, then flags.
    pub fn config(&self) -> Result<Config, Error> {
        let mut config = Config::load(self.config.as_deref())?;
        config.apply(Overrides {
            socket: self.socket.clone(),
            pin_root: self.pin_root.clone(),
            audit_log: self.audit_log.clone(),
            metrics: self.metrics.clone(),
        })?;
        Ok(config)
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn terminated(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM"),
        _ = int.recv() => log::info!("SIGINT"),
    }
}

impl Args {
    /// Opens the backend for `config` (the fake one with `--fake-backend`).
    pub fn backend(&self, config: &Config) -> Result<Arc<dyn Backend>, Error> {
        if self.fake_backend {
            return Ok(Arc::new(FakeBackend::new()));
        }
        Ok(bpf_backend::open(config)?)
    }
}

/// Serves until SIGTERM/SIGINT. `Error::AlreadyRunning` means another tetherd serves.
pub async fn run(config: Config, backend: Arc<dyn Backend>) -> Result<(), Error> {
    let sig = |kind, name: &'static str| {
        signal(kind).map_err(|source| Error::Io {
            what: "install handler for",
            path: PathBuf::from(name),
            source,
        })
    };
    let term = sig(SignalKind::terminate(), "SIGTERM")?;
    let int = sig(SignalKind::interrupt(), "SIGINT")?;
    log::info!(
        "tetherd {} (object version {}), pid {}",
        env!("CARGO_PKG_VERSION"),
        backend.version(),
        std::process::id()
    );
    let features = tether_bpf::Features::probe();
    log::info!(
        "kernel {}: TC programs attach with {}, interfaces keyed by {}, BPF LSM {}{}",
        features.kernel,
        features.tc_attach.as_str(),
        features.netns_key.as_str(),
        features.bpf_lsm.as_str(),
        if features.btf { "" } else { "; no kernel BTF" }
    );
    server::serve(&config, backend, terminated(term, int)).await
}
