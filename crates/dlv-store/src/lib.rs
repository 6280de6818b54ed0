//! dlv-store: the model repository.
//!
//! `.dlv/` holds `meta/` (sled: version records as rkyv archives, indexes, staging, saved
//! queries), `objects/` (content-addressed tensor and file objects, BLAKE3 of the decoded content,
//! verified on every read), `config.toml` and `lock` (the writer lock, naming its holder).
//! Weights, solver and log readers live in [`formats`].
//!
//! Invariants: nothing here knows candle, HTTP or DQL; objects are durable before the metadata
//! transaction that references them; every read of disk data is validated (lengths, hashes,
//! bytecheck) and corrupt data is an error, never a panic.

mod checkout;
mod codec;
mod commit;
mod error;
pub mod formats;
mod maint;
mod objects;
mod record;
mod repo;
mod tensor;
#[cfg(test)]
mod testrand;

pub use checkout::{CheckoutOutcome, Precision};
pub use codec::{decode_tensor, encode_tensor, Compression, DeltaMode, EncodedTensor, Encoding, FloatKind, StorageConfig, TensorLayout, CHUNK_ELEMS, DEFAULT_MAX_CHAIN};
pub use commit::{parse_network, CommitOptions, CommitOutcome, NoProgress, Progress, Role, StagedFile};
pub use error::{Result, StoreError};
pub use maint::{FsckReport, GcReport, Problem, RepackReport};
pub use objects::{is_valid_id, Codec, ObjectId, ObjectInfo, ObjectStore, ObjectWriter, PutOutcome, TensorWriter};
pub use record::{FileEntry, HyperEntry, NetworkRef, SeriesEntry, TensorEntry, VersionRecord, RECORD_FORMAT};
pub use repo::{name_matches, short, ListFilter, Repository, Version, VersionSummary, DOT_DIR, REPO_FORMAT};
pub use tensor::{DType, TensorInfo};
