//! Per-layer progress bars on stderr: one bar per layer, counting the blob bytes read
//! (with one pass, that is the download, the write and the extraction at once). Drawn
//! only when asked for (not with `-q`/`--json`) and stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;

pub(super) struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
}

impl Bars {
    pub(super) fn new(wanted: bool) -> Bars {
        let target = if wanted && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        Bars {
            multi: MultiProgress::with_draw_target(target),
            style,
        }
    }

    /// A bar for blob `digest` of `size` bytes; `finish_and_clear` it when done.
    pub(super) fn start(&self, digest: &Digest, size: u64) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(self.style.clone());
        bar.set_prefix(digest.short().to_string());
        bar
    }
}
