//! The op traits' implementations, one folder or file per backend.

mod autodiff;
#[cfg(feature = "cube")]
mod cube;
mod flex;

pub(crate) use autodiff::{on_backend, recompute};
