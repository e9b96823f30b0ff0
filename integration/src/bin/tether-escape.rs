//! The escape probe (see `tether_integration::escape`): `send` in a container, `receive` in
//! the network namespace it aims at.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = tether_integration::escape::main(&args) {
        eprintln!("tether-escape: {e}");
        std::process::exit(2);
    }
}
