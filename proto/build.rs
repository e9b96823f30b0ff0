//! Generates the protobuf messages and async ttrpc client/server of
//! `tether/broker/v1/broker.proto` into OUT_DIR, plus a `mod.rs` declaring both.
use std::io;
use std::path::PathBuf;

fn main() -> io::Result<()> {
    let proto = "tether/broker/v1/broker.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(
        std::env::var_os("OUT_DIR")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "OUT_DIR is not set"))?,
    );
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input(proto)
        .include(".")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;
    // Generated files carry inner attributes, so they must be modules of their own
    // rather than `include!`d into an item.
    std::fs::write(
        out_dir.join("mod.rs"),
        "/// Protobuf messages of `tether.broker.v1`.\n\
         #[allow(clippy::undocumented_unsafe_blocks, missing_docs)]\n\
         pub mod broker;\n\
         /// The `Broker` service: async client and server trait.\n\
         #[allow(clippy::undocumented_unsafe_blocks, missing_docs)]\n\
         pub mod broker_ttrpc;\n",
    )
}
