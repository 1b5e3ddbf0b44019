//! keeper: PID 1 of a nestcache cache container.
//!
//! Built by the root `build.rs` as a static, std-only binary (no crates: it is compiled
//! with plain `rustc`) and embedded in `nestcache`, so a cache container needs no image.
//!
//! Usage: `keeper PATH NAME NONCE`
//!
//! 1. Handshake (path identity): nestcache wrote NONCE into
//!    `<content dir>/.nestcache/cache/NAME/nonce`; the keeper reads
//!    `PATH/.nestcache/cache/NAME/nonce`. Equal means both sides see the same directory:
//!    the keeper writes `ack` there (NONCE again) for nestcache to find in its own view.
//!    Different or missing: exit [`EXIT_OTHER_DIR`].
//! 2. Keep: sleep until the deadline in `.../deadline` (unix seconds; absent or 0 =
//!    none), re-reading it on SIGUSR1 (`nestcache cache touch`) and when the alarm rings.
//!    Exit 0 at the deadline, or on SIGTERM / SIGINT.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The nonce was not found at PATH: nestcache and the task see different directories.
const EXIT_OTHER_DIR: i32 = 3;
/// The ack could not be written at PATH.
const EXIT_NO_ACK: i32 = 4;
const EXIT_USAGE: i32 = 2;

// Signal numbers shared by x86_64 and aarch64 Linux.
const SIGINT: i32 = 2;
const SIGUSR1: i32 = 10;
const SIGALRM: i32 = 14;
const SIGTERM: i32 = 15;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn pause() -> i32;
    fn alarm(seconds: u32) -> u32;
    fn _exit(status: i32) -> !;
}

/// SIGTERM / SIGINT: a clean stop. `_exit` is async-signal-safe.
extern "C" fn on_stop(_: i32) {
    unsafe { _exit(0) }
}

/// SIGUSR1 / SIGALRM: only wake `pause()`; the loop re-reads the deadline.
extern "C" fn on_wake(_: i32) {}

fn main() {
    // As PID 1, signals without a handler are ignored: install them before anything else.
    unsafe {
        signal(SIGTERM, on_stop);
        signal(SIGINT, on_stop);
        signal(SIGUSR1, on_wake);
        signal(SIGALRM, on_wake);
    }
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: keeper PATH NAME NONCE");
        std::process::exit(EXIT_USAGE);
    }
    let dir: PathBuf = Path::new(&args[1])
        .join(".nestcache")
        .join("cache")
        .join(&args[2]);
    let nonce = &args[3];

    match fs::read_to_string(dir.join("nonce")) {
        Ok(seen) if seen.trim() == nonce => {}
        Ok(_) => {
            eprintln!("keeper: {} holds another nonce", dir.display());
            std::process::exit(EXIT_OTHER_DIR);
        }
        Err(e) => {
            eprintln!("keeper: {}: {e}", dir.join("nonce").display());
            std::process::exit(EXIT_OTHER_DIR);
        }
    }
    if let Err(e) = write_ack(&dir, nonce) {
        eprintln!("keeper: writing the ack in {}: {e}", dir.display());
        std::process::exit(EXIT_NO_ACK);
    }

    let mut deadline = None;
    loop {
        // A deadline file that vanished (content dir emptied) keeps the last one known.
        if let Some(d) = read_deadline(&dir) {
            deadline = if d == 0 { None } else { Some(d) };
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match deadline {
            Some(d) if d <= now => std::process::exit(0),
            Some(d) => unsafe {
                alarm((d - now).min(1 << 30) as u32);
            },
            None => unsafe {
                alarm(0);
            },
        }
        // A SIGUSR1 between the read above and pause() is not lost for good: the alarm
        // re-reads the deadline before exiting.
        unsafe {
            pause();
        }
    }
}

fn write_ack(dir: &Path, nonce: &str) -> std::io::Result<()> {
    let tmp = dir.join("ack.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(nonce.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join("ack"))
}

fn read_deadline(dir: &Path) -> Option<u64> {
    fs::read_to_string(dir.join("deadline"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
