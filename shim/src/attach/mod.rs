//! The seam between `runc create` and `runc start`.
//!
//! The task service calls an [`AttachHook`] at fixed points of a container's life:
//! [`AttachHook::prepare`] before runc runs (a bad plan, or programs that cannot be had,
//! must fail Create with nothing created), [`AttachHook::attach`] once the container exists but has not executed a
//! single instruction, [`AttachHook::before_start`] just before `runc start`, and
//! [`AttachHook::detach`] after `runc delete`. A failing `attach` makes Create delete
//! the container and fail. [`ebpf::EbpfAttach`] is tether's implementation.

pub mod ebpf;
pub mod plan;
pub mod priority;

use std::path::{Path, PathBuf};

use crate::spec::Spec;
use async_trait::async_trait;

use crate::config::Config;
use crate::error::Result;

/// What the hook sees of a container that runc has created but not started.
pub struct CreatedContainer<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub bundle: &'a Path,
    pub spec: &'a Spec,
    pub config: &'a Config,
    /// The config file the runtime options named, if any (passed to a tetherd started on
    /// demand).
    pub config_path: Option<PathBuf>,
    /// The container's init process, stopped before its first instruction.
    pub pid: u32,
}

#[async_trait]
pub trait AttachHook: Send + Sync {
    /// Checks the container's plan and readies what attaching it needs; runs before
    /// anything is created. `config_path`: the config file the runtime options named.
    async fn prepare(
        &self,
        id: &str,
        spec: &Spec,
        config: &Config,
        config_path: Option<&Path>,
    ) -> Result<()>;
    async fn attach(&self, container: &CreatedContainer<'_>) -> Result<()>;
    async fn before_start(&self, id: &str, pid: u32) -> Result<()>;
    /// The container has stopped and `runc delete` comes next, which removes its cgroup:
    /// last chance to read what lives only as long as the cgroup does.
    async fn before_delete(&self, id: &str);
    async fn detach(&self, namespace: &str, id: &str, config: &Config);
}

/// Runs containers exactly as the runc shim does: nothing attached.
pub struct NoAttach;

#[async_trait]
impl AttachHook for NoAttach {
    async fn prepare(
        &self,
        _id: &str,
        _spec: &Spec,
        _config: &Config,
        _config_path: Option<&Path>,
    ) -> Result<()> {
        Ok(())
    }
    async fn attach(&self, _container: &CreatedContainer<'_>) -> Result<()> {
        Ok(())
    }
    async fn before_start(&self, _id: &str, _pid: u32) -> Result<()> {
        Ok(())
    }
    async fn before_delete(&self, _id: &str) {}
    async fn detach(&self, _namespace: &str, _id: &str, _config: &Config) {}
}
