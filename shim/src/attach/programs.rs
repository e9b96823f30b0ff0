//! The programs a container is attached to: taken from this process's cache, else opened
//! from their pins; when the pins are missing, tetherd (started on demand) loads them
//! first. Also where tetherd, its socket and the pins are, as the config names them.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::warn;
use tether_bpf::{PinLayout, Programs};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::locked;

/// Benchmark-only: each container loads its own copy of the programs (the load storm tether
/// exists to avoid), to compare against. Set in containerd's environment; honoured by a
/// shim built with the `bench` feature only.
pub const NAIVE_LOAD_ENV: &str = "TETHER_BENCH_NAIVE_LOAD";

/// Whether the benchmark's naive mode is asked for ([`NAIVE_LOAD_ENV`]).
pub fn naive_load_asked() -> bool {
    std::env::var_os(NAIVE_LOAD_ENV).is_some()
}

/// The pin layout the config names (default `/sys/fs/bpf/tether`).
pub fn layout(config: &Config) -> PinLayout {
    PinLayout::new(config.broker.pin_root())
}

/// tetherd's socket, as the config names it.
pub fn socket(config: &Config) -> PathBuf {
    config.broker.socket()
}

/// The config file a tetherd started on demand is given: the one the runtime options named,
/// else `$TETHER_CONFIG`.
pub fn config_path(from_options: Option<&Path>) -> Option<PathBuf> {
    tether_api::paths::config_file(from_options)
}

fn tetherd_path(config: &Config) -> PathBuf {
    config
        .attach
        .tetherd
        .clone()
        .unwrap_or_else(tether_api::paths::tetherd)
}

/// The programs this process has opened, by pin root: opened once, shared by every
/// container the process attaches.
#[derive(Default)]
pub struct ProgramCache {
    open: Mutex<HashMap<PathBuf, Arc<Programs>>>,
}

impl ProgramCache {
    /// The programs under `layout`'s root, if this process has them open.
    pub fn cached(&self, layout: &PinLayout) -> Option<Arc<Programs>> {
        locked(&self.open).get(layout.root()).cloned()
    }

    /// The programs from their pins; when they are missing, tetherd loads them (started on
    /// demand) and the pins are opened after. `config_path`: the config file a tetherd
    /// started here is given.
    pub async fn get(
        &self,
        config: &Config,
        config_path: Option<&Path>,
        id: &str,
    ) -> Result<(PinLayout, Arc<Programs>)> {
        let layout = layout(config);
        if naive_load_asked() {
            return naive_load(&layout, id).await;
        }
        if let Some(p) = self.cached(&layout) {
            return Ok((layout, p));
        }
        let programs = match Programs::open(&layout, tether_bpf::VERSION) {
            Ok(p) => p,
            Err(tether_bpf::Error::NotLoaded { .. }) => {
                acquire(config, config_path, id).await?;
                Programs::open(&layout, tether_bpf::VERSION).map_err(|e| Error::attach(id, e))?
            }
            Err(e) => return Err(Error::attach(id, e)),
        };
        let programs = Arc::new(programs);
        locked(&self.open).insert(layout.root().to_path_buf(), programs.clone());
        Ok((layout, programs))
    }
}

/// Asks tetherd (started on demand) for the pins. A tetherd that goes away in the middle
/// of the call (killed, restarted) is asked once more: the next one adopts the pins or
/// finishes the load.
async fn acquire(config: &Config, config_path: Option<&Path>, id: &str) -> Result<()> {
    let socket = socket(config);
    let deadline = config.attach.deadline();
    let mut retried = false;
    loop {
        let r = async {
            tether_api::Client::connect_or_spawn(
                &socket,
                &tetherd_path(config),
                config_path,
                deadline,
            )
            .await?
            .with_timeout(deadline)
            .acquire(tether_bpf::VERSION)
            .await
        }
        .await;
        match r {
            Ok(_) => return Ok(()),
            Err(e @ tether_api::ClientError::Transport { .. }) if !retried => {
                warn!("{id}: tetherd went away during Acquire ({e}); asking again");
                retried = true;
            }
            Err(e) => return Err(Error::attach(id, e)),
        }
    }
}

#[cfg(feature = "bench")]
async fn naive_load(shared: &PinLayout, id: &str) -> Result<(PinLayout, Arc<Programs>)> {
    super::bench::naive_load(shared, id).await
}

/// Without the `bench` feature the shim has no loader: the naive mode fails the attach
/// and says how to get it.
#[cfg(not(feature = "bench"))]
async fn naive_load(_shared: &PinLayout, id: &str) -> Result<(PinLayout, Arc<Programs>)> {
    Err(Error::attach(
        id,
        format!(
            "{NAIVE_LOAD_ENV} is set, but this shim was built without the benchmark-only \
             `bench` feature"
        ),
    ))
}
