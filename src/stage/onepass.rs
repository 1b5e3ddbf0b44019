//! One pass from source to store: each missing layer blob is read from the source once,
//! and every chunk is hashed (the blob digest), written to its ingest file and handed to
//! the extractor (decompressor → tar → files, hashing the diff_id) in the same pass, so
//! a download overlaps with its extraction. The blob is published only together with its
//! layer, once both digests verified; a failure leaves neither, and the temp file and
//! work dir go with it.
//!
//! Every blob's ingest lock ([`BlobClaim`]) is taken before any layer starts, in digest
//! order, and held until the stage is done with all of them: two stagers of overlapping
//! images then never wait for each other in a cycle, and a second stager of a layer finds
//! both its blob and its layer published when it gets the lock.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::{Scope, ScopedJoinHandle};

use indicatif::ProgressBar;
use oci_spec::image::Descriptor;

use super::progress::Bars;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::Layer;
use crate::source::Source;
use crate::store::{BlobClaim, Ingested, NoTee, Present, Store, Tee};
use crate::unpack::{
    apply_buffered, apply_layer, chunk_pipe, ChunkSender, Feed, LayerBlob, Limits, Outcome,
};

/// The [`Feed`] of a stage: layers whose blobs are claimed are streamed from the source;
/// the others (blob present, layer missing) are read from the store.
pub(super) struct OnePass<'a> {
    store: &'a Store,
    source: &'a dyn Source,
    bars: &'a Bars,
    /// Claims by blob digest, with the descriptor to fetch the blob by.
    claims: HashMap<Digest, (Descriptor, Mutex<BlobClaim>)>,
    /// What each ingest did.
    done: Mutex<HashMap<Digest, Ingested>>,
}

impl<'a> OnePass<'a> {
    /// Claims the blob of every layer in `layers` (each digest once), in digest order.
    pub(super) fn claim(
        store: &'a Store,
        source: &'a dyn Source,
        bars: &'a Bars,
        layers: &[&Layer],
        present: Present,
    ) -> Result<OnePass<'a>> {
        let mut sorted: Vec<&Layer> = layers.to_vec();
        sorted.sort_by_key(|l| l.digest.to_string());
        sorted.dedup_by(|a, b| a.digest == b.digest);
        let mut claims = HashMap::new();
        for l in sorted {
            let claim = store.claim("layer", &l.digest, l.size(), present)?;
            claims.insert(l.digest.clone(), (l.descriptor.clone(), Mutex::new(claim)));
        }
        Ok(OnePass {
            store,
            source,
            bars,
            claims,
            done: Mutex::new(HashMap::new()),
        })
    }

    /// Ingests and publishes what extraction did not need (a blob whose diff_id another
    /// blob of the image also has), then returns what every ingest did, by digest.
    pub(super) fn finish(self) -> Result<HashMap<Digest, Ingested>> {
        for (digest, (desc, claim)) in &self.claims {
            let mut claim = lock(claim);
            if claim.by_other() {
                let by_other = Ingested {
                    bytes: 0,
                    resumed_from: 0,
                    by_other: true,
                };
                self.record(digest, by_other);
            }
            if claim.needs_write() {
                let bar = self.bars.start(digest, desc.size());
                let got = claim
                    .write(
                        &mut |off| self.open(desc, off),
                        &mut |n| bar.inc(n),
                        &mut NoTee,
                    )
                    .map_err(|e| self.source_error(e));
                bar.finish_and_clear();
                self.record(digest, got?);
            }
            claim.publish()?;
        }
        Ok(self.done.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    fn record(&self, digest: &Digest, got: Ingested) {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), got);
    }

    fn open(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + '_>> {
        Ok(self.source.open_blob_at(desc, offset)? as Box<dyn Read>)
    }

    /// A failure of the source's stream names the source; typed store refusals and
    /// the extractor's own errors keep their type.
    fn source_error(&self, e: Error) -> Error {
        match e {
            e @ (Error::Store(_) | Error::Unpack(_) | Error::Invalid(_)) => e,
            e => Error::Other(format!("{}: {e}", self.source.describe())),
        }
    }

    /// Streams `claim`'s blob from the source into its ingest file and the extractor.
    fn one_pass(
        &self,
        layer: &LayerBlob,
        desc: &Descriptor,
        claim: &mut BlobClaim,
        dest: &Path,
        lowers: Option<&[PathBuf]>,
        limits: &Limits,
    ) -> Result<Outcome> {
        let bar = self.bars.start(&layer.digest, desc.size());
        let res = std::thread::scope(|scope| {
            let mut tee = LayerTee::start(scope, layer, dest, lowers, limits);
            let written = claim.write(
                &mut |off| self.open(desc, off),
                &mut |n| bar.inc(n),
                &mut tee,
            );
            let outcome = tee.finish();
            match written {
                Ok(got) => outcome.map(|o| (got, o)),
                Err(e) => Err(self.source_error(e)),
            }
        });
        bar.finish_and_clear();
        let (got, outcome) = res?;
        self.record(&layer.digest, got);
        Ok(outcome)
    }
}

