//! Generates the Rust types of the runtime-option protos in `proto/` into OUT_DIR, and
//! links the binaries with packed relative relocations.
fn main() {
    // One shim process runs per container (or pod), so its resident set counts. A PIE's
    // relative relocations, stored as RELA, are 24 bytes each and all read at every start
    // (about 15,000 here: 360 KiB of resident memory per shim); DT_RELR packs them into a
    // few KiB. The loader must know DT_RELR: glibc >= 2.36 (Debian 12) or musl >= 1.2.4.
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" && std::env::var_os("TETHER_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=TETHER_NO_RELR");
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
