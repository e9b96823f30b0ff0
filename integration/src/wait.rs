//! Waiting for a condition with a deadline. No test sleeps and hopes.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// How often [`wait_until`] polls.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Ok(Some(value))`, or fails once `timeout` has passed.
///
/// An `Err` from `check` does not stop the wait (the condition may not be observable yet);
/// the last error is included in the timeout error. `what` names the condition for that error.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            match last_err {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_value_once_ready() {
        let mut n = 0;
        let v = wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            Ok((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_with_last_error() {
        let err = wait_until::<()>("never", Duration::from_millis(50), || {
            anyhow::bail!("not yet")
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("never") && msg.contains("not yet"), "{msg}");
    }
}