impl Feed for OnePass<'_> {
    fn extract(
        &self,
        layer: &LayerBlob,
        dest: &Path,
        lowers: Option<&[PathBuf]>,
        limits: &Limits,
    ) -> Result<Outcome> {
        if let Some((desc, claim)) = self.claims.get(&layer.digest) {
            let mut claim = lock(claim);
            if claim.needs_write() {
                return self.one_pass(layer, desc, &mut claim, dest, lowers, limits);
            }
        }
        let path = self.blob_path(layer);
        let file = std::fs::File::open(&path).ctx(|| format!("open blob {}", path.display()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        let bar = self.bars.start(&layer.digest, size);
        let counted = Counted {
            inner: file,
            bar: &bar,
        };
        let res = apply_layer(
            counted,
            &layer.media_type,
            &layer.diff_id,
            dest,
            lowers,
            limits,
        );
        bar.finish_and_clear();
        res
    }

    fn blob_path(&self, layer: &LayerBlob) -> PathBuf {
        match self.claims.get(&layer.digest) {
            Some((_, claim)) => lock(claim).path(),
            None => self.store.layout().blob(&layer.digest),
        }
    }

    fn publishing(&self, layer: &LayerBlob) -> Result<()> {
        match self.claims.get(&layer.digest) {
            Some((_, claim)) => lock(claim).publish(),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts the bytes read from a blob file into its progress bar.
struct Counted<'b, R> {
    inner: R,
    bar: &'b ProgressBar,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Chunks in flight from the ingest to one layer's extractor (each at most the ingest's
/// 1 MiB read). Few: the decoder behind the pipe buffers the bursts of small files, and
/// every chunk here costs its MiB per layer in flight.
const PIPE_CHUNKS: usize = 2;

/// The [`Tee`] into one layer's extractor, which runs on a thread of its own reading a
/// bounded pipe. If the extractor fails, the next write returns its error (the ingest
/// stops); if it finishes early (it needs the lower layers, or the compressed stream
/// ended before the blob did), the rest is only hashed and written.
struct LayerTee<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    layer: &'env LayerBlob,
    dest: &'env Path,
    lowers: Option<&'env [PathBuf]>,
    limits: &'env Limits,
    tx: Option<ChunkSender>,
    running: Option<ScopedJoinHandle<'scope, Result<Outcome>>>,
    /// What the extractor returned when it ended before the stream did.
    ended: Option<Result<Outcome>>,
}

impl<'scope, 'env> LayerTee<'scope, 'env> {
    fn start(
        scope: &'scope Scope<'scope, 'env>,
        layer: &'env LayerBlob,
        dest: &'env Path,
        lowers: Option<&'env [PathBuf]>,
        limits: &'env Limits,
    ) -> Self {
        let mut tee = LayerTee {
            scope,
            layer,
            dest,
            lowers,
            limits,
            tx: None,
            running: None,
            ended: None,
        };
        tee.spawn();
        tee
    }

    fn spawn(&mut self) {
        let (tx, rx) = chunk_pipe(PIPE_CHUNKS);
        let (layer, dest, lowers, limits) = (self.layer, self.dest, self.lowers, self.limits);
        self.tx = Some(tx);
        self.running = Some(self.scope.spawn(move || {
            apply_buffered(rx, &layer.media_type, &layer.diff_id, dest, lowers, limits)
        }));
    }

    /// Waits for the extractor (its input must be closed or gone).
    fn join(&mut self) -> Option<Result<Outcome>> {
        let handle = self.running.take()?;
        Some(match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    /// Closes the extractor's input and returns its outcome.
    fn finish(mut self) -> Result<Outcome> {
        self.tx = None;
        match self.ended.take().or_else(|| self.join()) {
            Some(r) => r,
            None => Err(Error::Other(format!(
                "layer {}: extractor never started",
                self.layer.diff_id
            ))),
        }
    }
}

impl Tee for LayerTee<'_, '_> {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        let Some(tx) = &mut self.tx else {
            return Ok(());
        };
        if tx.send_copy(bytes) {
            return Ok(());
        }
        // The extractor stopped reading: it is done or failed.
        self.tx = None;
        match self.join() {
            Some(Ok(o)) => {
                self.ended = Some(Ok(o));
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }

    fn restart(&mut self) -> Result<()> {
        self.tx = None;
        let _ = self.join();
        self.ended = None;
        crate::unpack::discard(self.dest);
        self.spawn();
        Ok(())
    }
}
