//! One process of a container (its init or an exec): state, exit, stdio handles.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use containerd_shim::{
    asynchronous::io::{IoTasks, Pty, Stdio},
    protos::{api::Status, protobuf::well_known_types::timestamp::Timestamp},
};
use tokio::sync::watch;

use crate::{lock::locked, reaper::Exit};

#[derive(Debug, Clone, Copy)]
struct State {
    status: Status,
    pid: u32,
}

pub struct Process {
    /// Empty for the init process.
    pub exec_id: String,
    pub stdio: Stdio,
    /// The exec's OCI process (JSON), as containerd sent it.
    pub spec: Option<Vec<u8>>,
    state: Mutex<State>,
    exit: watch::Sender<Option<Exit>>,
    pub io: IoTasks,
    pty: Mutex<Option<Pty>>,
}

impl Process {
    pub fn new(exec_id: &str, stdio: Stdio, spec: Option<Vec<u8>>) -> Self {
        Self {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            state: Mutex::new(State {
                status: Status::CREATED,
                pid: 0,
            }),
            exit: watch::channel(None).0,
            io: IoTasks::default(),
            pty: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        locked(&self.state).pid
    }

    pub fn status(&self) -> Status {
        locked(&self.state).status
    }

    pub fn set_created(&self, pid: u32, pty: Option<Pty>) {
        locked(&self.state).pid = pid;
        *locked(&self.pty) = pty;
    }

    pub fn set_status(&self, status: Status) {
        let mut s = locked(&self.state);
        if s.status != Status::STOPPED {
            s.status = status;
        }
    }

    pub fn set_exited(&self, exit: Exit) {
        locked(&self.state).status = Status::STOPPED;
        self.exit.send_replace(Some(exit));
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(e) = *rx.borrow_and_update() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; unreachable in practice.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn pty(&self) -> Option<Pty> {
        locked(&self.pty).clone()
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
