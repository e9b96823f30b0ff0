//! Compiles `src/bpf/tether.bpf.c` with clang (libbpf-cargo), writes its skeleton to OUT_DIR and
//! derives the object version from the object's bytes, so every build of different bytecode pins
//! beside the others instead of over them.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/tether.bpf.c";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let obj = out.join("tether.bpf.o");
    SkeletonBuilder::new()
        .source(manifest.join(SRC))
        .obj(&obj)
        .clang_args([
            format!("-I/usr/include/{arch}"),
            "-Wall".to_string(),
            // Debug info names source paths; map them so the bytes (and the version) do not
            // depend on where the tree is checked out.
            format!("-fdebug-prefix-map={}=tether", manifest.display()),
        ])
        .build_and_generate(out.join("tether.skel.rs"))
        .unwrap_or_else(|e| panic!("building {SRC}: {e:#}"));

    let bytes = std::fs::read(&obj).expect("reading the built object");
    // FNV-1a 64: stable across Rust releases (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    println!("cargo:rustc-env=TETHER_BPF_VERSION={h:016x}");
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed=src/bpf/tether.h");
}
