//! Integration tests of trainer-candle: forward parity with the NumPy reference, training on
//! the bundled digits, and the repository round trip.

mod dql;
mod golden;
mod store;
mod train;

use std::path::PathBuf;

pub type R<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}
