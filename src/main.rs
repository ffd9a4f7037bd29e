//! The `stratafs` command: parse, validate, daemonize, mount, serve, exit code.

use std::process::ExitCode;

use stratafs::daemon::{self, Notifier, Role};
use stratafs::options::{self, Command};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("stratafs: {msg}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `stratafs check|export|merge …`: the offline layer tools (tools/cli.rs).
    if let Some(code) = stratafs::tools::cli::dispatch(&args) {
        return ExitCode::from(code);
    }
    // `stratafs branch MNT OP…`: aufs branch operations on a live mount (remount.rs).
    if args.get(1).is_some_and(|a| a == "branch") {
        let rest: Vec<String> = args[2..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if rest.iter().any(|a| a == "-h" || a == "--help") {
            println!("{}", stratafs::remount::BRANCH_USAGE);
            return ExitCode::SUCCESS;
        }
        return match stratafs::remount::branch_command(&rest) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) if e == stratafs::remount::BRANCH_USAGE => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
            Err(e) => fail(e),
        };
    }
    let mut cfg = match options::parse_args(&args) {
        Ok(Command::Mount(cfg)) => cfg,
        Ok(Command::Remount(r)) => {
            return match stratafs::remount::run(&r) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Ok(Command::Help) => {
            print!("{}", options::help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("stratafs {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(e),
    };
    if let Err(e) = cfg.validate() {
        return fail(e);
    }
    cfg.resolve_access(stratafs::sys::geteuid());
    if let Err(e) = daemon::init_logging(&cfg) {
        return fail(e);
    }
    // A panic (a bug: none is expected on any path) reaches the log too, not only stderr,
    // which a daemon has pointed at /dev/null.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        default_hook(info);
    }));
    if let Err(e) = cfg.prepare() {
        return fail(e);
    }
    // Fork now, while the process has one thread; fuser starts its threads in the child.
    let mut notifier = if cfg.foreground {
        Notifier::none()
    } else {
        match daemon::detach() {
            Ok(Role::Daemon(n)) => n,
            Ok(Role::Exit(code)) => return ExitCode::from(code),
            Err(e) => return fail(format!("starting the daemon: {e}")),
        }
    };
    match stratafs::mount::run(&cfg, || notifier.ready()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !cfg.foreground {
                log::error!("{e}");
            }
            if notifier.fail(&e.to_string()) {
                ExitCode::from(1)
            } else {
                fail(e)
            }
        }
    }
}
