//! The generated protobuf messages and `Broker` ttrpc service of `tether.broker.v1`
//! (`tether/broker/v1/broker.proto`), built into OUT_DIR by build.rs.

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

pub use broker::*;
pub use broker_ttrpc::{create_broker, Broker, BrokerClient};
