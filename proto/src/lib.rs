//! tether's broker API (`tether.broker.v1`): the protobuf messages and the async ttrpc
//! client and server of `tether/broker/v1/broker.proto`, generated into OUT_DIR at build
//! time. Nothing else lives here.

include!(concat!(env!("OUT_DIR"), "/mod.rs"));

pub use broker::*;
pub use broker_ttrpc::{create_broker, Broker, BrokerClient};
