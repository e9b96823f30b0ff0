//! The link watcher: links added to a container's network namespace after its attach step
//! (`docker network connect`, CNI run late) get the TC programs too. One implementation,
//! [`LinkWatch::on_readable`] (drain the link-events socket; on RTM_NEWLINK attach to the new
//! interfaces), with two callers: the shim's runtime ([`spawn`]) and the blocking loop of
//! `tether-runc`'s watcher process ([`run_blocking`]).
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use log::{info, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tether_bpf::netlink::{self, Drained};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use super::cgroup_netns::Attachment;
use crate::error::{Error, Result};

/// One container's watch: the attachment that new links join, and the read buffer.
pub struct LinkWatch {
    attachment: Arc<Attachment>,
    buf: Vec<u8>,
}

impl LinkWatch {
    pub fn new(attachment: Arc<Attachment>) -> Self {
        LinkWatch {
            attachment,
            buf: vec![0u8; netlink::RECV_BUFFER],
        }
    }

    /// The link-events socket is readable: reads everything queued and, if a link was
    /// added, attaches to the interfaces that have no programs yet. Returns whether to keep
    /// watching (`false`: the socket is closed or broken).
    pub fn on_readable(&mut self, sock: BorrowedFd<'_>) -> bool {
        match self.drain(sock) {
            Some(true) => {
                attach_new(&self.attachment);
                true
            }
            Some(false) => true,
            None => false,
        }
    }

    /// Reads everything queued: `Some(true)` when a link was added (or events were lost,
    /// and the namespace must be looked at again), `None` when the socket is closed or
    /// broken.
    fn drain(&mut self, sock: BorrowedFd<'_>) -> Option<bool> {
        match netlink::drain(sock, &mut self.buf) {
            Ok(Drained::Closed) => None,
            Ok(Drained::Empty { new_link }) => Some(new_link),
            Err(e) => {
                warn!("link watch of {}: {e}", self.attachment.id);
                None
            }
        }
    }
}

/// Attaches to the interfaces of the container's namespace that have no programs yet, and
/// logs what it did.
fn attach_new(attachment: &Attachment) {
    let id = &attachment.id;
    match attachment.attach_new_interfaces() {
        Ok(added) => {
            for a in added {
                info!(
                    "{id}: attached to new interface {} (ifindex {})",
                    a.name, a.key.ifindex
                );
            }
        }
        Err(e) => warn!("{id}: attach to new interface: {e}"),
    }
}

/// Watches on the shim's runtime until the socket closes or the task is aborted (detach).
pub fn spawn(attachment: Arc<Attachment>, sock: OwnedFd) -> Result<JoinHandle<()>> {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is the same fd for the
    // AsyncFd's whole life.
    let sock = unsafe { AsyncFd::register(sock) }
        .map_err(|e| Error::io("watch links", std::io::Error::from(e)))?;
    let mut watch = LinkWatch::new(attachment);
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = sock.readable().await else {
                return;
            };
            let added = watch.drain(sock.get_ref().as_fd());
            // Drained to EAGAIN: the readiness is used up.
            guard.clear_ready();
            match added {
                None => return,
                Some(false) => {}
                Some(true) => {
                    // The attach work (bpf(2), setns(2), a netlink dump) runs on a blocking
                    // thread, never on the runtime's one thread that serves the task API.
                    // Detach waits for it (Attachment::stop_watching).
                    let a = watch.attachment.clone();
                    if tokio::task::spawn_blocking(move || attach_new(&a))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }))
}

/// How often (ms) the blocking watcher looks at `keep_going` when no link event comes.
const CHECK_EVERY_MS: u16 = 1000;

/// Watches on the calling thread until the socket closes, or `keep_going` (asked at least
/// every [`CHECK_EVERY_MS`]) says the container is gone.
pub fn run_blocking(
    attachment: Arc<Attachment>,
    sock: OwnedFd,
    keep_going: impl Fn() -> bool,
) -> Result<()> {
    let mut watch = LinkWatch::new(attachment);
    loop {
        if !keep_going() {
            return Ok(());
        }
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(CHECK_EVERY_MS)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("poll(link events)", e)),
        }
        if !keep_going() || !watch.on_readable(sock.as_fd()) {
            return Ok(());
        }
    }
}
