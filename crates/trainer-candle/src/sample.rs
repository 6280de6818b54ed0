//! One timed forward pass of a stored version on a sample input, as plain data (no candle types),
//! for `dlv desc`: the measured CPU time per batch and every blob's activations.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::VarBuilder;
use dlv_graph::{Net, Phase};
use dlv_store::{Repository, VersionRecord};

use crate::error::{Result, TrainError};
use crate::model::{BuildOptions, Init, Model};
use crate::rng::Rng;
use crate::weights::StoreBackend;

/// Values of one example kept per blob at most (larger blobs keep their statistics only).
pub const SAMPLE_VALUES_LIMIT: usize = 1 << 20;

/// One blob of the forward pass.
#[derive(Debug, Clone)]
pub struct BlobSample {
    /// Top name.
    pub name: String,
    /// The layer that produced it.
    pub layer: String,
    pub layer_type: String,
    /// Full shape, batch first.
    pub shape: Vec<usize>,
    /// The first example's values (row-major over `shape[1..]`); empty when larger than
    /// [`SAMPLE_VALUES_LIMIT`].
    pub first: Vec<f32>,
    /// Over the whole batch (finite values).
    pub min: f32,
    pub max: f32,
    pub mean: f32,
}

/// What [`forward_sample`] measured.
#[derive(Debug, Clone)]
pub struct ForwardSample {
    pub batch: usize,
    /// Mean wall-clock seconds of one forward pass of a batch (CPU, after one warm-up pass).
    pub seconds_per_batch: f64,
    /// Timed passes.
    pub runs: usize,
    /// Blobs in the order the layers produce them.
    pub blobs: Vec<BlobSample>,
}

