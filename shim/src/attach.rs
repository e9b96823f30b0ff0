//! The seam between `runc create` and `runc start`.
//!
//! The task service calls an [`AttachHook`] at fixed points of a container's life:
//! [`AttachHook::validate`] before runc runs (a bad plan must fail Create with nothing
//! created), [`AttachHook::attach`] once the container exists but has not executed a
//! single instruction, [`AttachHook::before_start`] just before `runc start`, and
//! [`AttachHook::detach`] after `runc delete`. A failing `attach` makes Create delete
//! the container and fail. The eBPF attach step is an implementation of this trait.

use async_trait::async_trait;
use oci_spec::runtime::Spec;

use crate::error::Result;

/// What the hook sees of a container that runc has created but not started.
pub struct CreatedContainer<'a> {
    pub namespace: &'a str,
    pub id: &'a str,
    pub bundle: &'a std::path::Path,
    pub spec: &'a Spec,
    /// The container's init process, stopped before its first instruction.
    pub pid: u32,
}

#[async_trait]
pub trait AttachHook: Send + Sync {
    fn validate(&self, spec: &Spec) -> Result<()>;
    async fn attach(&self, container: &CreatedContainer<'_>) -> Result<()>;
    async fn before_start(&self, id: &str, pid: u32) -> Result<()>;
    async fn detach(&self, id: &str) -> Result<()>;
}

/// Runs containers exactly as the runc shim does: nothing attached.
pub struct NoAttach;

#[async_trait]
impl AttachHook for NoAttach {
    fn validate(&self, _spec: &Spec) -> Result<()> {
        Ok(())
    }
    async fn attach(&self, _container: &CreatedContainer<'_>) -> Result<()> {
        Ok(())
    }
    async fn before_start(&self, _id: &str, _pid: u32) -> Result<()> {
        Ok(())
    }
    async fn detach(&self, _id: &str) -> Result<()> {
        Ok(())
    }
}
