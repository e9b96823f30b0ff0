//! Generates the Rust types of the runtime-option protos in `proto/` into OUT_DIR.
fn main() {
    let protos = ["proto/runctypes.proto", "proto/runtimeoptions.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .inputs(protos)
        .cargo_out_dir("protos")
        .run_from_script();
}
