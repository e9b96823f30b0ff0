//! Who may call tetherd: the peer credentials (SO_PEERCRED) of every accepted connection
//! are captured by an accept hook, and every request is checked against them: root, or a
//! uid listed in `allowed_uids`.

use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::security_extension::{
    AcceptHook, ConnectionData, ConnectionDataExt, HookError, HookOutput,
};

/// The connection-data key under which the peer's credentials are stored.
const PEER_KEY: &str = "tether.peer";

/// The credentials of the process that connected (as of `connect()`, per SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: i32,
}

/// Records each connection's SO_PEERCRED; a connection whose credentials cannot be read
/// is closed.
#[derive(Debug, Default)]
pub struct PeerCredHook;

impl AcceptHook for PeerCredHook {
    fn on_accept(&self, fd: RawFd) -> Result<HookOutput, HookError> {
        // SAFETY: ttrpc passes a descriptor it owns (a dup of the accepted socket) that
        // stays open for the duration of this call; we only borrow it here.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let cred =
            getsockopt(&fd, PeerCredentials).map_err(|e| HookError::Io(std::io::Error::from(e)))?;
        let mut data = ConnectionData::new();
        data.insert(
            PEER_KEY.to_string(),
            Box::new(Peer {
                uid: cred.uid(),
                pid: cred.pid(),
            }),
        );
        Ok(HookOutput {
            data,
            payload_transform: None,
        })
    }
}

/// Checks the caller of one request: Ok for root or an allowed uid, else a
/// PERMISSION_DENIED status naming the uid.
pub fn authorize(ctx: &TtrpcContext, allowed_uids: &[u32]) -> ttrpc::Result<Peer> {
    let Some(peer) = ctx.connection_data.get_typed::<Peer>(PEER_KEY) else {
        return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::PERMISSION_DENIED,
            "tetherd: caller credentials unknown",
        )));
    };
    check_uid(peer.uid, allowed_uids)?;
    Ok(*peer)
}

/// A request context as the accept hook leaves it for a connection of `peer`, for tests
/// that call handlers directly.
#[cfg(test)]
pub(crate) fn context_of(peer: Peer) -> TtrpcContext {
    let mut data = ConnectionData::new();
    data.insert(PEER_KEY.to_string(), Box::new(peer));
    TtrpcContext {
        connection_data: std::sync::Arc::new(data),
        ..Default::default()
    }
}

fn check_uid(uid: u32, allowed_uids: &[u32]) -> ttrpc::Result<()> {
    if uid == 0 || allowed_uids.contains(&uid) {
        Ok(())
    } else {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::PERMISSION_DENIED,
            format!("tetherd: caller uid {uid} is neither root nor in [broker] allowed_uids"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_listed_uids_only() {
        assert!(check_uid(0, &[]).is_ok());
        assert!(check_uid(1000, &[1000]).is_ok());
        match check_uid(1000, &[]) {
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert_eq!(s.code(), ttrpc::Code::PERMISSION_DENIED);
                assert_eq!(
                    s.message,
                    "tetherd: caller uid 1000 is neither root nor in [broker] allowed_uids"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hook_reads_peer_credentials() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let out = PeerCredHook.on_accept(a.as_raw_fd()).unwrap();
        let peer = out.data.get_typed::<Peer>(PEER_KEY).unwrap();
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
        assert_eq!(peer.pid, i32::try_from(std::process::id()).unwrap());
    }
}
