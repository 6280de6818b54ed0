//! dlv-store: the model repository.
//!
//! `.dlv/` holds `meta/` (sled: version records as rkyv archives, indexes, refs), `objects/`
//! (content-addressed tensor and file objects, BLAKE3 of the decoded content, verified on every
//! read), `staging.json` and a writer lock. Weights, solver and log readers live in [`formats`].

mod error;
pub mod formats;
mod tensor;

pub use error::{Result, StoreError};
pub use tensor::{DType, TensorInfo};
