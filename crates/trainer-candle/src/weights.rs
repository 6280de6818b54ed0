//! Where weights come from and where they go: Caffe fillers with a seed, a candle
//! `SimpleBackend` over the tensors of a stored version (so dlv-store never links candle), and
//! writing trained tensors back as objects.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use dlv_graph::{Message, Node};
use dlv_store::{Precision, Repository, StoreError, TensorEntry, VersionRecord};

use crate::error::{Result, TrainError};
use crate::params::{f64_of, str_of};
use crate::rng::Rng;

/// Initial values for a blob from a Caffe `FillerParameter` (`type` defaults to `constant`).
pub fn fill(node: &Node, filler: Option<&Message>, default_type: &str, default_value: f64, shape: &[usize], rng: &mut Rng) -> Result<Vec<f64>> {
    let kind = str_of(filler, "type").unwrap_or(default_type);
    let count: usize = shape.iter().product();
    let num = shape.first().copied().unwrap_or(1).max(1);
    let fan_in = (count / num).max(1) as f64;
    let fan_out = if shape.len() > 1 { (count / shape[1].max(1)).max(1) as f64 } else { count.max(1) as f64 };
    let n = match str_of(filler, "variance_norm") {
        Some("FAN_OUT") => fan_out,
        Some("AVERAGE") => (fan_in + fan_out) / 2.0,
        _ => fan_in,
    };
    let v = match kind {
        "constant" => vec![f64_of(filler, "value").unwrap_or(default_value); count],
        "uniform" => {
            let (lo, hi) = (f64_of(filler, "min").unwrap_or(0.0), f64_of(filler, "max").unwrap_or(1.0));
            (0..count).map(|_| lo + (hi - lo) * rng.uniform()).collect()
        }
        "gaussian" => {
            let (mean, std) = (f64_of(filler, "mean").unwrap_or(0.0), f64_of(filler, "std").unwrap_or(1.0));
            (0..count).map(|_| mean + std * rng.gaussian()).collect()
        }
        "xavier" => {
            let a = (3.0 / n).sqrt();
            (0..count).map(|_| -a + 2.0 * a * rng.uniform()).collect()
        }
        "msra" => {
            let std = (2.0 / n).sqrt();
            (0..count).map(|_| std * rng.gaussian()).collect()
        }
        other => {
            return Err(TrainError::layer(&node.name, format!("filler type '{other}' is not supported (constant, uniform, gaussian, xavier, msra)")))
        }
    };
    Ok(v)
}

/// The tensors of a stored version, by `{layer}.{blob}` (from the recorded tensor-to-layer
/// match) and by their own names.
pub fn tensor_index(record: &VersionRecord) -> HashMap<String, TensorEntry> {
    let mut map = HashMap::new();
    for t in &record.tensors {
        map.entry(t.name.clone()).or_insert_with(|| t.clone());
    }
    for t in &record.tensors {
        if let (Some(l), Some(b)) = (&t.layer, &t.blob) {
            map.insert(format!("{l}.{b}"), t.clone());
        }
    }
    map
}

/// candle's weight-loading interface over a version's tensors in the repository. A store error
/// (corrupt or missing object) is kept aside so that the caller reports it as itself, not as
/// a candle message.
pub struct StoreBackend<'a> {
    repo: &'a Repository,
    entries: HashMap<String, TensorEntry>,
    error: Arc<Mutex<Option<StoreError>>>,
}

impl<'a> StoreBackend<'a> {
    pub fn new(repo: &'a Repository, record: &VersionRecord) -> StoreBackend<'a> {
        StoreBackend { repo, entries: tensor_index(record), error: Arc::new(Mutex::new(None)) }
    }

    /// A handle on the first store error a `get` met.
    pub fn error_slot(&self) -> Arc<Mutex<Option<StoreError>>> {
        self.error.clone()
    }

    /// The entry that a `{layer}.{blob}` key names, if the version has it.
    pub fn entry(&self, key: &str) -> Option<&TensorEntry> {
        self.entries.get(key)
    }

    fn load(&self, t: &TensorEntry, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let stored = match t.dtype.as_str() {
            "F32" => DType::F32,
            "F64" => DType::F64,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => candle_core::bail!("tensor '{}' has dtype {other}; only float tensors are weights", t.name),
        };
        let mut bytes = Vec::with_capacity(t.bytes as usize);
        if let Err(e) = self.repo.read_tensor(t, Precision::Full, &mut bytes) {
            let msg = e.to_string();
            if let Ok(mut slot) = self.error.lock() {
                slot.get_or_insert(e);
            }
            candle_core::bail!("{msg}");
        }
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let want: usize = shape.iter().product::<usize>() * stored.size_in_bytes();
        if bytes.len() != want {
            candle_core::bail!("tensor '{}' holds {} bytes, its shape needs {want}", t.name, bytes.len());
        }
        Tensor::from_raw_buffer(&bytes, stored, &shape, dev)?.to_dtype(dtype)
    }
}

impl SimpleBackend for StoreBackend<'_> {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("tensor '{name}' has shape {:?}, expected {:?}", t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.entries.get(name) {
            Some(t) => self.load(t, dtype, dev),
            None => Err(candle_core::Error::CannotFindTensor { path: name.to_string() }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// A trained tensor ready to be stored.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub layer: String,
    pub blob: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn name(&self) -> String {
        format!("{}.{}", self.layer, self.blob)
    }
}

/// Streams tensors into the repository's objects (fp32 little-endian, named `{layer}.{blob}`).
pub fn store_tensors(repo: &Repository, tensors: &[NamedTensor]) -> Result<Vec<TensorEntry>> {
    let mut out = Vec::with_capacity(tensors.len());
    for t in tensors {
        let mut w = repo.objects().writer()?;
        let mut buf = Vec::with_capacity(t.data.len().min(1 << 18) * 4);
        for chunk in t.data.chunks(1 << 18) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf).map_err(|source| StoreError::Io { path: repo.objects().dir().to_path_buf(), source })?;
        }
        let put = w.finish()?;
        out.push(TensorEntry {
            name: t.name(),
            layer: Some(t.layer.clone()),
            blob: Some(t.blob.clone()),
            dtype: "F32".into(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            object: put.id,
            bytes: put.len,
        });
    }
    Ok(out)
}
