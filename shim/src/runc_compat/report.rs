//! What `tether-runc` tells its caller, the way runc does: an error on stderr and in
//! runc's `--log` (text or JSON, as `--log-format` says; callers such as containerd's shim
//! read runc's errors there), and exit codes as runc's.
use std::process::ExitStatus;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::args::RuncArgs;

/// Writes an error the way runc does: to stderr, and to `--log` in runc's format.
pub fn report(args: &RuncArgs, msg: &str) {
    eprintln!("{msg}");
    let Some(log) = args.global_value("--log") else {
        return;
    };
    let json = args
        .global_value("--log-format")
        .is_some_and(|f| f == "json");
    let line = if json {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!(
            "{}\n",
            serde_json::json!({"level": "error", "msg": msg, "time": rfc3339(now)})
        )
    } else {
        format!("level=error msg={msg:?}\n")
    };
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// `secs` since the epoch as an RFC 3339 UTC time, as runc's JSON log writes it.
fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// The exit code a shell would report for `s`: the code, or 128 + the signal.
pub fn status_code(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_643_740), "2026-11-25T21:55:40Z");
    }
}
