//! trainer-candle: trains and evaluates dlv model versions with candle.
//!
//! # What it holds
//!
//! - [`Model`]: a runnable model built from a dlv-graph [`Net`](dlv_graph::Net): Caffe layers
//!   (see [`SUPPORTED_LAYERS`]) in topological order over a table of named blobs; phases decide
//!   which layers run. An unsupported layer is an error naming it before anything runs.
//! - Weights enter through candle's `VarBuilder` over [`StoreBackend`], a `SimpleBackend` that
//!   reads a stored version's tensors from the repository (by `{layer}.{blob}` as the store's
//!   tensor-to-layer match recorded it, shape-checked), so dlv-store never links candle; blobs
//!   the version lacks come from the prototxt fillers with a seed.
//! - [`SolverConfig`] / [`Solver`]: Caffe's SGD (momentum, weight decay, lr policies) and Adam,
//!   configured from a version's hyper-parameters, a solver prototxt or TOML file, and
//!   overrides.
//! - [`data`]: MNIST IDX (optionally gzipped), CIFAR-10 binary batches, synthetic data.
//! - [`Session`]: the training loop, one iteration at a time, with tests and metric series;
//!   [`evaluate`] for test passes; [`forward_sample`] times a forward pass and returns every
//!   blob's activations as plain data (`dlv desc`).
//! - [`load_version`], [`solver_config`], [`commit_child`], [`commit_eval`]: the repository side.
//! - [`CandleTrainer`]: dql-exec's `Trainer` for DQL `evaluate`.
//! - Hot layers as our own CPU ops with their own backward: convolution ([`conv2d_cpu`], im2col
//!   + gemm, no input gradient for data) and Caffe pooling ([`pool`]).
//!
//! # Invariants
//!
//! - The only crate of the workspace that links candle.
//! - Nothing reachable from input (prototxt parameters, data files, stored tensors) panics:
//!   errors are [`TrainError`] naming the layer, file or tensor concerned.
//! - Same seed, same data, same device: same weights (our own seeded generator initialises,
//!   shuffles and draws dropout masks).

mod conv;
pub mod data;
mod dql;
mod error;
mod lrn;
#[cfg(test)]
mod gradcheck;
mod model;
mod params;
mod pool;
mod rng;
mod sample;
mod session;
mod solver;
mod store;
mod weights;

pub use conv::{conv2d_cpu, ConvGeom};
pub use dql::{auto_values, CandleRun, CandleTrainer};
pub use error::{Result, TrainError};
pub use model::{
    accuracy, check_supported, lrn, softmax_loss, BuildOptions, DataInput, EltOp, Forward, Init, Layer, Model, Op, Param,
    SUPPORTED_LAYERS,
};
pub use pool::{pool, pool_generic, pooled_len, PoolMethod, PoolSpec};
pub use rng::Rng;
pub use sample::{forward_sample, BlobSample, ForwardSample, SAMPLE_VALUES_LIMIT};
pub use session::{device, evaluate, ActivationStats, EvalStats, Series, Session, SessionOptions, StepStats};
pub use solver::{HyperItem, LrPolicy, Solver, SolverConfig, SolverKind};
pub use store::{commit_child, commit_eval, hyper_items, load_version, solver_config, write_safetensors, CommitInfo, LoadedVersion};
pub use weights::{fill, store_tensors, tensor_index, NamedTensor, StoreBackend};

/// candle's types that appear in this crate's API, so callers need no candle dependency.
pub use candle_core::{DType, Device};
pub use candle_nn::var_builder::VarBuilder;
