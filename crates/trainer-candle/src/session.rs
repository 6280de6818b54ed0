//! The training loop: a model, its solver and its data, stepped one iteration at a time so that
//! callers (the CLI, DQL `evaluate` with early stopping) decide when to test, snapshot or stop.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use dlv_graph::{Net, Phase};

use crate::data::{Batcher, Dataset, Datasets};
use crate::error::{Result, TrainError};
use crate::model::{BuildOptions, DataInput, Init, Model};
use crate::rng::Rng;
use crate::solver::{Solver, SolverConfig};
use crate::weights::NamedTensor;

/// Picks a device by name: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal: usize = n.strip_prefix("cuda:").map(|i| i.parse().map_err(|_| TrainError::Device(format!("bad device {n:?}")))).transpose()?.unwrap_or(0);
            if cfg!(feature = "cuda") {
                Device::new_cuda(ordinal).map_err(|e| TrainError::Device(format!("cannot open CUDA device {ordinal}: {e}")))
            } else {
                let _ = ordinal;
                Err(TrainError::Device("this build has no CUDA support (rebuild with --features cuda)".into()))
            }
        }
        other => Err(TrainError::Device(format!("unknown device {other:?} (cpu, cuda, cuda:N)"))),
    }
}

/// A metric over iterations.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// Results of one pass over test data.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalStats {
    /// Examples evaluated.
    pub examples: usize,
    /// Fraction right (mean of the Accuracy layers' first output, or argmax of the net's output
    /// when it has no Accuracy layer), if labels were there to compare with.
    pub accuracy: Option<f64>,
    /// Mean loss (the loss layers, or softmax cross-entropy of the output without one).
    pub loss: Option<f64>,
    /// Every scalar output (loss and accuracy tops), averaged over examples.
    pub outputs: Vec<(String, f64)>,
    /// Per-blob activation statistics of the first batch, when asked for.
    pub activations: Vec<ActivationStats>,
    pub seconds: f64,
}

/// Statistics of one blob's values.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationStats {
    pub blob: String,
    pub shape: Vec<usize>,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Fraction of exact zeros (dead ReLUs).
    pub zeros: f64,
}

/// What one iteration did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Iteration number after the step (1-based count of updates done).
    pub iter: u64,
    pub loss: f64,
    pub lr: f64,
}

/// How a session is set up.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub device: Device,
    pub dtype: DType,
    pub seed: u64,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { device: Device::Cpu, dtype: DType::F32, seed: 1 }
    }
}

/// A model being trained.
pub struct Session {
    pub model: Model,
    solver: Solver,
    data: Datasets,
    train_input: DataInput,
    batcher: Batcher,
    rng: Rng,
    iter: u64,
    window: (f64, u64),
    series: Vec<Series>,
    images: u64,
    train_seconds: f64,
    /// Images and seconds of the steps after the first [`WARMUP_STEPS`].
    steady: (u64, f64),
}

/// Steps left out of the steady-state throughput: the first ones fault in fresh buffers and
/// start thread pools (the PyTorch twin of `cargo xtask bench train` skips as many).
pub const WARMUP_STEPS: u64 = 3;

fn feeds(model: &Model, input: &DataInput, ds: &Dataset, idx: &[usize]) -> Result<HashMap<String, Tensor>> {
    let (x, y) = ds.batch(idx, &input.transform);
    let [c, h, w] = ds.dims;
    let mut out = HashMap::new();
    let xt = Tensor::from_vec(x, (idx.len(), c, h, w), &model.device)?.to_dtype(model.dtype)?;
    if let Some(t) = input.tops.first() {
        out.insert(t.clone(), xt);
    }
    if let Some(t) = input.tops.get(1) {
        out.insert(t.clone(), Tensor::from_vec(y, idx.len(), &model.device)?);
    }
    Ok(out)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?.first().copied().unwrap_or(f64::NAN))
}

