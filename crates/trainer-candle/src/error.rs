//! The trainer's error type.

use std::path::PathBuf;

/// Everything that can go wrong while building, training or evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A layer type the trainer cannot run, found before any training starts.
    #[error("layer '{layer}' has type '{layer_type}', which the trainer does not support")]
    UnsupportedLayer { layer: String, layer_type: String },
    /// A layer whose parameters the trainer cannot honour (e.g. unequal strides).
    #[error("layer '{layer}': {msg}")]
    Layer { layer: String, msg: String },
    /// The network as a whole cannot be trained or tested (no data layer, no loss, a cycle...).
    #[error("network: {0}")]
    Network(String),
    /// A stored tensor does not fit the layer it is matched to.
    #[error("tensor '{tensor}' has shape {found:?} but layer '{layer}' needs {expected:?}")]
    ShapeMismatch { tensor: String, layer: String, expected: Vec<usize>, found: Vec<usize> },
    /// A data file is missing, truncated or not in the expected format.
    #[error("{}: {msg}", path.display())]
    Data { path: PathBuf, msg: String },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A hyper-parameter or configuration value that cannot be used.
    #[error("config: {0}")]
    Config(String),
    /// The requested device is not available in this build or on this machine.
    #[error("device: {0}")]
    Device(String),
    /// Training diverged (the loss became NaN or infinite).
    #[error("training diverged at iteration {iter}: loss is {loss}")]
    Diverged { iter: u64, loss: f64 },
    /// Reading or writing the repository failed.
    #[error(transparent)]
    Store(#[from] dlv_store::StoreError),
    /// A candle operation failed (shapes that do not fit, a device error).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub(crate) fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> TrainError {
        TrainError::Data { path: path.into(), msg: msg.into() }
    }

    pub(crate) fn layer(layer: &str, msg: impl Into<String>) -> TrainError {
        TrainError::Layer { layer: layer.to_string(), msg: msg.into() }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;
