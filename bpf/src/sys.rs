//! Every bpf(2) command and every `unsafe` of tether-bpf goes through here. Callers get owned
//! fds and typed results; an error names the bpf command that failed.
use std::ffi::{c_void, CString};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Plain old data: `repr(C)`, no padding bytes, every bit pattern valid.
///
/// # Safety
/// Implement only for `repr(C)` types whose fields are integers or arrays of integers, with all
/// padding spelled out as fields, so that viewing them as bytes and back is sound.
pub(crate) unsafe trait Pod: Copy + Default + 'static {}

// SAFETY: integers are plain old data.
unsafe impl Pod for u64 {}
// SAFETY: integers are plain old data.
unsafe impl Pod for u32 {}

pub(crate) fn as_bytes<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: T is Pod (no padding, no invalid bit patterns); the slice covers exactly `v`.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Reads a `T` from the start of `bytes`; None when `bytes` is too short.
pub(crate) fn from_bytes<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod and `bytes` holds at least size_of::<T>() bytes; read_unaligned copes
    // with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn check(call: &'static str, ret: i32) -> Result<i32> {
    if ret < 0 {
        Err(Error::syscall(call, io::Error::from_raw_os_error(-ret)))
    } else {
        Ok(ret)
    }
}

fn owned(call: &'static str, ret: i32) -> Result<OwnedFd> {
    let fd = check(call, ret)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::path(
            "bpf pin path",
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })
}

/// BPF_OBJ_GET: opens a pinned program, map or link.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let ret = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    owned("BPF_OBJ_GET", ret).map_err(|e| match e {
        Error::Syscall { source, .. } => Error::path("BPF_OBJ_GET", path, source),
        other => other,
    })
}

/// BPF_OBJ_PIN: pins `fd` at `path` (which must not exist).
pub(crate) fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = cpath(path)?;
    // SAFETY: `fd` is a live fd and `c` a valid NUL-terminated string during the call.
    let ret = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    check("BPF_OBJ_PIN", ret).map(|_| ()).map_err(|e| match e {
        // The kernel says EPERM for a path outside any bpffs: say which.
        Error::Syscall { source, .. }
            if source.raw_os_error() == Some(libc::EPERM)
                && path
                    .parent()
                    .is_some_and(|d| matches!(crate::pins::is_bpffs(d), Ok(false))) =>
        {
            Error::NoBpffs {
                path: path.to_path_buf(),
                reason: "BPF_OBJ_PIN refused (EPERM); was the bpffs unmounted?".into(),
            }
        }
        Error::Syscall { source, .. } => Error::path("BPF_OBJ_PIN", path, source),
        other => other,
    })
}

/// BPF_LINK_CREATE on a cgroup (multi-attach: other programs on the cgroup stay).
pub fn link_create_cgroup(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd> {
    // SAFETY: both fds are live; a null opts pointer is allowed by libbpf.
    let ret = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            cgroup.as_raw_fd(),
            attach_type,
            std::ptr::null(),
        )
    };
    owned("BPF_LINK_CREATE (cgroup)", ret)
}

/// BPF_LINK_CREATE for TCX on `ifindex` of the calling thread's network namespace
/// (Linux 6.6+). Appended after the programs already there.
pub fn link_create_tcx(prog: BorrowedFd<'_>, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    // SAFETY: `prog` is live; for TCX the target is an ifindex, not an fd; null opts allowed.
    let ret = unsafe {
        libbpf_sys::bpf_link_create(
            prog.as_raw_fd(),
            ifindex as i32,
            attach_type,
            std::ptr::null(),
        )
    };
    owned("BPF_LINK_CREATE (tcx)", ret)
}

/// BPF_LINK_DETACH: detaches the link now, whoever else holds it.
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: `link` is a live fd.
    let ret = unsafe { libbpf_sys::bpf_link_detach(link.as_raw_fd()) };
    check("BPF_LINK_DETACH", ret).map(|_| ())
}

/// What the kernel says about a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    pub link_type: u32,
    pub attach_type: u32,
    /// For cgroup links: the cgroup id, 0 once the cgroup is gone.
    pub cgroup_id: u64,
    /// For TCX links: the ifindex, 0 once the interface (or its netns) is gone.
    pub ifindex: u32,
}