impl Session {
    /// Builds the model (weights from `init`), the solver and the batcher.
    pub fn new(net: &Net, init: Init<'_>, config: SolverConfig, data: Datasets, opts: &SessionOptions) -> Result<Session> {
        let seed = config.random_seed.unwrap_or(opts.seed);
        let build = BuildOptions {
            device: opts.device.clone(),
            dtype: opts.dtype,
            seed,
            data_dims: Some(data.train.dims),
            batch_size: config.batch_size,
        };
        let mut model = Model::build(net, &build, init)?;
        model.set_data_means(&data.train);
        let train_input = match model.inputs(Phase::Train).as_slice() {
            [one] => one.clone(),
            [] => return Err(TrainError::Network("no data layer runs in the TRAIN phase".into())),
            _ => return Err(TrainError::Network("more than one data layer runs in the TRAIN phase".into())),
        };
        if train_input.tops.len() < 2 {
            return Err(TrainError::Network(format!("data layer '{}' has no label top to train against", train_input.layer)));
        }
        if !model.has_loss(Phase::Train) {
            return Err(TrainError::Network("no loss layer (SoftmaxWithLoss) runs in the TRAIN phase".into()));
        }
        for input in model.inputs(Phase::Train).iter().chain(model.inputs(Phase::Test).iter()) {
            if input.batch_size.saturating_mul(data.train.example_len()) > 1 << 31 {
                return Err(TrainError::layer(&input.layer, format!("batch_size {} is too large for this data", input.batch_size)));
            }
        }
        if data.train.is_empty() {
            return Err(TrainError::data(&data.source, "the training set is empty"));
        }
        let solver = Solver::new(config, &model.params);
        Ok(Session {
            batcher: Batcher::new(data.train.len(), Some(seed)),
            rng: Rng::derive(seed, "dropout"),
            model,
            solver,
            data,
            train_input,
            iter: 0,
            window: (0.0, 0),
            series: Vec::new(),
            images: 0,
            train_seconds: 0.0,
            steady: (0, 0.0),
        })
    }

    pub fn config(&self) -> &SolverConfig {
        &self.solver.config
    }

    /// Iterations done so far.
    pub fn iter(&self) -> u64 {
        self.iter
    }

    /// Training images processed and seconds spent in training steps.
    pub fn throughput(&self) -> (u64, f64) {
        (self.images, self.train_seconds)
    }

    /// Images and seconds of the steps after the first [`WARMUP_STEPS`]; `None` until there
    /// was one.
    pub fn steady_throughput(&self) -> Option<(u64, f64)> {
        (self.steady.0 > 0).then_some(self.steady)
    }

    pub fn batch_size(&self) -> usize {
        self.train_input.batch_size
    }

    pub fn datasets(&self) -> &Datasets {
        &self.data
    }

    /// One forward/backward/update on the next training batch.
    pub fn step(&mut self) -> Result<StepStats> {
        let t0 = Instant::now();
        let idx = self.batcher.next_batch(self.train_input.batch_size);
        let f = feeds(&self.model, &self.train_input, &self.data.train, &idx)?;
        let out = self.model.forward(Phase::Train, &f, true, &mut self.rng)?;
        let Some(loss) = out.loss else {
            return Err(TrainError::Network("no loss was computed in the TRAIN phase".into()));
        };
        let lv = scalar(&loss)?;
        if !lv.is_finite() {
            return Err(TrainError::Diverged { iter: self.iter, loss: lv });
        }
        let grads = loss.backward()?;
        let lr = self.solver.step(self.iter, &self.model.params, &grads)?;
        self.iter += 1;
        let dt = t0.elapsed().as_secs_f64();
        self.images += idx.len() as u64;
        self.train_seconds += dt;
        if self.iter > WARMUP_STEPS {
            self.steady.0 += idx.len() as u64;
            self.steady.1 += dt;
        }
        self.window.0 += lv;
        self.window.1 += 1;
        let display = self.solver.config.display.max(1);
        if self.iter.is_multiple_of(display) || self.iter == 1 {
            let avg = self.window.0 / self.window.1.max(1) as f64;
            self.push("train/loss", self.iter, avg);
            self.push("lr", self.iter, lr);
            self.window = (0.0, 0);
        }
        Ok(StepStats { iter: self.iter, loss: lv, lr })
    }

