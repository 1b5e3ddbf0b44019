//! The byte pipeline in front of the tar parser: blob → (counted) → decompressor →
//! bomb guard → sha256 of the uncompressed stream (the diff_id). Every byte is read once.

use std::cell::Cell;
use std::io::{self, BufRead, Read};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::error::GuardTrip;
use super::pipe::{chunk_pipe, ChunkSender, Chunks};

/// Limits against decompression bombs and absurd archives.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most uncompressed bytes one layer may expand to.
    pub max_layer_bytes: u64,
    /// Most tar entries in one layer.
    pub max_entries: u64,
    /// Most uncompressed bytes per compressed byte, checked once a layer has expanded past
    /// `ratio_grace_bytes` (small layers of zeros compress extremely well and are harmless).
    pub max_ratio: u64,
    pub ratio_grace_bytes: u64,
}

impl Default for Limits {
    /// Built-in values, each overridable by an environment variable
    /// (`NESTCACHE_MAX_LAYER_BYTES`, `NESTCACHE_MAX_ENTRIES`, `NESTCACHE_MAX_RATIO`): a
    /// legitimate layer can trip the ratio guard (a huge sparse `/var/log/lastlog`), and
    /// whoever hits that needs a way out without a rebuild.
    fn default() -> Self {
        let env = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Limits {
            max_layer_bytes: env("NESTCACHE_MAX_LAYER_BYTES", 64 << 30),
            max_entries: env("NESTCACHE_MAX_ENTRIES", 4_000_000),
            max_ratio: env("NESTCACHE_MAX_RATIO", 200),
            ratio_grace_bytes: 64 << 20,
        }
    }
}

/// Counts the blob's bytes the decompressor consumed, so the guard can compute the
/// expansion ratio.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.count.set(self.count.get() + n as u64);
        self.inner.consume(n);
    }
}

/// Stops the stream when a limit is exceeded; the reason is kept in `tripped` because the
/// tar parser may wrap or replace the io::Error on its way up.
pub struct Guard<'a> {
    inner: Box<dyn Read + 'a>,
    compressed: Rc<Cell<u64>>,
    expanded: u64,
    limits: Limits,
    pub tripped: Tripped,
}

impl Read for Guard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.expanded += n as u64;
        let why = if self.expanded > self.limits.max_layer_bytes {
            Some(GuardTrip::LayerBytes {
                limit: self.limits.max_layer_bytes,
            })
        } else if self.expanded > self.limits.ratio_grace_bytes
            && self.expanded > self.compressed.get().saturating_mul(self.limits.max_ratio)
        {
            Some(GuardTrip::Ratio {
                compressed: self.compressed.get(),
                expanded: self.expanded,
                limit: self.limits.max_ratio,
            })
        } else {
            None
        };
        if let Some(why) = why {
            self.tripped.set(why.clone());
            return Err(io::Error::other(why));
        }
        Ok(n)
    }
}

/// The buffer [`super::apply_layer`] puts in front of a blob that is only a `Read`.
pub const BLOB_BUFFER: usize = 64 << 10;

/// Builds blob → decompressor → guard, choosing the decompressor from the magic bytes.
/// The decompressor reads straight out of `blob`'s buffer.
fn open<'a>(blob: Box<dyn BufRead + 'a>, limits: &Limits) -> io::Result<Guard<'a>> {
    let compressed = Rc::new(Cell::new(0));
    let mut buffered = Counted {
        inner: blob,
        count: compressed.clone(),
    };
    let magic = buffered.fill_buf()?;
    let inner: Box<dyn Read + 'a> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else {
        Box::new(buffered)
    };
    Ok(Guard {
        inner,
        compressed,
        expanded: 0,
        limits: limits.clone(),
        tripped: Tripped::default(),
    })
}

/// Why the guard stopped a stream, readable from the consuming thread.
#[derive(Clone, Default)]
pub struct Tripped(Arc<Mutex<Option<GuardTrip>>>);

impl Tripped {
    fn set(&self, why: GuardTrip) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    pub fn take(&self) -> Option<GuardTrip> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Decompressed bytes travel between the threads in chunks this big.
const CHUNK: usize = 1 << 20;
/// Chunks in flight: enough to ride out a burst of small files on the writing side.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Runs blob → decompressor → guard on a thread of its own inside `scope` and returns
/// the uncompressed stream as a reader, so inflating overlaps with hashing and writing
/// files (two cores for one layer). Dropping the reader stops the thread.
pub fn spawn_decoder<'scope, 'env, R: BufRead + Send + 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    blob: R,
    limits: &Limits,
) -> (Chunks, Tripped) {
    let (tx, rx) = chunk_pipe(CHUNKS_IN_FLIGHT);
    let tripped = Tripped::default();
    let limits = limits.clone();
    let shared = tripped.clone();
    scope.spawn(move || {
        let mut guard = match open(Box::new(blob), &limits) {
            Ok(g) => g,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        guard.tripped = shared;
        decode_loop(&mut guard, &tx);
    });
    (rx, tripped)
}

fn decode_loop(guard: &mut Guard<'_>, tx: &ChunkSender) {
    loop {
        let mut buf = tx.buffer_of(CHUNK);
        let mut n = 0;
        while n < CHUNK {
            match guard.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        if n == 0 {
            return;
        }
        buf.truncate(n);
        if !tx.send(Ok(buf)) {
            return;
        }
    }
}
