fn main() {
    std::process::exit(tether_shim::main());
}