    fn push(&mut self, name: &str, iter: u64, v: f64) {
        if !v.is_finite() {
            return;
        }
        match self.series.iter_mut().find(|s| s.name == name) {
            // A test at the last iteration of a test interval and the final test coincide.
            Some(s) if s.points.last().is_some_and(|p| p.0 == iter) => {
                if let Some(p) = s.points.last_mut() {
                    p.1 = v;
                }
            }
            Some(s) => s.points.push((iter, v)),
            None => self.series.push(Series { name: name.to_string(), points: vec![(iter, v)] }),
        }
    }

    /// Tests on the test split (all of it, or `test_iter` batches when that is fewer) and
    /// records `test/*` series at the current iteration.
    pub fn test(&mut self) -> Result<EvalStats> {
        let limit = {
            let c = &self.solver.config;
            let bs = self.model.inputs(Phase::Test).first().map(|i| i.batch_size).unwrap_or(100);
            if c.test_iter > 0 { Some((c.test_iter as usize).saturating_mul(bs)) } else { None }
        };
        let stats = evaluate(&self.model, &self.data.test, limit, false)?;
        let iter = self.iter;
        for (name, v) in &stats.outputs {
            self.push(&format!("test/{name}"), iter, *v);
        }
        if let Some(a) = stats.accuracy {
            if !stats.outputs.iter().any(|(n, _)| n == "accuracy") {
                self.push("test/accuracy", iter, a);
            }
        }
        if let Some(l) = stats.loss {
            if !stats.outputs.iter().any(|(n, _)| n == "loss") {
                self.push("test/loss", iter, l);
            }
        }
        Ok(stats)
    }

    /// Runs `n` more iterations, testing every `test_interval` iterations; `on_step` sees every
    /// step and may stop early by returning false.
    pub fn run(&mut self, n: u64, on_step: &mut dyn FnMut(&StepStats, &Session) -> Result<bool>) -> Result<()> {
        for _ in 0..n {
            let s = self.step()?;
            let ti = self.solver.config.test_interval;
            if ti > 0 && self.iter.is_multiple_of(ti) {
                self.test()?;
            }
            if !on_step(&s, self)? {
                break;
            }
        }
        if self.window.1 > 0 {
            let avg = self.window.0 / self.window.1 as f64;
            let (iter, lr) = (self.iter, self.solver.config.lr(self.iter.saturating_sub(1)));
            self.push("train/loss", iter, avg);
            self.push("lr", iter, lr);
            self.window = (0.0, 0);
        }
        Ok(())
    }

    /// The metric series recorded so far.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Current weights, fp32.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>> {
        self.model.tensors()
    }
}

