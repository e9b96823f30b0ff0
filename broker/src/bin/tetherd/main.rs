//! tetherd: see `tether_broker::daemon`.

use std::process::ExitCode;

use clap::Parser;
use tether_broker::daemon::{self, Args};
use tether_broker::{logger, Error};

fn main() -> ExitCode {
    let args = Args::parse();
    logger::init(args.debug, std::env::var("RUST_LOG").ok().as_deref());
    match try_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::AlreadyRunning { pid }) => {
            eprintln!("tetherd already running (pid {pid})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tetherd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(args: Args) -> Result<(), Error> {
    if args.features {
        println!("{}", tether_bpf::Features::probe());
        return Ok(());
    }
    let config = args.config()?;
    let backend = args.backend(&config)?;
    if args.version {
        println!("{}", backend.version());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "start",
            path: "tokio runtime".into(),
            source,
        })?;
    runtime.block_on(daemon::run(config, backend))
}
