//! nestcache-init: PID 1 of a nested container run with `--init`.
//!
//! Built by the root `build.rs` as a static, std-only binary (compiled with plain
//! `rustc`, no crates) and embedded in `nestcache`, which binds it read-only into the
//! container at /sbin/nestcache-init.
//!
//! Usage: `nestcache-init [--] CMD [ARG...]`
//!
//! A program run as PID 1 gets no default signal actions: SIGTERM does nothing unless it
//! installed a handler, so `stop` waits its whole timeout. This init runs CMD as its child
//! and, with every signal blocked, waits for signals: it passes each one on to the child
//! and reaps every process that ends (orphans are re-parented to PID 1). When the child
//! ends, it exits with the child's code, or 128 + the signal that killed it. CMD that
//! cannot be run exits 127 (not found) or 126 (not executable), as a shell does.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

const SIG_BLOCK: i32 = 0;
const SIG_SETMASK: i32 = 2;
const WNOHANG: i32 = 1;
// Signal numbers shared by x86_64 and aarch64 Linux.
const SIGCHLD: i32 = 17;

/// glibc's sigset_t: 1024 bits.
#[repr(C)]
struct SigSet([u64; 16]);

extern "C" {
    fn sigfillset(set: *mut SigSet) -> i32;
    fn sigemptyset(set: *mut SigSet) -> i32;
    fn sigprocmask(how: i32, set: *const SigSet, old: *mut SigSet) -> i32;
    fn sigwait(set: *const SigSet, sig: *mut i32) -> i32;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

fn main() {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("nestcache-init: usage: nestcache-init [--] CMD [ARG...]");
        std::process::exit(2);
    }
    let mut all = SigSet([0; 16]);
    // SAFETY: `all` is a valid sigset_t-sized buffer; blocking signals has no other effect
    // on this single-threaded process.
    unsafe {
        sigfillset(&mut all);
        sigprocmask(SIG_BLOCK, &all, std::ptr::null_mut());
    }
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    // SAFETY: between fork and exec only async-signal-safe calls on a local buffer: the
    // child must not inherit the blocked mask (it would ignore SIGTERM for good).
    unsafe {
        cmd.pre_exec(|| {
            let mut none = SigSet([0; 16]);
            sigemptyset(&mut none);
            sigprocmask(SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(c) => c.id() as i32,
        Err(e) => {
            eprintln!("nestcache-init: cannot run {:?}: {e}", args[0]);
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            std::process::exit(code);
        }
    };
    loop {
        let mut sig = 0;
        // SAFETY: `all` is initialised; `sig` is a valid out pointer.
        if unsafe { sigwait(&all, &mut sig) } != 0 {
            continue;
        }
        if sig != SIGCHLD {
            // SAFETY: kill has no memory preconditions; a child already gone is harmless.
            unsafe { kill(child, sig) };
            continue;
        }
        if let Some(code) = reap(child) {
            std::process::exit(code);
        }
    }
}

/// Reaps every ended process; the child's exit code once it is among them.
fn reap(child: i32) -> Option<i32> {
    let mut code = None;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let pid = unsafe { waitpid(-1, &mut status, WNOHANG) };
        if pid == child {
            code = Some(match status & 0x7f {
                0 => (status >> 8) & 0xff,
                sig => 128 + sig,
            });
        } else if pid <= 0 {
            // 0: the others still run; -1 (ECHILD): nothing left to reap.
            return code;
        }
    }
}