/// Builds `net` with `record`'s weights on the CPU and runs its TEST phase over `batch` copies
/// of `input` (one example, row-major), or of a deterministic pseudo-random input in `[0, 1)`
/// when none is given. The input replaces the TEST phase's data layer, whose shape an `Input`
/// layer declares; a `Data` layer cannot say it (it is the data's), which is an error here.
/// Labels, where a layer reads them, are zeros. An in-place blob (ReLU) is reported once, with
/// its final values, under the last layer that wrote it.
pub fn forward_sample(repo: &Repository, record: &VersionRecord, net: &Net, input: Option<&[f32]>, batch: usize) -> Result<ForwardSample> {
    if record.tensors.is_empty() {
        return Err(TrainError::Config("the version has no weights".into()));
    }
    let batch = batch.max(1);
    let dev = Device::Cpu;
    let backend = StoreBackend::new(repo, record);
    let slot = backend.error_slot();
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone());
    let opts = BuildOptions { device: dev.clone(), dtype: DType::F32, seed: 1, data_dims: None, batch_size: Some(batch) };
    let model = match Model::build(net, &opts, Init::Backend(&vb)) {
        Ok(m) => m,
        Err(e) => {
            if let Some(se) = slot.lock().ok().and_then(|mut s| s.take()) {
                return Err(se.into());
            }
            return Err(e);
        }
    };
    let inputs = model.inputs(Phase::Test);
    let input_layer = match inputs.as_slice() {
        [one] => one.clone(),
        [] => return Err(TrainError::Network("no data or input layer runs in the TEST phase".into())),
        _ => return Err(TrainError::Network("more than one data layer runs in the TEST phase".into())),
    };
    let Some(shape) = input_layer.shape.clone().filter(|s| !s.is_empty()) else {
        return Err(TrainError::layer(&input_layer.layer, "a Data layer does not say the shape of an example (only an Input layer does)"));
    };
    let example: usize = shape[1..].iter().product();
    if example == 0 || example.saturating_mul(batch) > 1 << 28 {
        return Err(TrainError::layer(&input_layer.layer, format!("cannot feed an input of shape {shape:?} in batches of {batch}")));
    }
    let one: Vec<f32> = match input {
        Some(v) if v.len() == example => v.to_vec(),
        Some(v) => return Err(TrainError::Config(format!("the input has {} values, layer '{}' takes {example}", v.len(), input_layer.layer))),
        None => {
            let mut rng = Rng::new(7);
            (0..example).map(|_| rng.uniform() as f32).collect()
        }
    };
    let mut x = Vec::with_capacity(example * batch);
    for _ in 0..batch {
        x.extend_from_slice(&one);
    }
    let mut dims = vec![batch];
    dims.extend_from_slice(&shape[1..]);
    let mut feeds = HashMap::new();
    if let Some(t) = input_layer.tops.first() {
        feeds.insert(t.clone(), Tensor::from_vec(x, dims.as_slice(), &dev)?);
    }
    if let Some(t) = input_layer.tops.get(1) {
        feeds.insert(t.clone(), Tensor::from_vec(vec![0u32; batch], batch, &dev)?);
    }

    let mut rng = Rng::new(0);
    // Warm-up pass (also the one whose activations are reported).
    let out = model.forward(Phase::Test, &feeds, false, &mut rng)?;
    let mut runs = 0usize;
    let t0 = Instant::now();
    while runs < 5 && (runs < 2 || t0.elapsed().as_secs_f64() < 0.25) {
        model.forward(Phase::Test, &feeds, false, &mut rng)?;
        runs += 1;
    }
    let seconds_per_batch = t0.elapsed().as_secs_f64() / runs as f64;

    let mut blobs = Vec::new();
    for l in model.layers.iter().filter(|l| l.phase != Some(Phase::Train)) {
        for top in &l.tops {
            let Some(t) = out.blobs.get(top) else { continue };
            let shape = t.dims().to_vec();
            let all = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let per = if shape.is_empty() { all.len() } else { shape[1..].iter().product::<usize>() };
            let (mut lo, mut hi, mut sum, mut n) = (f32::INFINITY, f32::NEG_INFINITY, 0f64, 0usize);
            for &v in all.iter().filter(|v| v.is_finite()) {
                lo = lo.min(v);
                hi = hi.max(v);
                sum += f64::from(v);
                n += 1;
            }
            let first = if per <= SAMPLE_VALUES_LIMIT { all[..per.min(all.len())].to_vec() } else { Vec::new() };
            let sample = BlobSample {
                name: top.clone(),
                layer: l.name.clone(),
                layer_type: l.layer_type.clone(),
                shape,
                first,
                min: if n > 0 { lo } else { 0.0 },
                max: if n > 0 { hi } else { 0.0 },
                mean: if n > 0 { (sum / n as f64) as f32 } else { 0.0 },
            };
            // An in-place layer (ReLU) overwrites its bottom: keep the latest values.
            match blobs.iter_mut().find(|b: &&mut BlobSample| b.name == *top) {
                Some(b) => *b = sample,
                None => blobs.push(sample),
            }
        }
    }
    Ok(ForwardSample { batch, seconds_per_batch, runs, blobs })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use dlv_store::{CommitOptions, NoProgress};

    use super::*;

    fn testdata(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
    }

    fn commit(dir: &std::path::Path, repo: &Repository, files: &[(&str, &str)], name: &str) -> VersionRecord {
        let mut paths = Vec::new();
        for (src, dst) in files {
            std::fs::copy(testdata(src), dir.join(dst)).expect("copy");
            paths.push(dir.join(dst));
        }
        repo.add(&paths).expect("add");
        let opts = CommitOptions { name: name.into(), message: "m".into(), ..CommitOptions::default() };
        repo.commit(&opts, &NoProgress).expect("commit");
        let id = repo.resolve(name).expect("resolve");
        repo.get(&id).expect("record")
    }

    #[test]
    fn forward_sample_times_and_reports_every_blob() {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = Repository::init(dir.path()).expect("init");
        let rec = commit(dir.path(), &repo, &[("nets/lenet.prototxt", "lenet.prototxt"), ("weights/lenet.safetensors", "lenet.safetensors")], "lenet");
        let net = repo.network(&rec).expect("net").expect("has net");
        let f = forward_sample(&repo, &rec, &net, None, 2).expect("forward");
        assert_eq!(f.batch, 2);
        assert!(f.seconds_per_batch > 0.0 && f.runs >= 2);
        let conv1 = f.blobs.iter().find(|b| b.name == "conv1").expect("conv1");
        assert_eq!(conv1.shape, [2, 20, 24, 24]);
        assert_eq!(conv1.first.len(), 20 * 24 * 24);
        assert!(conv1.min <= conv1.mean && conv1.mean <= conv1.max);
        // Deterministic input, same activations; a given input of the wrong size is an error.
        let g = forward_sample(&repo, &rec, &net, None, 1).expect("forward");
        assert_eq!(g.blobs.iter().find(|b| b.name == "conv1").map(|b| &b.first), Some(&conv1.first));
        assert!(forward_sample(&repo, &rec, &net, Some(&[0.0; 3]), 1).is_err());
        let zeros = forward_sample(&repo, &rec, &net, Some(&[0.0; 784]), 1).expect("zeros");
        assert_eq!(zeros.blobs.len(), f.blobs.len());

        // A Data layer cannot say its example shape; a version without weights is refused.
        let tt = commit(dir.path(), &repo, &[("nets/lenet_train_test.prototxt", "lenet_train_test.prototxt")], "untrained");
        let tt_net = repo.network(&tt).expect("net").expect("has net");
        let e = forward_sample(&repo, &tt, &tt_net, None, 1).expect_err("no weights");
        assert!(e.to_string().contains("no weights"), "{e}");
    }
}
