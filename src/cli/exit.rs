//! Exit codes. `run` exits as `docker run` does: the process's own code, 125 when
//! nestcache itself failed (bad flag, unknown image or cache, containerd down, ...), 126
//! when the command cannot be invoked, 127 when it is not found. Other commands exit 1 on
//! failure (clap's 2 for a bad flag).

use nestcache::nested::exec_error::ExecFailure;
use nestcache::Error;

/// nestcache's own failure, for `run`.
pub const RUN_FAILED: u8 = 125;
pub const NOT_EXECUTABLE: u8 = 126;
pub const NOT_FOUND: u8 = 127;
/// Any other command's failure.
pub const FAILED: u8 = 1;

/// The exit code of a failed command (`run` or another).
pub fn for_error(e: &anyhow::Error, run: bool) -> u8 {
    if !run {
        return FAILED;
    }
    match e.downcast_ref::<Error>() {
        Some(err) => for_run_error(err),
        None => RUN_FAILED,
    }
}

/// `run`'s code for a library error: only the command's own failure to start is not
/// nestcache's.
pub fn for_run_error(e: &Error) -> u8 {
    match e {
        Error::Exec(x) => match x.failure {
            ExecFailure::NotFound => NOT_FOUND,
            ExecFailure::NotExecutable => NOT_EXECUTABLE,
        },
        _ => RUN_FAILED,
    }
}

/// Whether the command line is a `run`: its first word that is neither a global option
/// nor a global option's value.
pub fn is_run(args: &[String]) -> bool {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--address" | "--namespace" | "--state-dir" => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => return s == "run",
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use nestcache::nested::exec_error::ExecError;

    fn exec(failure: ExecFailure) -> Error {
        Error::Exec(ExecError {
            id: "c".into(),
            command: "x".into(),
            failure,
            message: "m".into(),
        })
    }

    #[test]
    fn run_errors_map_to_dockers_codes() {
        assert_eq!(for_run_error(&exec(ExecFailure::NotFound)), 127);
        assert_eq!(for_run_error(&exec(ExecFailure::NotExecutable)), 126);
        for e in [
            Error::NotFound("image x".into()),
            Error::Invalid("bad flag".into()),
            Error::Containerd {
                address: "/x".into(),
                message: "down".into(),
            },
            Error::Other("x".into()),
        ] {
            assert_eq!(for_run_error(&e), 125, "{e}");
        }
        // Through anyhow, with context on top, as the handlers return them.
        let e = anyhow::Error::from(exec(ExecFailure::NotFound));
        assert_eq!(for_error(&e, true), 127);
        assert_eq!(for_error(&e, false), 1);
        assert_eq!(for_error(&anyhow::anyhow!("bad"), true), 125);
    }

    #[test]
    fn the_run_subcommand_is_found_past_global_options() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(is_run(&v(&["nc", "run", "--cache", "x"])));
        assert!(is_run(&v(&["nc", "--namespace", "run2", "run"])));
        assert!(is_run(&v(&["nc", "--address=/s", "run"])));
        assert!(!is_run(&v(&["nc", "--namespace", "run", "ps"])));
        assert!(!is_run(&v(&["nc", "stage", "run"])));
        assert!(!is_run(&v(&["nc"])));
    }
}
