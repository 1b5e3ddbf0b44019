//! The `nestcache` binary: parses arguments, calls the library, prints. Nothing else.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let is_run = cli::exit::is_run(&argv);
    cli::init_tracing();
    let args = match cli::parse(is_run) {
        Ok(a) => a,
        Err(cli::ParseFailure::Usage(code)) => return code,
        Err(cli::ParseFailure::Config(e)) => return fail(&e, is_run),
    };
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
        Err(e) => fail(&e, is_run),
    }
}

/// One line on stderr, and with `--json` an error object on stdout too.
fn fail(e: &anyhow::Error, is_run: bool) -> ExitCode {
    let code = cli::exit::for_error(e, is_run);
    eprintln!("nestcache: {}", cli::one_line(e));
    if cli::json_requested() {
        cli::print_json_error(e, code);
    }
    ExitCode::from(code)
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
