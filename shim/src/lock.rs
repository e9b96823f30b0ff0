//! The shim's one locking rule, for the plain maps and single-field state its mutexes guard.

/// Locks `m`. The shim's locks guard plain maps and single-field state that a panic
/// cannot leave half-updated, so a poisoned lock still holds valid data.
pub(crate) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
