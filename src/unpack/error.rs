//! Why one tar entry failed to apply, before the layer and entry names are known; the
//! applier turns it into a crate error once they are ([`Fail::into_error`]).

use std::io;
use std::path::PathBuf;

use super::tree::TreeError;
use crate::error::Error;

/// Why an entry failed, before it is given the layer and entry names.
pub(super) enum Fail {
    Unsafe(String),
    Invalid(String),
    Io(String, io::Error),
    /// The byte stream itself failed (truncated, corrupt, guard tripped).
    Stream(io::Error),
}

impl From<TreeError> for Fail {
    fn from(e: TreeError) -> Self {
        match e {
            TreeError::Unsafe(why) => Fail::Unsafe(why),
            TreeError::Io(what, e) => Fail::Io(what, e),
        }
    }
}

impl Fail {
    pub(super) fn into_error(self, layer: &str, entry: PathBuf) -> Error {
        match self {
            Fail::Unsafe(why) => Error::UnsafePath {
                layer: layer.to_string(),
                entry,
                why,
            },
            Fail::Invalid(why) => Error::Invalid(format!("{layer}: entry {entry:?}: {why}")),
            Fail::Io(what, e) => Error::io(format!("{layer}: entry {entry:?}: {what}"), e),
            Fail::Stream(e) => Error::Invalid(format!(
                "{layer}: corrupt or truncated stream at entry {entry:?}: {e}"
            )),
        }
    }
}

pub(super) type Res<T> = std::result::Result<T, Fail>;
