//! The `stratafs` command: parse, validate, mount, serve, exit code.

use std::process::ExitCode;

use stratafs::options::{self, Command};

fn main() -> ExitCode {
    let cmd = match options::parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stratafs: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = match cmd {
        Command::Help => {
            println!("usage: stratafs [SOURCE] MOUNTPOINT -o lowerdir=L1:L2…[,upperdir=U,workdir=W][,OPTIONS] [-f] [-d]");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("stratafs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Mount(cfg) => cfg,
    };
    let mut log =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if cfg.debug {
            "debug"
        } else {
            "error"
        }));
    log.init();
    if let Err(e) = cfg.validate() {
        eprintln!("stratafs: {e}");
        return ExitCode::from(1);
    }
    match stratafs::mount::run(&cfg, || {}) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratafs: {e}");
            ExitCode::from(1)
        }
    }
}
