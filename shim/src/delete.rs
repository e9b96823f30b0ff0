//! The `delete` action: containerd's cleanup when it cannot reach the shim (the shim
//! died, or `start` failed). Force-deletes runc's container, detaches its programs and
//! unmounts the rootfs.

use std::time::SystemTime;

use containerd_shim::{
    protos::{api::DeleteResponse, protobuf::Message, protobuf::MessageField},
    Flags,
};
use log::warn;

use crate::{
    attach::attacher::Attacher,
    config::Config,
    error::{Error, Result},
    options::ShimOptions,
    process::timestamp,
    reaper::Reaper,
    runc::{error::RuncErrorKind, Runc},
};

pub async fn delete(flags: &Flags) -> Result<Vec<u8>> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(|e| Error::io("current directory", e))?
    } else {
        flags.bundle.clone().into()
    };
    let opts = ShimOptions::load(&bundle)?;
    // Cleanup goes on with the defaults if the config became unreadable since the create:
    // the runc container and the rootfs mount must not stay behind because of it.
    let config = Config::load(opts.config_path.as_deref()).unwrap_or_else(|e| {
        warn!("{e}; deleting with the default configuration");
        Config::default()
    });
    let (reaper, _orphans) = Reaper::start()?;
    let runc = Runc::new(opts.runc_config(&config, &flags.namespace), &bundle, reaper);
    let attacher = Attacher::new();
    // Read before `runc delete` removes the cgroup, and its local counters with it.
    attacher.before_delete(&flags.namespace, &flags.id, &config);
    let gone = match runc.delete(&flags.id, true).await {
        // `runc delete --force` of a container runc has no state for succeeds (after removing
        // its state directory); older runcs say it does not exist.
        Ok(()) => true,
        Err(Error::Runc(e)) if e.kind == RuncErrorKind::NotFound => true,
        Err(e) => {
            warn!("runc delete {}: {e}", flags.id);
            false
        }
    };
    if gone {
        // A `runc create` killed with its shim leaves the container's cgroups behind, and
        // runc, which never wrote its state, knows nothing of them.
        if let Some(path) = crate::spec::Spec::load(&bundle.join("config.json"))
            .ok()
            .and_then(|s| s.linux.and_then(|l| l.cgroups_path))
        {
            let n = crate::cgroup::remove_leftover_cgroups(&path);
            if n > 0 {
                log::info!("removed {n} cgroups left of {} ({path})", flags.id);
            }
        }
    }
    // The shim that attached the programs is gone: detach here (idempotent).
    attacher.detach(&flags.namespace, &flags.id, &config).await;
    let rootfs = bundle.join("rootfs");
    if let Err(e) =
        containerd_shim::mount::umount_recursive(Some(&rootfs.to_string_lossy()), libc::MNT_DETACH)
    {
        warn!("unmount {}: {e}", rootfs.display());
    }
    DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    }
    .write_to_bytes()
    .map_err(|source| Error::Decode {
        what: "delete response",
        source,
    })
}
