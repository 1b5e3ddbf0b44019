//! The `nestcache` binary: parses arguments, calls the library, prints. Nothing else.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let is_run = cli::exit::is_run(&argv);
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout with 0; a bad command line is `run`'s 125.
            let _ = e.print();
            return match e.use_stderr() {
                false => ExitCode::SUCCESS,
                true if is_run => ExitCode::from(cli::exit::RUN_FAILED),
                true => ExitCode::from(e.exit_code().clamp(0, 255) as u8),
            };
        }
    };
    cli::init_tracing();
    if !matches!(args.command, cli::Command::Run(_) | cli::Command::Exec(_)) {
        restore_default_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nestcache: cannot start the async runtime: {e}");
            return ExitCode::from(cli::exit::for_error(&e.into(), is_run));
        }
    };
    match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nestcache: {}", cli::one_line(&e));
            ExitCode::from(cli::exit::for_error(&e, is_run))
        }
    }
}

/// Rust ignores SIGPIPE, so `nestcache cache ls | head` would end in a panic on the
/// closed pipe. Listing commands behave like other Unix tools and end quietly instead.
/// `run` keeps it ignored: it must outlive its reader to drain and clean up the task.
fn restore_default_sigpipe() {
    // SAFETY: setting a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