pub(crate) fn link_info(link: BorrowedFd<'_>) -> Result<LinkInfo> {
    let mut info = libbpf_sys::bpf_link_info::default();
    let mut len = size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: `info` is a writable bpf_link_info of `len` bytes.
    let ret = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    check("BPF_OBJ_GET_INFO_BY_FD (link)", ret)?;
    let mut out = LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        link_type: info.type_,
        attach_type: 0,
        cgroup_id: 0,
        ifindex: 0,
    };
    if info.type_ == libbpf_sys::BPF_LINK_TYPE_CGROUP {
        // SAFETY: the kernel filled the `cgroup` member for cgroup links.
        let cg = unsafe { info.__bindgen_anon_1.cgroup };
        out.cgroup_id = cg.cgroup_id;
        out.attach_type = cg.attach_type;
    } else if info.type_ == libbpf_sys::BPF_LINK_TYPE_TCX {
        // SAFETY: the kernel filled the `tcx` member for TCX links.
        let tcx = unsafe { info.__bindgen_anon_1.tcx };
        out.ifindex = tcx.ifindex;
        out.attach_type = tcx.attach_type;
    }
    Ok(out)
}

/// What the kernel says about a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub id: u32,
    pub prog_type: u32,
    pub name: String,
    /// Cumulative run time and count; they move only while bpf stats are enabled.
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub verified_insns: u32,
}

/// What the kernel says about the program behind `prog` (any program, not only tether's).
pub fn prog_info(prog: BorrowedFd<'_>) -> Result<ProgInfo> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a writable bpf_prog_info of `len` bytes; all pointer members are 0,
    // so the kernel writes nothing else.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
    check("BPF_OBJ_GET_INFO_BY_FD (prog)", ret)?;
    Ok(ProgInfo {
        id: info.id,
        prog_type: info.type_,
        name: c_name(&info.name),
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
        verified_insns: info.verified_insns,
    })
}

/// What the kernel says about a map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    pub id: u32,
    pub map_type: u32,
    pub name: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

pub(crate) fn map_info(map: BorrowedFd<'_>) -> Result<MapInfo> {
    let mut info = libbpf_sys::bpf_map_info::default();
    let mut len = size_of::<libbpf_sys::bpf_map_info>() as u32;
    // SAFETY: `info` is a writable bpf_map_info of `len` bytes.
    let ret = unsafe { libbpf_sys::bpf_map_get_info_by_fd(map.as_raw_fd(), &mut info, &mut len) };
    check("BPF_OBJ_GET_INFO_BY_FD (map)", ret)?;
    Ok(MapInfo {
        id: info.id,
        map_type: info.type_,
        name: c_name(&info.name),
        key_size: info.key_size,
        value_size: info.value_size,
        max_entries: info.max_entries,
    })
}

fn c_name(raw: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// BPF_MAP_LOOKUP_ELEM; Ok(false) when the key is absent.
pub(crate) fn map_lookup(map: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    // SAFETY: the caller sized `key` and `value` from the map's key and (per-CPU) value size,
    // checked against the map's info when it was opened.
    let ret = unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            map.as_raw_fd(),
            key.as_ptr().cast::<c_void>(),
            value.as_mut_ptr().cast::<c_void>(),
        )
    };
    if ret == -libc::ENOENT {
        return Ok(false);
    }
    check("BPF_MAP_LOOKUP_ELEM", ret).map(|_| true)
}

/// BPF_MAP_UPDATE_ELEM.
pub(crate) fn map_update(map: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
    // SAFETY: as in map_lookup; the kernel only reads `key` and `value`.
    let ret = unsafe {
        libbpf_sys::bpf_map_update_elem(
            map.as_raw_fd(),
            key.as_ptr().cast::<c_void>(),
            value.as_ptr().cast::<c_void>(),
            flags,
        )
    };
    check("BPF_MAP_UPDATE_ELEM", ret).map(|_| ())
}

/// BPF_MAP_DELETE_ELEM; Ok(false) when the key was absent.
pub(crate) fn map_delete(map: BorrowedFd<'_>, key: &[u8]) -> Result<bool> {
    // SAFETY: as in map_lookup; the kernel only reads `key`.
    let ret =
        unsafe { libbpf_sys::bpf_map_delete_elem(map.as_raw_fd(), key.as_ptr().cast::<c_void>()) };
    if ret == -libc::ENOENT {
        return Ok(false);
    }
    check("BPF_MAP_DELETE_ELEM", ret).map(|_| true)
}

/// BPF_MAP_GET_NEXT_KEY; Ok(false) at the end.
pub(crate) fn map_next_key(
    map: BorrowedFd<'_>,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> Result<bool> {
    let key_ptr = key.map_or(std::ptr::null(), |k| k.as_ptr().cast::<c_void>());
    // SAFETY: `key` (or null for the first key) and `next` are sized from the map's key size.
    let ret = unsafe {
        libbpf_sys::bpf_map_get_next_key(
            map.as_raw_fd(),
            key_ptr,
            next.as_mut_ptr().cast::<c_void>(),
        )
    };
    if ret == -libc::ENOENT {
        return Ok(false);
    }
    check("BPF_MAP_GET_NEXT_KEY", ret).map(|_| true)
}