/// Evaluates `model` in the TEST phase over `data` (the first `limit` examples if given).
pub fn evaluate(model: &Model, data: &Dataset, limit: Option<usize>, activations: bool) -> Result<EvalStats> {
    let t0 = Instant::now();
    let inputs = model.inputs(Phase::Test);
    let input = match inputs.as_slice() {
        [one] => one.clone(),
        [] => return Err(TrainError::Network("no data or input layer runs in the TEST phase".into())),
        _ => return Err(TrainError::Network("more than one data layer runs in the TEST phase".into())),
    };
    if let Some(shape) = &input.shape {
        if shape.len() == 4 && shape[1..] != data.dims[..] {
            return Err(TrainError::Network(format!(
                "input layer '{}' takes {:?} but the data is {:?}",
                input.layer,
                &shape[1..],
                data.dims
            )));
        }
    }
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    if n == 0 {
        return Err(TrainError::Network("no test examples".into()));
    }
    // An Input layer's first dimension is a deployment batch (often 1): test in batches of 100.
    let bs = if input.shape.is_some() { 100 } else { input.batch_size.max(1) };
    let has_acc = model.layers.iter().any(|l| l.phase != Some(Phase::Train) && matches!(l.op, crate::model::Op::Accuracy { .. }));
    let has_loss = model.has_loss(Phase::Test);
    let output_blob = model.output_blobs(Phase::Test).into_iter().find(|b| !input.tops.contains(b));
    let mut sums: Vec<(String, f64)> = Vec::new();
    let (mut acc_sum, mut loss_sum) = (0.0f64, 0.0f64);
    let mut acts = Vec::new();
    let mut rng = Rng::new(0);
    let mut start = 0;
    while start < n {
        let idx: Vec<usize> = (start..(start + bs).min(n)).collect();
        let k = idx.len() as f64;
        // The label top is fed even to nets without one (deploy nets): the label is then
        // compared with the argmax of the output below.
        let mut f = feeds(model, &input, data, &idx)?;
        let labels = Tensor::from_vec(idx.iter().map(|&i| data.labels[i]).collect::<Vec<u32>>(), idx.len(), &model.device)?;
        let out = model.forward(Phase::Test, &f, false, &mut rng)?;
        for (name, t) in &out.outputs {
            let v = scalar(t)? * k;
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += v,
                None => sums.push((name.clone(), v)),
            }
        }
        if !has_acc || !has_loss {
            if let Some(t) = output_blob.as_ref().and_then(|b| out.blobs.get(b)) {
                let probs_given = model.layers.iter().any(|l| matches!(l.op, crate::model::Op::Softmax { .. }) && l.tops.first() == output_blob.as_ref());
                if !has_acc {
                    acc_sum += scalar(&crate::model::accuracy(t, &labels, 1, None)?)? * k;
                }
                if !has_loss {
                    let l = if probs_given {
                        let p = t.flatten_from(1)?.clamp(1e-12, 1.0)?.log()?;
                        let idx_t = labels.reshape((idx.len(), 1))?;
                        (p.gather(&idx_t, 1)?.mean_all()? * -1.0)?
                    } else {
                        crate::model::softmax_loss(t, &labels, None, true)?
                    };
                    loss_sum += scalar(&l)? * k;
                }
            }
        }
        if activations && start == 0 {
            for l in model.layers.iter().filter(|l| l.phase != Some(Phase::Train)) {
                for top in &l.tops {
                    if let Some(t) = out.blobs.get(top) {
                        if t.dtype() == DType::U32 || acts.iter().any(|a: &ActivationStats| a.blob == *top && a.shape == t.dims()) {
                            continue;
                        }
                        acts.push(activation_stats(top, t)?);
                    }
                }
            }
        }
        f.clear();
        start += idx.len();
    }
    let nf = n as f64;
    let outputs: Vec<(String, f64)> = sums.into_iter().map(|(k, v)| (k, v / nf)).collect();
    let accuracy = if has_acc {
        let accs: Vec<f64> = model
            .layers
            .iter()
            .filter(|l| matches!(l.op, crate::model::Op::Accuracy { .. }) && l.phase != Some(Phase::Train))
            .filter_map(|l| l.tops.first())
            .filter_map(|t| outputs.iter().find(|(n, _)| n == t).map(|(_, v)| *v))
            .collect();
        accs.first().copied()
    } else if output_blob.is_some() {
        Some(acc_sum / nf)
    } else {
        None
    };
    let loss = if has_loss {
        let ls: Vec<f64> = model
            .layers
            .iter()
            .filter(|l| matches!(l.op, crate::model::Op::SoftmaxLoss { .. }) && l.phase != Some(Phase::Train))
            .filter_map(|l| l.tops.first())
            .filter_map(|t| outputs.iter().find(|(n, _)| n == t).map(|(_, v)| *v))
            .collect();
        if ls.is_empty() { None } else { Some(ls.iter().sum()) }
    } else if output_blob.is_some() {
        Some(loss_sum / nf)
    } else {
        None
    };
    Ok(EvalStats { examples: n, accuracy, loss, outputs, activations: acts, seconds: t0.elapsed().as_secs_f64() })
}

fn activation_stats(blob: &str, t: &Tensor) -> Result<ActivationStats> {
    let v: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Ok(ActivationStats {
        blob: blob.to_string(),
        shape: t.dims().to_vec(),
        mean,
        std: var.sqrt(),
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        zeros: v.iter().filter(|&&x| x == 0.0).count() as f64 / n,
    })
}
