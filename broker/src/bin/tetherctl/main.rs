//! tetherctl: see `tether_broker::ctl`. Exit status: 0 ok, 1 error, 2 usage.

use std::process::ExitCode;

use clap::Parser;
use tether_broker::ctl::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tetherctl: start tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ctl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tetherctl: {e}");
            ExitCode::FAILURE
        }
    }
}
