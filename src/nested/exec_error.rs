//! The nested command could not be invoked: not found or not executable. runc reports
//! this when the task is created (its init looks the command up before it waits to be
//! started) or started, as text inside containerd's error; Docker tells the two cases by
//! the same text and exits 127 or 126 for them.

/// Why the command could not be invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecFailure {
    /// No such file, or not found in PATH (Docker's exit 127).
    NotFound,
    /// Found but not executable: permission denied, a directory (Docker's exit 126).
    NotExecutable,
}

#[derive(Debug, thiserror::Error)]
#[error("nested container {id}: cannot run {command:?}: {message}")]
pub struct ExecError {
    pub id: String,
    pub command: String,
    pub failure: ExecFailure,
    /// containerd's (runc's) own words.
    pub message: String,
}

/// runc's exec failure in containerd's error text, if that is what it is. runc words it
/// `exec: "CMD": executable file not found in $PATH`, `exec: "CMD": stat CMD: no such
/// file or directory`, `exec: "CMD": permission denied` or `exec: "CMD": is a directory`.
pub fn classify(message: &str) -> Option<ExecFailure> {
    let at = message.find("exec: \"")?;
    let tail = &message[at..];
    if tail.contains("executable file not found") || tail.contains("no such file or directory") {
        Some(ExecFailure::NotFound)
    } else if tail.contains("permission denied") || tail.contains("is a directory") {
        Some(ExecFailure::NotExecutable)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_exec_failures_are_classified() {
        let pre = "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: ";
        let cases = [
            (
                r#"exec: "nosuch": executable file not found in $PATH: unknown"#,
                Some(ExecFailure::NotFound),
            ),
            (
                r#"exec: "/no/such": stat /no/such: no such file or directory: unknown"#,
                Some(ExecFailure::NotFound),
            ),
            (
                r#"exec: "/etc/passwd": permission denied: unknown"#,
                Some(ExecFailure::NotExecutable),
            ),
            (
                r#"exec: "/etc": is a directory: unknown"#,
                Some(ExecFailure::NotExecutable),
            ),
            // A mount source that does not exist is not the command's failure.
            (
                "error mounting \"/x\" to rootfs: no such file or directory: unknown",
                None,
            ),
            ("permission denied", None),
        ];
        for (msg, want) in cases {
            assert_eq!(classify(&format!("{pre}{msg}")), want, "{msg}");
        }
    }
}
