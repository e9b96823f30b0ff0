//! Reading processes from `/proc`: who is running, their parents, state and memory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// One process as seen in `/proc` at the time of the scan.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// The state letter of `/proc/PID/stat` (`R`, `S`, `Z`, ...).
    pub state: char,
    /// `argv`; empty for kernel threads and zombies.
    pub cmdline: Vec<String>,
}

impl ProcInfo {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }

    /// `argv` joined by spaces.
    pub fn cmdline_string(&self) -> String {
        self.cmdline.join(" ")
    }

    /// The value following `flag` in `argv` (e.g. `-id`), if any.
    pub fn arg_after(&self, flag: &str) -> Option<&str> {
        self.cmdline
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.cmdline.get(i + 1))
            .map(String::as_str)
    }

    /// The file name of `argv[0]`.
    pub fn program(&self) -> Option<&str> {
        self.cmdline
            .first()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
    }
}

/// All processes. Processes that exit during the scan are skipped.
pub fn processes() -> Result<Vec<ProcInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry.context("reading /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        match process(pid) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The process `pid`, or `None` if it does not exist (any more).
pub fn process(pid: i32) -> Result<Option<ProcInfo>> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = match read_if_exists(&dir.join("stat"))? {
        Some(s) => s,
        None => return Ok(None),
    };
    let (state, ppid) =
        parse_stat(&stat).with_context(|| format!("parsing /proc/{pid}/stat: {stat:?}"))?;
    let cmdline = read_if_exists(&dir.join("cmdline"))?.unwrap_or_default();
    let cmdline = cmdline
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Some(ProcInfo {
        pid,
        ppid,
        state,
        cmdline,
    }))
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> Result<bool> {
    Ok(process(pid)?.is_some_and(|p| !p.is_zombie()))
}

/// `VmRSS` of `pid` in KiB.
pub fn vm_rss_kib(pid: i32) -> Result<u64> {
    status_field(pid, "VmRSS")
}

/// `Pss` of `pid` in KiB (`/proc/<pid>/smaps_rollup`): its resident set with every page
/// shared with other processes counted as its share.
pub fn pss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no Pss line in {path}"))
}

/// A numeric field of `/proc/<pid>/status` (`VmRSS`, `RssAnon`, `RssFile`, `Threads`, ...),
/// in its own unit (KiB for sizes).
pub fn status_field(pid: i32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no {key} line in {path}"))
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-superblock options (after the `-` separator), e.g. `rw,memory` for a cgroup v1
    /// memory hierarchy.
    pub super_options: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Result<Vec<Mount>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    text.lines()
        .map(|l| parse_mountinfo_line(l).with_context(|| format!("parsing mountinfo line {l:?}")))
        .collect()
}

fn parse_mountinfo_line(line: &str) -> Result<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields
        .iter()
        .position(|f| *f == "-")
        .ok_or_else(|| anyhow!("no '-' separator"))?;
    let mount_point = fields.get(4).ok_or_else(|| anyhow!("no mount point"))?;
    Ok(Mount {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype: fields.get(sep + 1).unwrap_or(&"").to_string(),
        super_options: fields.get(sep + 3).unwrap_or(&"").to_string(),
    })
}

/// Undoes mountinfo's `\NNN` octal escapes (space, tab, newline, backslash).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(state, ppid)` from the contents of `/proc/PID/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Result<(char, i32)> {
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("no ')'"))? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| anyhow!("no state field"))?;
    let ppid = fields
        .next()
        .ok_or_else(|| anyhow!("no ppid field"))?
        .parse()
        .context("ppid")?;
    Ok((state, ppid))
}

/// Contents of a `/proc` file, `None` if the process went away (ENOENT/ESRCH).
fn read_if_exists(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let (state, ppid) = parse_stat("42 (a) b (c) Z 7 42 42 0").unwrap();
        assert_eq!((state, ppid), ('Z', 7));
    }

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo_line(
            "35 24 0:30 / /sys/fs/cgroup/my\\040dir rw,relatime shared:9 - cgroup cgroup rw,memory",
        )
        .unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/my dir"));
        assert_eq!(m.fstype, "cgroup");
        assert_eq!(m.super_options, "rw,memory");
        assert!(!mounts().unwrap().is_empty());
    }

    #[test]
    fn sees_itself() {
        let me = process(std::process::id() as i32).unwrap().unwrap();
        assert!(!me.is_zombie());
        assert!(!me.cmdline.is_empty());
        assert!(vm_rss_kib(me.pid).unwrap() > 0);
    }
}
