//! What `evaluate` needs from a training backend. trainer-candle implements [`Trainer`];
//! dql-exec only drives it: the grid, early stopping, and committing the survivors.

use std::collections::BTreeMap;

use dlv_graph::Net;
use dlv_store::{TensorEntry, VersionRecord};

/// A hyper-parameter value of the grid.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Num(f64),
    Str(String),
    Bool(bool),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Num(n) => write!(f, "{n}"),
            ParamValue::Str(s) => write!(f, "{s}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Reads the stored weights of the model being trained.
pub trait WeightSource {
    /// The raw little-endian bytes of one tensor of the record.
    fn tensor(&self, entry: &TensorEntry) -> Result<Vec<u8>, String>;
}

/// One training run: a model under one point of the grid.
pub struct TrainJob<'a> {
    /// The model's version record (its tensors are the starting weights).
    pub record: &'a VersionRecord,
    /// Its network.
    pub net: &'a Net,
    /// Where its weights are read from.
    pub weights: &'a dyn WeightSource,
    /// The configuration named by `with config = "…"`.
    pub config: &'a str,
    /// The grid point: `(parameter, value)`, parameter as written after `config.`
    /// (`base_lr`, `net["conv*"].lr`, `input_data`).
    pub params: &'a [(String, ParamValue)],
}

/// A learned tensor to store.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedTensor {
    pub name: String,
    pub layer: Option<String>,
    pub blob: Option<String>,
    /// safetensors dtype spelling (`F32`).
    pub dtype: String,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// A training backend.
pub trait Trainer {
    /// Prepares a run (builds the model, loads weights and data); no training yet.
    fn start(&self, job: &TrainJob<'_>) -> Result<Box<dyn TrainRun>, String>;
    /// The values tried for `vary PARAM auto`; empty means the backend has no default search
    /// for that parameter (an error in the query).
    fn auto_values(&self, _param: &str) -> Vec<ParamValue> {
        Vec::new()
    }
}

/// A run in progress.
pub trait TrainRun {
    /// Iterations the configuration asks for in all.
    fn total_iters(&self) -> u64;
    /// Trains until iteration `iter` (counted from the start of the run) and reports the
    /// metrics there (`loss`, `accuracy`, ...).
    fn train_until(&mut self, iter: u64) -> Result<BTreeMap<String, f64>, String>;
    /// Ends the run and hands back the learned tensors.
    fn finish(self: Box<Self>) -> Result<Vec<TrainedTensor>, String>;
}
