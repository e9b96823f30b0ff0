//! The audit log: a thread that drains the backend's audit events and appends each as one
//! JSON line to the audit file, flushing per batch and rotating to `<file>.1` once the
//! file would exceed its size limit. Owns every write to the audit file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tether_api::types::AuditEvent;

use crate::backend::Backend;
use crate::error::Error;

/// How long one `poll_events` call waits; also the shutdown latency of the thread.
const POLL: Duration = Duration::from_millis(200);

/// Appends audit events to a JSON-lines file with size-based rotation.
pub struct AuditWriter {
    path: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> Result<(File, u64), Error> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("open audit log", path))?;
    let size = file
        .metadata()
        .map_err(Error::io("stat audit log", path))?
        .len();
    Ok((file, size))
}

impl AuditWriter {
    /// Opens (creating) `path` for appending; its directory is created 0750 if missing.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(Error::io("create audit log directory", dir))?;
        }
        let (file, size) = open_append(path)?;
        Ok(AuditWriter {
            path: path.to_path_buf(),
            max_bytes,
            file,
            size,
        })
    }

    fn rotated(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".1");
        PathBuf::from(p)
    }

    fn rotate(&mut self) -> Result<(), Error> {
        let to = self.rotated();
        std::fs::rename(&self.path, &to).map_err(Error::io("rotate audit log", &self.path))?;
        (self.file, self.size) = open_append(&self.path)?;
        Ok(())
    }

    /// Appends `events`, one JSON object per line, and flushes.
    pub fn write_batch(&mut self, events: &[AuditEvent]) -> Result<(), Error> {
        let mut buf = Vec::new();
        for e in events {
            let mut line = serde_json::to_vec(e).unwrap_or_default();
            line.push(b'\n');
            let pending = u64::try_from(buf.len() + line.len()).unwrap_or(u64::MAX);
            if self.size > 0 && self.size.saturating_add(pending) > self.max_bytes {
                self.flush(&mut buf)?;
                self.rotate()?;
            }
            buf.extend_from_slice(&line);
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buf)
            .and_then(|()| self.file.flush())
            .map_err(Error::io("append to audit log", &self.path))?;
        self.size += u64::try_from(buf.len()).unwrap_or(u64::MAX);
        buf.clear();
        Ok(())
    }
}

/// Starts the audit thread; it stops within one poll interval after `stop` is set.
pub fn spawn(
    backend: Arc<dyn Backend>,
    mut writer: AuditWriter,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tetherd-audit".into())
        .spawn(move || {
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                match backend.poll_events(POLL) {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        if let Err(e) = writer.write_batch(&events) {
                            log::warn!("audit: {} events lost: {e}", events.len());
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            log::warn!("audit: poll events: {e}");
                            failing = true;
                        }
                        std::thread::sleep(POLL);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            ts_ns: i,
            id: format!("c{i}"),
            namespace: "default".into(),
            kind: "deny_connect".into(),
            family: "ipv4".into(),
            protocol: "tcp".into(),
            daddr: "10.0.0.1".into(),
            dport: 443,
            ..Default::default()
        }
    }

    #[test]
    fn appends_json_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let mut w = AuditWriter::open(&path, 600).unwrap();
        w.write_batch(&[event(1), event(2)]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let e: AuditEvent = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(e, event(1));
        w.write_batch(&[event(3), event(4), event(5)]).unwrap();
        let rotated = std::fs::read_to_string(dir.path().join("sub/audit.jsonl.1")).unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(!rotated.is_empty() && !current.is_empty());
        assert_eq!(rotated.lines().count() + current.lines().count(), 5);
        assert!(current.len() <= 600);
        assert_eq!(rotated.lines().count(), 3, "{rotated}");
    }
}