/// The number of possible CPUs: per-CPU map values hold one slot per possible CPU.
pub(crate) fn possible_cpus() -> Result<usize> {
    // SAFETY: no arguments; libbpf reads /sys/devices/system/cpu/possible.
    let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
    check("libbpf_num_possible_cpus", n).map(|n| n as usize)
}

/// Whether the running kernel's release is at least `major.minor`.
pub(crate) fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// BPF_PROG_TEST_RUN with a packet (`data`) and optionally a context; returns the program's
/// return value.
pub(crate) fn prog_test_run(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&mut [u8]>,
) -> Result<u32> {
    prog_test_run_repeat(prog, data, ctx, 1).map(|(ret, _)| ret)
}

/// BPF_PROG_TEST_RUN `repeat` times; returns the verdict and the kernel's mean duration of
/// one run in nanoseconds.
pub fn prog_test_run_repeat(
    prog: BorrowedFd<'_>,
    data: &[u8],
    ctx: Option<&mut [u8]>,
    repeat: u32,
) -> Result<(u32, u32)> {
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: data.as_ptr().cast::<c_void>(),
        data_size_in: data.len() as u32,
        data_out: out.as_mut_ptr().cast::<c_void>(),
        data_size_out: out.len() as u32,
        repeat: repeat as i32,
        ..Default::default()
    };
    if let Some(ctx) = ctx {
        opts.ctx_in = ctx.as_ptr().cast::<c_void>();
        opts.ctx_size_in = ctx.len() as u32;
        opts.ctx_out = ctx.as_mut_ptr().cast::<c_void>();
        opts.ctx_size_out = ctx.len() as u32;
    }
    // SAFETY: every pointer in `opts` refers to a live buffer of the stated size.
    let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    check("BPF_PROG_TEST_RUN", ret)?;
    Ok((opts.retval, opts.duration))
}

/// BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): run time accounting stays on while the fd is open.
pub fn enable_run_time_stats() -> Result<OwnedFd> {
    // SAFETY: plain integer argument.
    let ret = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    owned("BPF_ENABLE_STATS", ret)
}

/// Ids of every program loaded in the kernel.
pub fn all_prog_ids() -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: `next` is a writable u32.
        let ret = unsafe { libbpf_sys::bpf_prog_get_next_id(id, &mut next) };
        if ret == -libc::ENOENT {
            return Ok(ids);
        }
        check("BPF_PROG_GET_NEXT_ID", ret)?;
        ids.push(next);
        id = next;
    }
}

/// Opens a program by kernel id (None if it went away meanwhile).
pub fn prog_by_id(id: u32) -> Result<Option<OwnedFd>> {
    // SAFETY: plain integer argument.
    let ret = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if ret == -libc::ENOENT {
        return Ok(None);
    }
    owned("BPF_PROG_GET_FD_BY_ID", ret).map(Some)
}

/// Info of a program by kernel id (None if it went away meanwhile).
pub fn prog_info_by_id(id: u32) -> Result<Option<ProgInfo>> {
    match prog_by_id(id)? {
        Some(fd) => prog_info(std::os::fd::AsFd::as_fd(&fd)).map(Some),
        None => Ok(None),
    }
}

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE, Linux 5.14+).
pub fn current_netns_cookie() -> Result<u64> {
    // SO_NETNS_COOKIE is not in every libc crate release.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::syscall("socket", io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a writable u64 and `len` its size.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast::<c_void>(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(Error::syscall(
            "getsockopt(SO_NETNS_COOKIE)",
            io::Error::last_os_error(),
        ));
    }
    Ok(cookie)
}

/// The interfaces (ifindex, name) of the calling thread's network namespace.
pub(crate) fn interfaces() -> Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, or null on error.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(Error::syscall("if_nameindex", io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut p = head;
    loop {
        // SAFETY: `p` stays within the array until the zero terminator.
        let entry = unsafe { &*p };
        if entry.if_index == 0 {
            break;
        }
        // SAFETY: if_name is a NUL-terminated string owned by the array.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.if_name) };
        out.push((entry.if_index, name.to_string_lossy().into_owned()));
        // SAFETY: the terminator has not been reached, so the next element exists.
        p = unsafe { p.add(1) };
    }
    // SAFETY: `head` came from if_nameindex and is freed once.
    unsafe { libc::if_freenameindex(head) };
    Ok(out)
}
