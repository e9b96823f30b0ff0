//! The tokio runtime `tether-runc`'s calls into the attacher run on: one thread, made only
//! by the commands that attach or detach (create, start, delete, run).

/// A current-thread runtime, or the error to report.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tether-runc: tokio runtime: {e}"))
}
