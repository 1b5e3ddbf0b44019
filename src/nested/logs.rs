//! A detached container's output, kept as Docker's json-file driver keeps it: one JSON
//! object per line, `{"log": "...\n", "stream": "stdout"|"stderr", "time": RFC 3339}`, so
//! `logs` can keep the streams apart, print timestamps (`-t`), start at a time
//! (`--since`) and show the last lines (`--tail`).
//!
//! The writer is the nestcache binary itself, started as a containerd logging binary
//! ([`drive`]) by the shim — containerd's runc shim or nestcache's, which both speak
//! `binary://`. A raw log (an older nestcache's) is still read, without times or streams.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub log: String,
    pub stream: String,
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
}

/// The logging binary's work (containerd's protocol): the task's stdout on fd 3, stderr
/// on fd 4, fd 5 closed once ready; every line is appended to `log` until both end.
pub fn drive(log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .ctx(|| format!("open {}", log.display()))?;
    let file = Arc::new(Mutex::new(file));
    // SAFETY: containerd hands these descriptors to the logging binary; nothing else here
    // owns them. Closing fd 5 tells the shim we are ready.
    let (out, err) = unsafe {
        drop(File::from_raw_fd(5));
        (File::from_raw_fd(3), File::from_raw_fd(4))
    };
    let threads: Vec<_> = [(out, "stdout"), (err, "stderr")]
        .into_iter()
        .map(|(from, stream)| {
            let file = Arc::clone(&file);
            std::thread::spawn(move || copy_lines(from, stream, &file))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| Error::Other("log driver thread panicked".into()))??;
    }
    Ok(())
}

fn copy_lines(from: File, stream: &str, to: &Mutex<File>) -> Result<()> {
    let mut r = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r
            .read_until(b'\n', &mut line)
            .ctx(|| format!("read the task's {stream}"))?;
        if n == 0 {
            return Ok(());
        }
        let entry = Entry {
            log: String::from_utf8_lossy(&line).into_owned(),
            stream: stream.to_string(),
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        };
        let mut json = serde_json::to_vec(&entry).map_err(|e| Error::Other(e.to_string()))?;
        json.push(b'\n');
        // One write per entry under the lock: lines of the two streams never interleave.
        let mut f = to
            .lock()
            .map_err(|_| Error::Other("log file lock poisoned".into()))?;
        f.write_all(&json).ctx(|| "append to the log".into())?;
    }
}

/// What `logs` prints.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// The last N lines only.
    pub tail: Option<usize>,
    /// Lines written at or after this time only.
    pub since: Option<SystemTime>,
    /// Prefix each line with its time.
    pub timestamps: bool,
}

/// `--since`: an RFC 3339 time, or a duration back from now (`10m`, `1h30m`).
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "invalid --since {s:?}: an RFC 3339 time (2024-05-01T12:00:00Z) or a duration (10m)"
            ))
        })
}

/// Where a line goes.
pub trait Sink {
    fn line(&mut self, stream: &str, text: &[u8]) -> Result<()>;
}

/// Entries of a JSON log (malformed lines are skipped: a crash may cut the last one)
/// that pass `since`, the last `tail` of them.
pub fn select(text: &str, opts: &LogOptions) -> Vec<Entry> {
    let mut v: Vec<Entry> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
        .filter(
            |e| match (opts.since, humantime::parse_rfc3339_weak(&e.time)) {
                (Some(since), Ok(t)) => t >= since,
                _ => true,
            },
        )
        .collect();
    if let Some(n) = opts.tail {
        let skip = v.len().saturating_sub(n);
        v.drain(..skip);
    }
    v
}

fn emit(e: &Entry, opts: &LogOptions, out: &mut dyn Sink) -> Result<()> {
    let text = if opts.timestamps {
        format!("{} {}", e.time, e.log)
    } else {
        e.log.clone()
    };
    out.line(&e.stream, text.as_bytes())
}

/// Prints the JSON log at `path`; with `follow`, keeps printing while `running()` says
/// the task is alive.
pub async fn print_json_log<F, Fut>(
    path: &Path,
    opts: &LogOptions,
    out: &mut dyn Sink,
    mut running: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let mut f = File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut text = String::new();
    f.read_to_string(&mut text)
        .ctx(|| format!("read {}", path.display()))?;
    // Only whole lines now; a partial last line is read again with its end.
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    for e in select(&text[..whole], opts) {
        emit(&e, opts, out)?;
    }
    let mut pos = whole as u64;
    if !opts.follow {
        return Ok(());
    }
    loop {
        let alive = running().await?;
        f.seek(SeekFrom::Start(pos))
            .ctx(|| format!("seek {}", path.display()))?;
        let mut more = String::new();
        f.read_to_string(&mut more)
            .ctx(|| format!("read {}", path.display()))?;
        let whole = more.rfind('\n').map_or(0, |i| i + 1);
        let tail_free = LogOptions {
            tail: None,
            ..opts.clone()
        };
        for e in select(&more[..whole], &tail_free) {
            emit(&e, opts, out)?;
        }
        pos += whole as u64;
        if !alive && whole == 0 {
            return Ok(());
        }
        if whole == 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(log: &str, stream: &str, time: &str) -> String {
        serde_json::to_string(&Entry {
            log: log.into(),
            stream: stream.into(),
            time: time.into(),
        })
        .unwrap()
    }

    #[test]
    fn since_and_tail_select_entries() {
        let text = [
            entry("a\n", "stdout", "2026-01-01T00:00:00.1Z"),
            "{not json".to_string(),
            entry("b\n", "stderr", "2026-01-01T00:00:01Z"),
            entry("c\n", "stdout", "2026-01-01T00:00:02Z"),
        ]
        .join("\n");
        let logs = |o: LogOptions| -> Vec<String> {
            select(&text, &o).into_iter().map(|e| e.log).collect()
        };
        assert_eq!(logs(LogOptions::default()), ["a\n", "b\n", "c\n"]);
        assert_eq!(
            logs(LogOptions {
                tail: Some(2),
                ..Default::default()
            }),
            ["b\n", "c\n"]
        );
        let since = humantime::parse_rfc3339("2026-01-01T00:00:01Z").unwrap();
        assert_eq!(
            logs(LogOptions {
                since: Some(since),
                ..Default::default()
            }),
            ["b\n", "c\n"]
        );
        assert_eq!(
            logs(LogOptions {
                tail: Some(0),
                ..Default::default()
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn since_takes_times_and_durations() {
        let now = humantime::parse_rfc3339("2026-01-01T01:00:00Z").unwrap();
        assert_eq!(
            parse_since("10m", now).unwrap(),
            now - Duration::from_secs(600)
        );
        assert_eq!(
            parse_since("2026-01-01T00:00:00Z", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert!(matches!(
            parse_since("yesterday", now),
            Err(Error::Invalid(_))
        ));
    }
}
