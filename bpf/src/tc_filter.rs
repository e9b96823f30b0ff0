//! tether's clsact filters over rtnetlink: the clsact qdisc made where it is missing, a
//! filter added or replaced (cls_bpf, direct action, with the classid that keys the interface
//! on kernels before 6.2) and read back (its program id and classid). libbpf's
//! `bpf_tc_attach` has no classid, hence this module; removing filters stays libbpf's
//! ([`crate::tc`]).
//!
//! Messages are built and parsed by hand: a `nlmsghdr`, a `tcmsg`, and attributes (4-byte
//! aligned `nlattr`s), as linux/rtnetlink.h, linux/pkt_cls.h and linux/netlink.h define them.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::error::{Error, Result};

const RTM_NEWQDISC: u16 = 36;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_CLASSID: u16 = 3;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`), the clsact qdisc's parent handle.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
const TC_H_MIN_INGRESS: u32 = 0xFFF2;
const TC_H_MIN_EGRESS: u32 = 0xFFF3;
/// `htons(ETH_P_ALL)`: the filter sees every protocol.
const ETH_P_ALL_BE: u32 = 0x0300;
const NLMSG_HDRLEN: usize = 16;
const TCMSG_LEN: usize = 20;

/// Where a filter sits: an interface (of the calling thread's network namespace), a
/// direction, and tether's fixed handle and priority.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FilterAt {
    pub ifindex: u32,
    pub ingress: bool,
    pub handle: u32,
    pub priority: u32,
}

/// A filter read back: its program's id and its classid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FilterInfo {
    pub prog_id: u32,
    pub classid: u32,
}

/// Adds the clsact qdisc to `ifindex` unless it has one.
pub(crate) fn ensure_clsact(ifindex: u32) -> Result<()> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, TCA_KIND, b"clsact\0");
    let sock = open()?;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    let tcmsg = TcMsg {
        ifindex,
        handle: TC_H_CLSACT & 0xFFFF_0000,
        parent: TC_H_CLSACT,
        info: 0,
    };
    send_tcmsg(&sock, RTM_NEWQDISC, flags, tcmsg, &attrs)?;
    match reply(&sock, "RTM_NEWQDISC") {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Adds the cls_bpf filter running `prog` (direct action) with `classid`, or replaces the one
/// at the same place.
pub(crate) fn replace(at: FilterAt, prog: BorrowedFd<'_>, name: &str, classid: u32) -> Result<()> {
    let mut options = Vec::new();
    put_attr(
        &mut options,
        TCA_BPF_FD,
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
    );
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    put_attr(&mut options, TCA_BPF_NAME, &cname);
    put_attr(
        &mut options,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    put_attr(&mut options, TCA_BPF_CLASSID, &classid.to_ne_bytes());
    let mut attrs = Vec::new();
    put_attr(&mut attrs, TCA_KIND, b"bpf\0");
    put_attr(&mut attrs, TCA_OPTIONS | NLA_F_NESTED, &options);
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let sock = open()?;
    request(&sock, RTM_NEWTFILTER, flags, at, &attrs)?;
    match reply(&sock, "RTM_NEWTFILTER")? {
        Reply::Ack => Ok(()),
        Reply::Filter(_) => Err(protocol("RTM_NEWTFILTER", "a filter instead of an ack")),
    }
}

/// The filter at `at`, if there is one.
pub(crate) fn get(at: FilterAt) -> Result<Option<FilterInfo>> {
    let sock = open()?;
    request(&sock, RTM_GETTFILTER, NLM_F_REQUEST, at, &[])?;
    match reply(&sock, "RTM_GETTFILTER") {
        Ok(Reply::Filter(f)) => Ok(Some(f)),
        Ok(Reply::Ack) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn open() -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| Error::syscall("socket(AF_NETLINK)", e.into()))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| Error::syscall("bind(AF_NETLINK)", e.into()))?;
    Ok(fd)
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The `tcmsg` of a request: the interface, the object's handle, its parent and `tcm_info`.
#[derive(Clone, Copy)]
struct TcMsg {
    ifindex: u32,
    handle: u32,
    parent: u32,
    info: u32,
}

fn request(sock: &OwnedFd, kind: u16, flags: u16, at: FilterAt, attrs: &[u8]) -> Result<()> {
    let direction = if at.ingress {
        TC_H_MIN_INGRESS
    } else {
        TC_H_MIN_EGRESS
    };
    let tcmsg = TcMsg {
        ifindex: at.ifindex,
        handle: at.handle,
        parent: (TC_H_CLSACT & 0xFFFF_0000) | direction,
        info: (at.priority << 16) | ETH_P_ALL_BE,
    };
    send_tcmsg(sock, kind, flags, tcmsg, attrs)
}

fn send_tcmsg(sock: &OwnedFd, kind: u16, flags: u16, t: TcMsg, attrs: &[u8]) -> Result<()> {
    let len = NLMSG_HDRLEN + TCMSG_LEN + attrs.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(t.ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&t.handle.to_ne_bytes());
    msg.extend_from_slice(&t.parent.to_ne_bytes());
    msg.extend_from_slice(&t.info.to_ne_bytes());
    msg.extend_from_slice(attrs);
    send(sock.as_fd().as_raw_fd(), &msg, MsgFlags::empty())
        .map_err(|e| Error::syscall("send(rtnetlink)", e.into()))?;
    Ok(())
}

enum Reply {
    Ack,
    Filter(FilterInfo),
}

fn protocol(call: &'static str, what: &str) -> Error {
    Error::syscall(
        call,
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected netlink reply: {what}"),
        ),
    )
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the kernel's answer to one request: an error (returned as the errno), an ack, or
/// a filter.
fn reply(sock: &OwnedFd, call: &'static str) -> Result<Reply> {
    let mut buf = vec![0u8; 16 * 1024];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| Error::syscall(call, e.into()))?;
    decode(&buf[..n], call)
}

fn decode(buf: &[u8], call: &'static str) -> Result<Reply> {
    let len = u32_at(buf, 0).ok_or_else(|| protocol(call, "short message"))? as usize;
    let kind = u16_at(buf, 4).ok_or_else(|| protocol(call, "short message"))?;
    let msg = buf
        .get(..len)
        .ok_or_else(|| protocol(call, "truncated message"))?;
    match kind {
        NLMSG_ERROR => {
            let errno =
                u32_at(msg, NLMSG_HDRLEN).ok_or_else(|| protocol(call, "short error"))? as i32;
            if errno == 0 {
                Ok(Reply::Ack)
            } else {
                Err(Error::syscall(
                    call,
                    std::io::Error::from_raw_os_error(-errno),
                ))
            }
        }
        RTM_NEWTFILTER => {
            let attrs = msg
                .get(NLMSG_HDRLEN + TCMSG_LEN..)
                .ok_or_else(|| protocol(call, "short filter"))?;
            let mut info = FilterInfo {
                prog_id: 0,
                classid: 0,
            };
            let options = find_attr(attrs, TCA_OPTIONS).unwrap_or(&[]);
            if let Some(id) = find_attr(options, TCA_BPF_ID).and_then(|v| u32_at(v, 0)) {
                info.prog_id = id;
            }
            if let Some(c) = find_attr(options, TCA_BPF_CLASSID).and_then(|v| u32_at(v, 0)) {
                info.classid = c;
            }
            Ok(Reply::Filter(info))
        }
        other => Err(protocol(call, &format!("message type {other}"))),
    }
}

/// The payload of the first attribute of `kind` (the nested flag ignored) in `attrs`.
fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16_at(attrs, 0)? as usize;
        let k = u16_at(attrs, 2)? & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_message(options: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, TCA_KIND, b"bpf\0");
        put_attr(&mut attrs, TCA_OPTIONS | NLA_F_NESTED, options);
        let len = NLMSG_HDRLEN + TCMSG_LEN + attrs.len();
        let mut msg = Vec::new();
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWTFILTER.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[0; TCMSG_LEN]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn a_filter_gives_its_program_and_classid() {
        let mut options = Vec::new();
        put_attr(&mut options, TCA_BPF_NAME, b"tether_tc_egress\0");
        put_attr(&mut options, TCA_BPF_CLASSID, &0x1234u32.to_ne_bytes());
        put_attr(&mut options, TCA_BPF_ID, &77u32.to_ne_bytes());
        let Reply::Filter(f) = decode(&filter_message(&options), "test").unwrap() else {
            panic!("not a filter");
        };
        assert_eq!(
            f,
            FilterInfo {
                prog_id: 77,
                classid: 0x1234
            }
        );
    }

    #[test]
    fn errors_and_acks_are_told_apart() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        let e = decode(&msg, "test").err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        msg[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(matches!(decode(&msg, "test"), Ok(Reply::Ack)));
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        for cut in [0, 3, 10, 20, 30] {
            let msg = filter_message(&[]);
            let _ = decode(&msg[..cut.min(msg.len())], "test");
        }
        let mut bad = filter_message(&[]);
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(decode(&bad, "test").is_err());
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = Vec::new();
        put_attr(&mut b, TCA_KIND, b"bpf\0\0");
        assert_eq!(b.len(), 12);
        assert_eq!(find_attr(&b, TCA_KIND), Some(&b"bpf\0\0"[..]));
    }
}
