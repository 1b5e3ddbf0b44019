//! The nested container: runtime spec from the image config, user resolution, the run
//! flow on containerd, mount verification, and ps/stop/rm/logs.

pub mod spec;
pub mod user;
