//! Reading the audit log for `tetherctl events`: once to the end, or following it like
//! `tail -F` (new lines as they are appended; across rotation to `<file>.1` and
//! truncation; waiting while the file does not exist).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How many existing lines `follow` shows before new ones, as `tail` does.
pub const BACKLOG_LINES: usize = 10;

/// A position in a file that may be replaced (rotated) or truncated under it.
pub struct Tail {
    path: PathBuf,
    file: Option<(File, u64)>,
    pos: u64,
    partial: Vec<u8>,
}

impl Tail {
    /// Starts at the beginning of `path`.
    pub fn new(path: &Path) -> Self {
        Tail {
            path: path.to_path_buf(),
            file: None,
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// Starts so that the first `poll` returns only the last `lines` complete lines.
    pub fn from_last_lines(path: &Path, lines: usize) -> io::Result<Self> {
        let mut t = Tail::new(path);
        let Ok(mut f) = File::open(path) else {
            return Ok(t);
        };
        let meta = f.metadata()?;
        let len = meta.len();
        let start = len.saturating_sub(64 << 10);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        (&mut f).take(len - start).read_to_end(&mut buf)?;
        // Offsets of line starts within buf, counting only complete lines.
        let complete = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut starts: Vec<usize> = buf[..complete]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        starts.insert(0, 0);
        starts.pop();
        if start > 0 && !starts.is_empty() {
            // The first "line" of a window that does not start the file is partial.
            starts.remove(0);
        }
        let first = starts
            .len()
            .checked_sub(lines)
            .and_then(|i| starts.get(i))
            .or(starts.first())
            .copied()
            .unwrap_or(complete);
        t.pos = start + first as u64;
        t.file = Some((f, meta.ino()));
        Ok(t)
    }

    /// Reads what was appended since the last call and returns the complete lines.
    /// Handles rotation (the path now names another file: the rest of the old file is
    /// read first) and truncation (start over).
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        let current_ino = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.ino(), m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some((f, ino)) = &mut self.file {
            match current_ino {
                Some((cur, len)) if cur == *ino && len < self.pos => {
                    // Truncated in place.
                    self.pos = 0;
                    self.partial.clear();
                }
                _ => {}
            }
            self.pos += read_from(f, self.pos, &mut self.partial, &mut lines)?;
            let replaced = current_ino.is_some_and(|(cur, _)| cur != *ino);
            if replaced {
                self.file = None;
                self.pos = 0;
            }
        }
        if self.file.is_none() && current_ino.is_some() {
            match File::open(&self.path) {
                Ok(f) => {
                    let ino = f.metadata()?.ino();
                    self.pos = 0;
                    self.file = Some((f, ino));
                    if let Some((f, _)) = &mut self.file {
                        self.pos += read_from(f, 0, &mut self.partial, &mut lines)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(lines)
    }
}

/// Reads `f` from `pos` to its end, appending complete lines to `lines` and keeping an
/// unterminated tail in `partial`. Returns the bytes read.
fn read_from(
    f: &mut File,
    pos: u64,
    partial: &mut Vec<u8>,
    lines: &mut Vec<String>,
) -> io::Result<u64> {
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::new();
    let n = f.read_to_end(&mut buf)?;
    partial.extend_from_slice(&buf);
    if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
        let rest = partial.split_off(end + 1);
        for l in partial.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            lines.push(String::from_utf8_lossy(l).into_owned());
        }
        *partial = rest;
    }
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn follows_appends_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut t = Tail::new(&path);
        assert!(t.poll().unwrap().is_empty(), "missing file: nothing yet");
        append(&path, "a\nb\npart");
        assert_eq!(t.poll().unwrap(), ["a", "b"]);
        append(&path, "ial\n");
        assert_eq!(t.poll().unwrap(), ["partial"]);
        // Rotation: a last line lands in the old file, then the path is a new file.
        append(&path, "c\n");
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        append(&path, "d\n");
        assert_eq!(t.poll().unwrap(), ["c", "d"]);
        // Truncation in place.
        std::fs::write(&path, "").unwrap();
        assert!(t.poll().unwrap().is_empty());
        append(&path, "e\n");
        assert_eq!(t.poll().unwrap(), ["e"]);
    }

    #[test]
    fn backlog_is_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let text: String = (0..25).map(|i| format!("line{i}\n")).collect();
        append(&path, &text);
        let mut t = Tail::from_last_lines(&path, 10).unwrap();
        let lines = t.poll().unwrap();
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "line15");
        let mut all = Tail::from_last_lines(&path, 100).unwrap();
        assert_eq!(all.poll().unwrap().len(), 25);
    }
}
