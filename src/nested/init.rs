//! The init of `run --init` (init/init.rs, built by build.rs), embedded in nestcache and
//! installed at `<state>/init/nestcache-init`, from where containers bind it read-only.

use std::path::PathBuf;

use crate::cache::keeper::install_binary;
use crate::error::Result;
use crate::layout::StateLayout;

static INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/init"));

/// Makes sure `<state>/init/nestcache-init` is this build's init; returns its path.
pub fn install(state: &StateLayout) -> Result<PathBuf> {
    install_binary(&state.root().join("init"), "nestcache-init", INIT)
}
