//! Generates the Rust types of the runtime-option protos in `proto/` into OUT_DIR, links the
//! binaries with packed relative relocations, and warns when a release build links them
//! dynamically.
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
    warn_if_dynamic(&target_os);
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

/// A release build for glibc links the shim and `tether-runc` against the shared libc
/// unless crt-static is on: an idle shim then holds about 3.5 MiB resident instead of the
/// 2.4 MiB of the static-pie that `scripts/build-release.sh` links. Making the ordinary
/// build static is not possible from here: a build script cannot set target features, a
/// `-static-pie` link argument alone links glibc's dynamic startup code into a binary that
/// crashes, and crt-static in `.cargo/config.toml` (without `--target`) also applies to
/// proc-macro crates, which then fail to build. So the ordinary build says so.
///
/// `scripts/build-release.sh` passes crt-static to the final link alone (`cargo rustc --
/// -C target-feature=+crt-static`), which this script cannot see: it sets
/// `TETHER_SHIM_CRT_STATIC=1` to say it does. crt-static through RUSTFLAGS with `--target`
/// shows in `CARGO_CFG_TARGET_FEATURE`.
fn warn_if_dynamic(target_os: &str) {
    println!("cargo:rerun-if-env-changed=TETHER_SHIM_CRT_STATIC");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let crt_static = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static")
        || var("TETHER_SHIM_CRT_STATIC") == "1";
    if var("PROFILE") == "release"
        && target_os == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && !crt_static
    {
        println!(
            "cargo:warning=containerd-shim-tether-v1 and tether-runc are linked dynamically \
             by this build: an idle shim holds about 1 MiB more resident memory, once per \
             container. Build the binaries to run with `bash scripts/build-release.sh` \
             (static-pie)."
        );
    }
}
