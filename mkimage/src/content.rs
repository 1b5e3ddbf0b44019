//! Generated file content: a `Read` that yields `len` seeded bytes without holding them.
//!
//! Blocks of 4 KiB alternate (by chance) between random bytes and word-salad text, so
//! gzip and zstd see roughly the 2:1 ratio of real images instead of pure noise.

use std::io::{self, Read};

use crate::rng::Rng;

const BLOCK: usize = 4096;

const WORDS: &[&str] = &[
    "container",
    "layer",
    "overlay",
    "digest",
    "manifest",
    "index",
    "config",
    "runtime",
    "snapshot",
    "content",
    "blob",
    "sha256",
    "gzip",
    "zstd",
    "tar",
    "whiteout",
    "opaque",
    "hardlink",
    "symlink",
    "namespace",
    "cgroup",
    "mount",
    "rootfs",
    "bundle",
    "process",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
];

pub struct Content {
    rng: Rng,
    remaining: u64,
    block: Box<[u8; BLOCK]>,
    pos: usize,
    filled: usize,
}

impl Content {
    pub fn new(seed: u64, len: u64) -> Self {
        Content {
            rng: Rng::new(seed),
            remaining: len,
            block: Box::new([0; BLOCK]),
            pos: 0,
            filled: 0,
        }
    }

    fn refill(&mut self) {
        let n = (self.remaining.min(BLOCK as u64)) as usize;
        if self.rng.below(2) == 0 {
            for chunk in self.block[..n].chunks_mut(8) {
                let v = self.rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        } else {
            let mut i = 0;
            let mut words_on_line = 0;
            while i < n {
                let w = WORDS[self.rng.below(WORDS.len() as u64) as usize].as_bytes();
                let take = w.len().min(n - i);
                self.block[i..i + take].copy_from_slice(&w[..take]);
                i += take;
                if i < n {
                    words_on_line += 1;
                    self.block[i] = if words_on_line % 12 == 0 { b'\n' } else { b' ' };
                    i += 1;
                }
            }
        }
        self.pos = 0;
        self.filled = n;
        self.remaining -= n as u64;
    }
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.refill();
        }
        let n = buf.len().min(self.filled - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_length_and_deterministic() {
        let mut a = Vec::new();
        Content::new(3, 10_001).read_to_end(&mut a).unwrap();
        let mut b = Vec::new();
        Content::new(3, 10_001).read_to_end(&mut b).unwrap();
        assert_eq!(a.len(), 10_001);
        assert_eq!(a, b);
    }
}
