//! tether-runc: see `tether_shim::runc_compat`.
fn main() {
    std::process::exit(tether_shim::runc_compat::main_with(
        std::env::args_os().skip(1).collect(),
    ));
}
