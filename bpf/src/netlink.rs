//! Link events over rtnetlink: the socket that hears links being added to a network
//! namespace (RTMGRP_LINK), and the decoder that tells whether what it read holds an
//! RTM_NEWLINK. Only the socket and its messages: entering the namespace is
//! [`crate::container`]'s, and what to do on a new link is the caller's.
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use crate::error::{Error, Result};

/// The multicast group of link events (`RTMGRP_LINK`, linux/rtnetlink.h).
const RTMGRP_LINK: u32 = 1;
/// `RTM_NEWLINK` (linux/rtnetlink.h): a link was added or changed.
const RTM_NEWLINK: u16 = 16;
/// `sizeof(struct nlmsghdr)`: length (u32), type (u16), flags (u16), seq (u32), pid (u32).
const NLMSG_HDRLEN: usize = 16;
/// Room for one read: a burst of link messages fits (each is well under 2 KiB).
pub const RECV_BUFFER: usize = 16 * 1024;

/// A netlink route socket subscribed to link events, in the calling thread's network
/// namespace (where it stays, whatever the thread does later). Non-blocking, close-on-exec.
pub fn link_events_socket_here() -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|e| Error::syscall("socket(AF_NETLINK)", e.into()))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))
        .map_err(|e| Error::syscall("bind(RTMGRP_LINK)", e.into()))?;
    Ok(fd)
}

/// What [`drain`] read from a link-events socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Everything queued was read; `new_link`: an RTM_NEWLINK was among it.
    Empty { new_link: bool },
    /// The socket is closed (a read of 0 bytes): nothing more will come.
    Closed,
}

/// Reads everything queued on a link-events socket without waiting (`MSG_DONTWAIT`, so it
/// also serves a socket someone made blocking) and says whether a link was added. A socket
/// that overran (`ENOBUFS`: events were dropped, a burst of link changes) counts as a link
/// added: the caller lists the namespace's interfaces again, which is the resynchronisation.
/// `buf` is the read buffer ([`RECV_BUFFER`] bytes holds a burst).
pub fn drain(sock: BorrowedFd<'_>, buf: &mut [u8]) -> Result<Drained> {
    let mut new_link = false;
    loop {
        match recv(sock.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Ok(Drained::Closed),
            Ok(n) => new_link |= has_new_link(&buf[..n]),
            Err(Errno::EAGAIN) => return Ok(Drained::Empty { new_link }),
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOBUFS) => new_link = true,
            Err(e) => return Err(Error::syscall("recv(link events)", e.into())),
        }
    }
}

/// Whether a netlink datagram holds an RTM_NEWLINK message: walks the `nlmsghdr`s (each
/// `nlmsg_len` long, aligned to 4 bytes) and stops at a truncated or malformed one.
pub fn has_new_link(buf: &[u8]) -> bool {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if u16::from_ne_bytes([buf[off + 4], buf[off + 5]]) == RTM_NEWLINK {
            return true;
        }
        if len < NLMSG_HDRLEN {
            break;
        }
        off += (len + 3) & !3;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: a header of type `ty` and `payload` bytes after it.
    fn msg(ty: u16, payload: usize) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(len as usize, 0);
        // nlmsg_align: the next message starts at a multiple of 4.
        m.resize((len as usize + 3) & !3, 0);
        m
    }

    #[test]
    fn a_new_link_is_found_in_any_message_of_a_datagram() {
        assert!(has_new_link(&msg(RTM_NEWLINK, 32)));
        // RTM_DELLINK (17), then RTM_NEWLINK with a payload that needs padding.
        let mut d = msg(17, 20);
        d.extend(msg(RTM_NEWLINK, 13));
        assert!(has_new_link(&d));
        let mut d = msg(17, 3);
        d.extend(msg(RTM_NEWLINK, 0));
        assert!(has_new_link(&d));
    }

    #[test]
    fn other_messages_are_not_a_new_link() {
        // RTM_DELLINK, RTM_NEWADDR, NLMSG_DONE.
        let mut d = msg(17, 16);
        d.extend(msg(20, 8));
        d.extend(msg(3, 4));
        assert!(!has_new_link(&d));
        assert!(!has_new_link(&[]));
    }

    #[test]
    fn truncated_or_malformed_headers_stop_the_walk() {
        // Shorter than one header.
        assert!(!has_new_link(&msg(RTM_NEWLINK, 0)[..NLMSG_HDRLEN - 1]));
        // A length below the header's size: what follows is not read.
        let mut bad = msg(17, 0);
        bad[..4].copy_from_slice(&4u32.to_ne_bytes());
        bad.extend(msg(RTM_NEWLINK, 0));
        assert!(!has_new_link(&bad));
        // A length past the end: the walk ends without reading out of bounds.
        let mut long = msg(17, 0);
        long[..4].copy_from_slice(&4096u32.to_ne_bytes());
        long.extend(msg(RTM_NEWLINK, 0));
        assert!(!has_new_link(&long));
    }

    #[test]
    fn a_drain_returns_once_the_queue_is_empty() {
        // Bound in the host's namespace, where other processes may add links meanwhile:
        // only that the read ends (the socket does not block) is certain.
        let Ok(sock) = link_events_socket_here() else {
            return; // No AF_NETLINK here (a restricted sandbox): nothing to test.
        };
        let mut buf = vec![0u8; RECV_BUFFER];
        let d = drain(std::os::fd::AsFd::as_fd(&sock), &mut buf).unwrap();
        assert!(matches!(d, Drained::Empty { .. }), "{d:?}");
    }
}
