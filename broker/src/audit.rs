//! The audit log: a thread that drains the backend's audit events and appends each as one
//! JSON line to the audit file, flushing per batch and rotating (`<file>.1` ... `<file>.N`,
//! the newest first) once the file would exceed its size limit. Owns every write to the
//! audit file: one writer, whole lines per write, so no line is torn. A log that cannot be
//! opened does not stop tetherd: the thread says so, drains (and loses) the events, and
//! tries again.

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
/// How often a log that could not be opened is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// Appends audit events to a JSON-lines file with size-based rotation.
pub struct AuditWriter {
    path: PathBuf,
    max_bytes: u64,
    /// Rotated files kept (`<file>.1` ... `<file>.keep`); 0: none, the log starts over.
    keep: u32,
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
    /// Past `max_bytes` it rotates, keeping `keep` rotated files.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, Error> {
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
            keep,
            file,
            size,
        })
    }

    /// `<file>.n`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// `<file>.n` becomes `<file>.n+1` (the last kept one is replaced), the file `<file>.1`,
    /// and a new file is started.
    fn rotate(&mut self) -> Result<(), Error> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path).map_err(Error::io("rotate audit log", &self.path))?;
        } else {
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                match std::fs::rename(&from, self.rotated(n + 1)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io("rotate audit log", &from)(e))
                    }
                    _ => {}
                }
            }
            std::fs::rename(&self.path, self.rotated(1))
                .map_err(Error::io("rotate audit log", &self.path))?;
        }
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

/// Where the audit thread writes: the log, and how it opens it again.
pub struct AuditTarget {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
}

impl AuditTarget {
    fn open(&self) -> Result<AuditWriter, Error> {
        AuditWriter::open(&self.path, self.max_bytes, self.keep)
    }
}

/// Starts the audit thread; it stops within one poll interval after `stop` is set. A log
/// that does not open now is logged as an error and tried again every [`RETRY`]; until it
/// opens, events are drained and counted as lost.
pub fn spawn(
    backend: Arc<dyn Backend>,
    target: AuditTarget,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let mut writer = match target.open() {
        Ok(w) => Some(w),
        Err(e) => {
            log::error!("audit: {e}; audit events are lost until it opens (tried every {RETRY:?})");
            None
        }
    };
    std::thread::Builder::new()
        .name("tetherd-audit".into())
        .spawn(move || {
            let mut failing = false;
            let mut tried = std::time::Instant::now();
            let mut lost: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                match backend.poll_events(POLL) {
                    Ok(events) if events.is_empty() => {}
                    Ok(events) => {
                        if writer.is_none() && tried.elapsed() >= RETRY {
                            tried = std::time::Instant::now();
                            match target.open() {
                                Ok(w) => {
                                    log::info!(
                                        "audit: {} opened; {lost} events were lost before",
                                        target.path.display()
                                    );
                                    writer = Some(w);
                                }
                                Err(e) => log::debug!("audit: {e}"),
                            }
                        }
                        match writer.as_mut() {
                            Some(w) => {
                                if let Err(e) = w.write_batch(&events) {
                                    log::warn!("audit: {} events lost: {e}", events.len());
                                }
                            }
                            None => lost += events.len() as u64,
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
        let mut w = AuditWriter::open(&path, 600, 1).unwrap();
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

    #[test]
    fn keeps_as_many_rotated_files_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let line = serde_json::to_vec(&event(1)).unwrap().len() as u64 + 1;
        // One event per file: every batch of one rotates.
        let mut w = AuditWriter::open(&path, line, 3).unwrap();
        for i in 1..=6 {
            w.write_batch(&[event(i)]).unwrap();
        }
        let ts = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().ts_ns)
                .collect()
        };
        assert_eq!(ts(&path), [6]);
        for (n, want) in [(1, 5), (2, 4), (3, 3)] {
            assert_eq!(ts(&dir.path().join(format!("audit.jsonl.{n}"))), [want]);
        }
        assert!(!dir.path().join("audit.jsonl.4").exists());
        // None kept: the log starts over.
        let path = dir.path().join("none.jsonl");
        let mut w = AuditWriter::open(&path, line, 0).unwrap();
        for i in 1..=3 {
            w.write_batch(&[event(i)]).unwrap();
        }
        assert_eq!(ts(&path), [3]);
        assert!(!dir.path().join("none.jsonl.1").exists());
    }
}
