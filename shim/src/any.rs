//! Messages packed into protobuf `Any` under written-out type names.
//!
//! Looking a type's name up through protobuf's reflection (`descriptor_dyn().full_name()`,
//! as containerd-shim's `convert_to_any` does) builds, on first use, the descriptors of the
//! message's proto file and of every file it imports, and keeps them for the life of the
//! process: 359 KiB of heap for the task events' file, more than the rest of an idle shim's
//! heap. A shim runs per container and answers Stats for as long as its container runs, so
//! it names the types it sends itself; a unit test checks every name against the
//! descriptor.
use containerd_shim::protos::{
    cgroups::metrics::Metrics as MetricsV1,
    cgroups_v2::metrics::Metrics as MetricsV2,
    events::task::{
        TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit,
        TaskOOM, TaskPaused, TaskResumed, TaskStart,
    },
    protobuf::{well_known_types::any::Any, Message},
    shim::oci::ProcessDetails,
};

use crate::error::{Error, Result};

/// A message with its full protobuf type name.
pub trait Named: Message {
    const TYPE_NAME: &'static str;
}

/// `m` as an `Any` (the bare type name as its URL, as containerd writes them).
pub fn pack<M: Named>(m: &M) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = M::TYPE_NAME.to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| Error::framework("encode message", e.into()))?;
    Ok(any)
}

macro_rules! named {
    ($($ty:ty => $name:expr),* $(,)?) => {
        $(
            impl Named for $ty {
                const TYPE_NAME: &'static str = $name;
            }
        )*
        /// (written name, name from the descriptor) of every named type, for the test.
        #[cfg(test)]
        fn names() -> Vec<(&'static str, String)> {
            use containerd_shim::protos::protobuf::MessageFull;
            vec![$((
                <$ty as Named>::TYPE_NAME,
                <$ty as MessageFull>::descriptor().full_name().to_string(),
            )),*]
        }
    };
}

named! {
    TaskCreate => "containerd.events.TaskCreate",
    TaskStart => "containerd.events.TaskStart",
    TaskExit => "containerd.events.TaskExit",
    TaskDelete => "containerd.events.TaskDelete",
    TaskExecAdded => "containerd.events.TaskExecAdded",
    TaskExecStarted => "containerd.events.TaskExecStarted",
    TaskPaused => "containerd.events.TaskPaused",
    TaskResumed => "containerd.events.TaskResumed",
    TaskCheckpointed => "containerd.events.TaskCheckpointed",
    TaskOOM => "containerd.events.TaskOOM",
    MetricsV1 => "io.containerd.cgroups.v1.Metrics",
    MetricsV2 => "io.containerd.cgroups.v2.Metrics",
    ProcessDetails => "containerd.runc.v1.ProcessDetails",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_are_the_descriptors_names() {
        for (written, reflected) in names() {
            assert_eq!(written, reflected);
        }
    }

    #[test]
    fn packs_under_the_written_name() {
        let ev = TaskStart {
            container_id: "c1".into(),
            pid: 42,
            ..Default::default()
        };
        let any = pack(&ev).unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskStart");
        assert_eq!(TaskStart::parse_from_bytes(&any.value).unwrap(), ev);
    }
}
