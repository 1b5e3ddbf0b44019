//! TODO: see lib.rs

pub mod io;
