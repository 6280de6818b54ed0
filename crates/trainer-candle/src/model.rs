//! A runnable model built from a dlv-graph DAG: layers in topological order over a table of
//! named blobs, exactly as Caffe runs a net, with the learnable blobs as candle `Var`s.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::var_builder::VarBuilder;
use dlv_graph::{learnable_blob_names, Net, Node, NodeId, Phase};

use crate::conv::{conv2d_cpu, ConvGeom};
use crate::data::Transform;
use crate::error::{Result, TrainError};
use crate::params::{bool_of, f64_of, int_of, loss_weight, msg, mults, pair, str_of, usize_of};
use crate::pool::{pool, PoolMethod, PoolSpec};
use crate::rng::Rng;
use crate::weights::{fill, NamedTensor};

/// Layer types the trainer runs (Caffe spelling).
pub const SUPPORTED_LAYERS: &[&str] = &[
    "Data", "Input", "Convolution", "Pooling", "InnerProduct", "ReLU", "Sigmoid", "TanH", "Dropout", "LRN", "BatchNorm",
    "Scale", "Eltwise", "Concat", "Flatten", "Softmax", "SoftmaxWithLoss", "Accuracy", "Split", "Silence",
];

/// Largest learnable blob the trainer allocates (2^31 elements, 8 GiB of fp32).
const MAX_PARAM_ELEMS: usize = 1 << 31;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EltOp {
    Sum,
    Prod,
    Max,
}

/// What a layer computes, with its parameters resolved.
#[derive(Debug, Clone)]
pub enum Op {
    Data { batch_size: usize, transform: Transform },
    Input { shape: Vec<usize> },
    Conv { weight: usize, bias: Option<usize>, pad: (usize, usize), stride: usize, dilation: usize, groups: usize },
    Pool(PoolSpec),
    InnerProduct { weight: usize, bias: Option<usize>, axis: usize, transpose: bool },
    Relu { slope: f64 },
    Sigmoid,
    Tanh,
    Dropout { ratio: f64 },
    Lrn { size: usize, alpha: f64, beta: f64, k: f64, across: bool },
    BatchNorm { mean: usize, var: usize, factor: usize, use_global: Option<bool>, maf: f64, eps: f64 },
    Scale { weight: usize, bias: Option<usize> },
    Eltwise { op: EltOp, coeffs: Vec<f64> },
    Concat { axis: usize },
    Flatten { axis: usize },
    Softmax { axis: usize },
    SoftmaxLoss { ignore: Option<i64>, weight: f64, valid_norm: bool },
    Accuracy { top_k: usize, ignore: Option<i64> },
    Split,
    Silence,
}

/// One layer of the runnable model.
#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub layer_type: String,
    pub bottoms: Vec<String>,
    pub tops: Vec<String>,
    pub phase: Option<Phase>,
    pub op: Op,
}

impl Layer {
    fn runs_in(&self, phase: Phase) -> bool {
        self.phase.is_none_or(|p| p == phase)
    }
}

/// A learnable (or, for BatchNorm statistics, running) blob.
#[derive(Debug, Clone)]
pub struct Param {
    pub layer: String,
    pub blob: String,
    pub var: Var,
    pub lr_mult: f64,
    pub decay_mult: f64,
    /// False for BatchNorm's running statistics, which the forward pass updates itself.
    pub learnable: bool,
}

impl Param {
    pub fn key(&self) -> String {
        format!("{}.{}", self.layer, self.blob)
    }
}

/// Where initial weights come from.
pub enum Init<'a> {
    /// Every blob from the prototxt fillers.
    Fillers,
    /// Blobs the backend has (by `{layer}.{blob}`) from it, shape-checked; the rest from fillers.
    Backend(&'a VarBuilder<'a>),
}

/// How to build a model.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub device: Device,
    pub dtype: DType,
    pub seed: u64,
    /// Channels, height, width of one example, for Data layers (whose prototxt cannot say).
    pub data_dims: Option<[usize; 3]>,
    /// Overrides every data layer's batch size.
    pub batch_size: Option<usize>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { device: Device::Cpu, dtype: DType::F32, seed: 1, data_dims: None, batch_size: None }
    }
}

/// A data source of the model for one phase: the layer, its tops, batch size and transform.
#[derive(Debug, Clone)]
pub struct DataInput {
    pub layer: String,
    pub tops: Vec<String>,
    pub batch_size: usize,
    pub transform: Transform,
    /// For Input layers: the declared shape.
    pub shape: Option<Vec<usize>>,
}

/// What one forward pass produced.
pub struct Forward {
    pub blobs: HashMap<String, Tensor>,
    /// Weighted sum of the loss layers' outputs, if the phase has any.
    pub loss: Option<Tensor>,
    /// Scalar outputs (loss and accuracy tops) by top name.
    pub outputs: Vec<(String, Tensor)>,
}

/// The model: layers in run order and their parameters.
pub struct Model {
    pub name: String,
    pub layers: Vec<Layer>,
    pub params: Vec<Param>,
    pub device: Device,
    pub dtype: DType,
}

/// Checks that every layer is of a supported type; the first that is not is the error.
pub fn check_supported(net: &Net) -> Result<()> {
    for n in net.nodes() {
        if !SUPPORTED_LAYERS.contains(&n.layer_type.as_str()) {
            return Err(TrainError::UnsupportedLayer { layer: n.name.clone(), layer_type: n.layer_type.clone() });
        }
    }
    Ok(())
}

fn top_k_ignore(node: &Node, key: &str) -> Result<Option<i64>> {
    int_of(node, msg(node, key), "ignore_label")
}

impl Model {
    /// Builds the model of `net`: checks every layer, resolves parameters, infers blob shapes
    /// and initialises the learnable blobs.
    pub fn build(net: &Net, opts: &BuildOptions, init: Init<'_>) -> Result<Model> {
        check_supported(net)?;
        let order: Vec<NodeId> = net.topo_order().map_err(|e| TrainError::Network(e.to_string()))?;
        let mut hints = HashMap::new();
        if let Some(d) = opts.data_dims {
            for n in net.nodes().filter(|n| n.layer_type == "Data") {
                if let Some(t) = n.tops.first() {
                    hints.insert(t.clone(), d.to_vec());
                }
            }
        }
        let info = net.infer_shapes_with(&hints);
        let mut layers = Vec::new();
        let mut params: Vec<Param> = Vec::new();
        let mut rng_seed_used: HashSet<String> = HashSet::new();
        for id in order {
            let Some(node) = net.node(id) else { continue };
            let blob_names = learnable_blob_names(node);
            let mut slots: Vec<usize> = Vec::new();
            if !blob_names.is_empty() {
                let shapes = info.blobs(id).ok_or_else(|| {
                    TrainError::layer(&node.name, "cannot infer the shapes of its parameters (are the input dimensions known?)")
                })?;
                let mut rng = Rng::derive(opts.seed, &node.name);
                if !rng_seed_used.insert(node.name.clone()) {
                    return Err(TrainError::layer(&node.name, "two layers with learnable parameters have this name"));
                }
                for (i, blob) in blob_names.iter().enumerate() {
                    let shape = shapes
                        .iter()
                        .find(|b| b.name == *blob)
                        .map(|b| b.shape.clone())
                        .ok_or_else(|| TrainError::layer(&node.name, format!("cannot infer the shape of its {blob}")))?;
                    let tensor = init_blob(node, blob, &shape, &init, opts, &mut rng)?;
                    let (lr_mult, decay_mult) = mults(node, i);
                    params.push(Param {
                        layer: node.name.clone(),
                        blob: blob.to_string(),
                        var: Var::from_tensor(&tensor)?,
                        lr_mult,
                        decay_mult,
                        learnable: node.layer_type != "BatchNorm",
                    });
                    slots.push(params.len() - 1);
                }
            }
            let op = parse_op(node, &slots, opts)?;
            layers.push(Layer {
                name: node.name.clone(),
                layer_type: node.layer_type.clone(),
                bottoms: node.bottoms.clone(),
                tops: node.tops.clone(),
                phase: node.phase,
                op,
            });
        }
        Ok(Model { name: net.name.clone(), layers, params, device: opts.device.clone(), dtype: opts.dtype })
    }

    /// The data layers that run in `phase`.
    pub fn inputs(&self, phase: Phase) -> Vec<DataInput> {
        self.layers
            .iter()
            .filter(|l| l.runs_in(phase))
            .filter_map(|l| match &l.op {
                Op::Data { batch_size, transform } => Some(DataInput {
                    layer: l.name.clone(),
                    tops: l.tops.clone(),
                    batch_size: *batch_size,
                    transform: transform.clone(),
                    shape: None,
                }),
                Op::Input { shape } => Some(DataInput {
                    layer: l.name.clone(),
                    tops: l.tops.clone(),
                    batch_size: shape.first().copied().unwrap_or(1),
                    transform: Transform::default(),
                    shape: Some(shape.clone()),
                }),
                _ => None,
            })
            .collect()
    }

    /// True when `phase` has a loss layer.
    pub fn has_loss(&self, phase: Phase) -> bool {
        self.layers.iter().any(|l| l.runs_in(phase) && matches!(l.op, Op::SoftmaxLoss { .. }))
    }

    /// Blobs that no layer of `phase` reads: the net's outputs.
    pub fn output_blobs(&self, phase: Phase) -> Vec<String> {
        let read: HashSet<&str> = self
            .layers
            .iter()
            .filter(|l| l.runs_in(phase))
            .flat_map(|l| l.bottoms.iter().filter(|b| !l.tops.contains(b)).map(String::as_str))
            .collect();
        let mut out = Vec::new();
        for l in self.layers.iter().filter(|l| l.runs_in(phase)) {
            for t in &l.tops {
                if !read.contains(t.as_str()) && !out.contains(t) {
                    out.push(t.clone());
                }
            }
        }
        out
    }

    /// Gives data layers whose prototxt names a `mean_file` the per-channel mean of `train`.
    pub fn set_data_means(&mut self, train: &crate::data::Dataset) {
        let mut means = None;
        for l in &mut self.layers {
            if let Op::Data { transform, .. } = &mut l.op {
                if transform.mean_from_data {
                    transform.mean = means.get_or_insert_with(|| train.channel_means()).clone();
                }
            }
        }
    }

    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// Runs the layers of `phase` over `feeds` (the data layers' tops). `train` enables dropout
    /// and BatchNorm's batch statistics (which it also accumulates, as Caffe does).
    pub fn forward(&self, phase: Phase, feeds: &HashMap<String, Tensor>, train: bool, rng: &mut Rng) -> Result<Forward> {
        let mut blobs: HashMap<String, Tensor> = HashMap::new();
        let mut loss: Option<Tensor> = None;
        let mut outputs = Vec::new();
        for l in self.layers.iter().filter(|l| l.runs_in(phase)) {
            let mut xs = Vec::with_capacity(l.bottoms.len());
            for b in &l.bottoms {
                let t = blobs
                    .get(b)
                    .ok_or_else(|| TrainError::layer(&l.name, format!("its input blob '{b}' is produced by no earlier layer of this phase")))?;
                xs.push(t.clone());
            }
            let ys = self.run_layer(l, &xs, feeds, phase, train, rng).map_err(|e| match e {
                TrainError::Candle(c) => TrainError::layer(&l.name, c.to_string()),
                other => other,
            })?;
            for (i, y) in ys.into_iter().enumerate() {
                let Some(top) = l.tops.get(i) else { break };
                match &l.op {
                    Op::SoftmaxLoss { weight, .. } => {
                        if *weight != 0.0 {
                            let w = (&y * *weight)?;
                            loss = Some(match loss {
                                Some(acc) => (acc + w)?,
                                None => w,
                            });
                        }
                        outputs.push((top.clone(), y.clone()));
                    }
                    Op::Accuracy { .. } => outputs.push((top.clone(), y.clone())),
                    _ => {}
                }
                blobs.insert(top.clone(), y);
            }
        }
        Ok(Forward { blobs, loss, outputs })
    }

    fn p(&self, i: usize) -> &Tensor {
        self.params[i].var.as_tensor()
    }

    fn run_layer(&self, l: &Layer, xs: &[Tensor], feeds: &HashMap<String, Tensor>, phase: Phase, train: bool, rng: &mut Rng) -> Result<Vec<Tensor>> {
        let one = |n: usize| -> Result<()> {
            if xs.len() < n {
                return Err(TrainError::layer(&l.name, format!("needs {n} input blob(s), has {}", xs.len())));
            }
            Ok(())
        };
        let y = match &l.op {
            Op::Data { .. } | Op::Input { .. } => {
                let mut out = Vec::new();
                for t in &l.tops {
                    let v = feeds.get(t).ok_or_else(|| TrainError::layer(&l.name, format!("no data was fed for its top '{t}'")))?;
                    out.push(v.clone());
                }
                return Ok(out);
            }
            Op::Conv { weight, bias, pad, stride, dilation, groups } => {
                one(1)?;
                let mut x = xs[0].clone();
                let w = self.p(*weight);
                let cpu = x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64);
                let p = if cpu {
                    0
                } else if pad.0 == pad.1 && *stride == 1 {
                    pad.0
                } else {
                    // candle's backward pass derives one output padding from the height for
                    // both axes; padding here and cropping to the rows and columns that the
                    // strided windows reach makes it zero on both.
                    x = x.pad_with_zeros(2, pad.0, pad.0)?.pad_with_zeros(3, pad.1, pad.1)?;
                    let (kh, kw) = (w.dim(2)?, w.dim(3)?);
                    let (h, wd) = (x.dim(2)?, x.dim(3)?);
                    let span = |len: usize, k: usize| -> Option<usize> {
                        let reach = dilation * (k.max(1) - 1) + 1;
                        (len >= reach).then(|| (len - reach) / stride * stride + reach)
                    };
                    match (span(h, kh), span(wd, kw)) {
                        (Some(uh), Some(uw)) => x = x.narrow(2, 0, uh)?.narrow(3, 0, uw)?,
                        _ => return Err(TrainError::layer(&l.name, format!("kernel {kh}x{kw} does not fit an input of {h}x{wd}"))),
                    }
                    0
                };
                if cpu {
                    let geom = ConvGeom { kernel: (w.dim(2)?, w.dim(3)?), stride: *stride, pad: *pad, dilation: *dilation };
                    return Ok(vec![conv2d_cpu(&x, w, bias.map(|b| self.p(b)), geom, *groups)?]);
                }
                let mut y = x.conv2d(w, p, *stride, *dilation, *groups)?;
                if let Some(b) = bias {
                    let c = self.p(*b).elem_count();
                    y = y.broadcast_add(&self.p(*b).reshape((1, c, 1, 1))?)?;
                }
                y
            }
            Op::Pool(spec) => {
                one(1)?;
                pool(&xs[0], spec)?
            }
            Op::InnerProduct { weight, bias, axis, transpose } => {
                one(1)?;
                let x = &xs[0];
                let lead: usize = x.dims()[..(*axis).min(x.rank())].iter().product();
                let x2 = x.reshape((lead, x.elem_count() / lead.max(1)))?;
                let w = self.p(*weight);
                let mut y = if *transpose { x2.matmul(w)? } else { x2.matmul(&w.t()?)? };
                if let Some(b) = bias {
                    y = y.broadcast_add(self.p(*b))?;
                }
                y
            }
            Op::Relu { slope } => {
                one(1)?;
                if *slope == 0.0 {
                    xs[0].relu()?
                } else {
                    let neg = xs[0].minimum(0.0)?;
                    (xs[0].relu()? + (neg * *slope)?)?
                }
            }
            Op::Sigmoid => {
                one(1)?;
                candle_nn::ops::sigmoid(&xs[0])?
            }
            Op::Tanh => {
                one(1)?;
                xs[0].tanh()?
            }
            Op::Dropout { ratio } => {
                one(1)?;
                if train && phase == Phase::Train && *ratio > 0.0 {
                    let keep = 1.0 - ratio;
                    let mask: Vec<f32> = (0..xs[0].elem_count())
                        .map(|_| if rng.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 })
                        .collect();
                    let mask = Tensor::from_vec(mask, xs[0].shape(), &self.device)?.to_dtype(xs[0].dtype())?;
                    (&xs[0] * mask)?
                } else {
                    xs[0].clone()
                }
            }
            Op::Lrn { size, alpha, beta, k, across } => {
                one(1)?;
                lrn(&xs[0], *size, *alpha, *beta, *k, *across)?
            }
            Op::BatchNorm { mean, var, factor, use_global, maf, eps } => {
                one(1)?;
                let x = &xs[0];
                let c = x.dim(1)?;
                let rank = x.rank();
                let bshape: Vec<usize> = (0..rank).map(|i| if i == 1 { c } else { 1 }).collect();
                let global = use_global.unwrap_or(phase == Phase::Test);
                let (m, v) = if global {
                    let f = self.p(*factor).flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?.first().copied().unwrap_or(0.0);
                    let s = if f == 0.0 { 0.0 } else { 1.0 / f };
                    ((self.p(*mean) * s)?.reshape(bshape.clone())?, (self.p(*var) * s)?.reshape(bshape.clone())?)
                } else {
                    let dims: Vec<usize> = (0..rank).filter(|&i| i != 1).collect();
                    let m = x.mean_keepdim(dims.as_slice())?;
                    let v = x.broadcast_sub(&m)?.sqr()?.mean_keepdim(dims.as_slice())?;
                    if train {
                        let count = x.elem_count() / c.max(1);
                        let unbias = if count > 1 { count as f64 / (count as f64 - 1.0) } else { 1.0 };
                        let pm = &self.params[*mean].var;
                        let pv = &self.params[*var].var;
                        let pf = &self.params[*factor].var;
                        pm.set(&((pm.as_tensor() * *maf)? + m.detach().flatten_all()?)?)?;
                        pv.set(&((pv.as_tensor() * *maf)? + (v.detach().flatten_all()? * unbias)?)?)?;
                        pf.set(&((pf.as_tensor() * *maf)? + 1.0)?)?;
                    }
                    (m, v)
                };
                x.broadcast_sub(&m)?.broadcast_div(&(v + *eps)?.sqrt()?)?
            }
            Op::Scale { weight, bias } => {
                one(1)?;
                let x = &xs[0];
                let c = self.p(*weight).elem_count();
                let bshape: Vec<usize> = (0..x.rank()).map(|i| if i == 1 { c } else { 1 }).collect();
                let mut y = x.broadcast_mul(&self.p(*weight).reshape(bshape.clone())?)?;
                if let Some(b) = bias {
                    y = y.broadcast_add(&self.p(*b).reshape(bshape)?)?;
                }
                y
            }
            Op::Eltwise { op, coeffs } => {
                one(2)?;
                let mut acc = match (op, coeffs.first()) {
                    (EltOp::Sum, Some(c)) => (&xs[0] * *c)?,
                    _ => xs[0].clone(),
                };
                for (i, x) in xs.iter().enumerate().skip(1) {
                    acc = match op {
                        EltOp::Sum => match coeffs.get(i) {
                            Some(c) => (acc + (x * *c)?)?,
                            None => (acc + x)?,
                        },
                        EltOp::Prod => (acc * x)?,
                        EltOp::Max => acc.maximum(x)?,
                    };
                }
                acc
            }
            Op::Concat { axis } => {
                one(1)?;
                Tensor::cat(xs, *axis)?
            }
            Op::Flatten { axis } => {
                one(1)?;
                let x = &xs[0];
                let mut shape: Vec<usize> = x.dims()[..(*axis).min(x.rank())].to_vec();
                shape.push(x.dims()[(*axis).min(x.rank())..].iter().product());
                x.reshape(shape)?
            }
            Op::Softmax { axis } => {
                one(1)?;
                candle_nn::ops::softmax(&xs[0], *axis)?
            }
            Op::SoftmaxLoss { ignore, valid_norm, .. } => {
                one(2)?;
                softmax_loss(&xs[0], &xs[1], *ignore, *valid_norm)?
            }
            Op::Accuracy { top_k, ignore } => {
                one(2)?;
                accuracy(&xs[0], &xs[1], *top_k, *ignore)?
            }
            Op::Split => {
                one(1)?;
                return Ok(vec![xs[0].clone(); l.tops.len()]);
            }
            Op::Silence => return Ok(Vec::new()),
        };
        Ok(vec![y])
    }

    /// Current values of every parameter, as fp32, for storing.
    pub fn tensors(&self) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let t = p.var.as_tensor();
            out.push(NamedTensor {
                layer: p.layer.clone(),
                blob: p.blob.clone(),
                shape: t.dims().to_vec(),
                data: t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            });
        }
        Ok(out)
    }
}

fn init_blob(node: &Node, blob: &str, shape: &[usize], init: &Init<'_>, opts: &BuildOptions, rng: &mut Rng) -> Result<Tensor> {
    let key = format!("{}.{blob}", node.name);
    if let Init::Backend(vb) = init {
        if vb.contains_tensor(&key) {
            let t = vb.get_unchecked_dtype(&key, opts.dtype)?;
            if t.dims() != shape {
                return Err(TrainError::ShapeMismatch { tensor: key, layer: node.name.clone(), expected: shape.to_vec(), found: t.dims().to_vec() });
            }
            return Ok(t.to_device(&opts.device)?);
        }
        tracing::debug!(tensor = %key, "not in the stored version; initialised from the filler");
    }
    let (param, filler_key, default_type, default_value) = match (node.layer_type.as_str(), blob) {
        ("Convolution", "weight") => ("convolution_param", "weight_filler", "constant", 0.0),
        ("Convolution", "bias") => ("convolution_param", "bias_filler", "constant", 0.0),
        ("InnerProduct", "weight") => ("inner_product_param", "weight_filler", "constant", 0.0),
        ("InnerProduct", "bias") => ("inner_product_param", "bias_filler", "constant", 0.0),
        ("Scale", "weight") => ("scale_param", "filler", "constant", 1.0),
        ("Scale", "bias") => ("scale_param", "bias_filler", "constant", 0.0),
        _ => ("", "", "constant", 0.0),
    };
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if count.is_none_or(|c| c > MAX_PARAM_ELEMS) {
        return Err(TrainError::layer(&node.name, format!("its {blob} of shape {shape:?} is too large to train")));
    }
    let filler = msg(node, param).and_then(|m| m.get_msg(filler_key));
    let values = fill(node, filler, default_type, default_value, shape, rng)?;
    Ok(Tensor::from_vec(values, shape, &opts.device)?.to_dtype(opts.dtype)?)
}

fn parse_op(node: &Node, slots: &[usize], opts: &BuildOptions) -> Result<Op> {
    let name = &node.name;
    let slot = |i: usize| slots.get(i).copied();
    let need = |i: usize| slot(i).ok_or_else(|| TrainError::layer(name, "missing learnable blob"));
    Ok(match node.layer_type.as_str() {
        "Data" => {
            let dp = msg(node, "data_param");
            let bs = usize_of(node, dp, "batch_size")?.unwrap_or(1);
            let tp = msg(node, "transform_param");
            let mut mean: Vec<f32> = tp.map(|m| m.get_all("mean_value").filter_map(|v| v.as_f64()).map(|v| v as f32).collect()).unwrap_or_default();
            let mean_from_data = mean.is_empty() && tp.and_then(|m| m.get("mean_file")).is_some();
            if mean_from_data {
                tracing::warn!(layer = %name, "transform_param.mean_file is not read; using the per-channel mean of the training data");
            }
            if bool_of(tp, "mirror") == Some(true) || usize_of(node, tp, "crop_size")?.unwrap_or(0) > 0 {
                tracing::warn!(layer = %name, "transform_param mirror/crop_size are ignored");
            }
            mean.truncate(16);
            Op::Data {
                batch_size: opts.batch_size.unwrap_or(bs).max(1),
                transform: Transform { scale: f64_of(tp, "scale").unwrap_or(1.0) as f32, mean, mean_from_data },
            }
        }
        "Input" => {
            let shape: Vec<usize> = msg(node, "input_param")
                .and_then(|m| m.get_msg("shape"))
                .map(|s| s.get_all("dim").filter_map(|v| v.as_int()).map(|d| d.max(0) as usize).collect())
                .unwrap_or_default();
            Op::Input { shape }
        }
        "Convolution" => {
            let cp = msg(node, "convolution_param");
            let (kh, kw) = pair(node, cp, "kernel_size", "kernel_h", "kernel_w", None)?;
            let pad = pair(node, cp, "pad", "pad_h", "pad_w", Some(0))?;
            let (sh, sw) = pair(node, cp, "stride", "stride_h", "stride_w", Some(1))?;
            let (dh, dw) = pair(node, cp, "dilation", "dilation_h", "dilation_w", Some(1))?;
            if sh != sw || dh != dw {
                return Err(TrainError::layer(name, "unequal vertical and horizontal stride or dilation is not supported"));
            }
            if kh == 0 || kw == 0 || sh == 0 || dh == 0 {
                return Err(TrainError::layer(name, "kernel, stride and dilation must be positive"));
            }
            let groups = usize_of(node, cp, "group")?.unwrap_or(1).max(1);
            Op::Conv { weight: need(0)?, bias: slot(1), pad, stride: sh, dilation: dh, groups }
        }
        "Pooling" => {
            let pp = msg(node, "pooling_param");
            let method = match str_of(pp, "pool").unwrap_or("MAX") {
                "MAX" => PoolMethod::Max,
                "AVE" => PoolMethod::Ave,
                other => return Err(TrainError::layer(name, format!("pooling method {other} is not supported (MAX, AVE)"))),
            };
            let global = bool_of(pp, "global_pooling").unwrap_or(false);
            let kernel = if global { (1, 1) } else { pair(node, pp, "kernel_size", "kernel_h", "kernel_w", None)? };
            let stride = pair(node, pp, "stride", "stride_h", "stride_w", Some(1))?;
            let pad = pair(node, pp, "pad", "pad_h", "pad_w", Some(0))?;
            if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
                return Err(TrainError::layer(name, "kernel and stride must be positive"));
            }
            Op::Pool(PoolSpec { method, kernel, stride, pad, global })
        }
        "InnerProduct" => {
            let ip = msg(node, "inner_product_param");
            Op::InnerProduct {
                weight: need(0)?,
                bias: slot(1),
                axis: usize_of(node, ip, "axis")?.unwrap_or(1),
                transpose: bool_of(ip, "transpose").unwrap_or(false),
            }
        }
        "ReLU" => Op::Relu { slope: f64_of(msg(node, "relu_param"), "negative_slope").unwrap_or(0.0) },
        "Sigmoid" => Op::Sigmoid,
        "TanH" => Op::Tanh,
        "Dropout" => {
            let ratio = f64_of(msg(node, "dropout_param"), "dropout_ratio").unwrap_or(0.5);
            if !(0.0..1.0).contains(&ratio) {
                return Err(TrainError::layer(name, format!("dropout_ratio {ratio} is not in [0, 1)")));
            }
            Op::Dropout { ratio }
        }
        "LRN" => {
            let lp = msg(node, "lrn_param");
            let size = usize_of(node, lp, "local_size")?.unwrap_or(5);
            if size % 2 == 0 {
                return Err(TrainError::layer(name, "local_size must be odd"));
            }
            Op::Lrn {
                size,
                alpha: f64_of(lp, "alpha").unwrap_or(1.0),
                beta: f64_of(lp, "beta").unwrap_or(0.75),
                k: f64_of(lp, "k").unwrap_or(1.0),
                across: str_of(lp, "norm_region").unwrap_or("ACROSS_CHANNELS") != "WITHIN_CHANNEL",
            }
        }
        "BatchNorm" => {
            let bp = msg(node, "batch_norm_param");
            Op::BatchNorm {
                mean: need(0)?,
                var: need(1)?,
                factor: need(2)?,
                use_global: bool_of(bp, "use_global_stats"),
                maf: f64_of(bp, "moving_average_fraction").unwrap_or(0.999),
                eps: f64_of(bp, "eps").unwrap_or(1e-5),
            }
        }
        "Scale" => {
            if node.bottoms.len() > 1 {
                return Err(TrainError::layer(name, "Scale with a second bottom is not supported"));
            }
            let sp = msg(node, "scale_param");
            if usize_of(node, sp, "axis")?.unwrap_or(1) != 1 || int_of(node, sp, "num_axes")?.unwrap_or(1) != 1 {
                return Err(TrainError::layer(name, "only axis 1, num_axes 1 is supported"));
            }
            Op::Scale { weight: need(0)?, bias: slot(1) }
        }
        "Eltwise" => {
            let ep = msg(node, "eltwise_param");
            let op = match str_of(ep, "operation").unwrap_or("SUM") {
                "SUM" => EltOp::Sum,
                "PROD" => EltOp::Prod,
                "MAX" => EltOp::Max,
                other => return Err(TrainError::layer(name, format!("eltwise operation {other} is not supported"))),
            };
            let coeffs: Vec<f64> = ep.map(|m| m.get_all("coeff").filter_map(|v| v.as_f64()).collect()).unwrap_or_default();
            if !coeffs.is_empty() && coeffs.len() != node.bottoms.len() {
                return Err(TrainError::layer(name, "eltwise needs one coeff per bottom"));
            }
            Op::Eltwise { op, coeffs }
        }
        "Concat" => {
            let cp = msg(node, "concat_param");
            let axis = match (int_of(node, cp, "axis")?, usize_of(node, cp, "concat_dim")?) {
                (Some(a), _) if a >= 0 => a as usize,
                (Some(_), _) => return Err(TrainError::layer(name, "negative concat axis is not supported")),
                (None, Some(d)) => d,
                (None, None) => 1,
            };
            Op::Concat { axis }
        }
        "Flatten" => {
            let fp = msg(node, "flatten_param");
            if int_of(node, fp, "end_axis")?.unwrap_or(-1) != -1 {
                return Err(TrainError::layer(name, "only end_axis -1 is supported"));
            }
            Op::Flatten { axis: usize_of(node, fp, "axis")?.unwrap_or(1) }
        }
        "Softmax" => Op::Softmax { axis: usize_of(node, msg(node, "softmax_param"), "axis")?.unwrap_or(1) },
        "SoftmaxWithLoss" => {
            let lp = msg(node, "loss_param");
            let norm = str_of(lp, "normalization").unwrap_or("VALID");
            let valid_norm = match (norm, bool_of(lp, "normalize")) {
                (_, Some(false)) => false,
                ("VALID", _) => true,
                ("BATCH_SIZE" | "FULL", _) => false,
                (other, _) => return Err(TrainError::layer(name, format!("loss normalization {other} is not supported"))),
            };
            Op::SoftmaxLoss { ignore: top_k_ignore(node, "loss_param")?, weight: loss_weight(node, 1.0), valid_norm }
        }
        "Accuracy" => {
            let ap = msg(node, "accuracy_param");
            Op::Accuracy { top_k: usize_of(node, ap, "top_k")?.unwrap_or(1).max(1), ignore: top_k_ignore(node, "accuracy_param")? }
        }
        "Split" => Op::Split,
        "Silence" => Op::Silence,
        other => return Err(TrainError::UnsupportedLayer { layer: name.clone(), layer_type: other.to_string() }),
    })
}

/// Caffe LRN. Across channels: `x * (k + alpha/n * sum_{window} x^2)^-beta`; within a channel:
/// `x * (1 + alpha * mean_{n x n window} x^2)^-beta` (Caffe's WITHIN_CHANNEL uses shift 1).
pub fn lrn(x: &Tensor, size: usize, alpha: f64, beta: f64, k: f64, across: bool) -> candle_core::Result<Tensor> {
    if across && size % 2 == 1 && x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(crate::lrn::LrnAcross { size, alpha, beta, k });
    }
    let sq = x.sqr()?;
    let pre = (size - 1) / 2;
    let post = size - 1 - pre;
    let scale = if across {
        let c = x.dim(1)?;
        let padded = sq.pad_with_zeros(1, pre, post)?;
        let mut acc = padded.narrow(1, 0, c)?;
        for i in 1..size {
            acc = (acc + padded.narrow(1, i, c)?)?;
        }
        ((acc * (alpha / size as f64))? + k)?
    } else {
        let (h, w) = (x.dim(2)?, x.dim(3)?);
        let padded = sq.pad_with_zeros(2, pre, post)?.pad_with_zeros(3, pre, post)?;
        let mut acc: Option<Tensor> = None;
        for dy in 0..size {
            let rows = padded.narrow(2, dy, h)?;
            for dx in 0..size {
                let v = rows.narrow(3, dx, w)?;
                acc = Some(match acc {
                    Some(a) => (a + v)?,
                    None => v,
                });
            }
        }
        let Some(acc) = acc else { candle_core::bail!("empty LRN window") };
        ((acc * (alpha / (size * size) as f64))? + 1.0)?
    };
    x.mul(&scale.powf(-beta)?)
}

/// Scores as `[N, C]` (trailing singleton dimensions dropped) and labels as `[N]` u32.
fn scores_and_labels(scores: &Tensor, labels: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let n = scores.dim(0)?;
    let c = scores.elem_count() / n.max(1);
    if scores.rank() > 2 && scores.dims()[2..].iter().any(|&d| d != 1) {
        candle_core::bail!("spatial scores {:?} are not supported; expected N x C", scores.dims());
    }
    let s = scores.reshape((n, c))?;
    let l = labels.flatten_all()?;
    if l.dim(0)? != n {
        candle_core::bail!("{} labels for {n} score rows", l.dim(0)?);
    }
    Ok((s, l))
}

/// Mean negative log-likelihood of softmax(scores) at the labels, skipping `ignore`.
pub fn softmax_loss(scores: &Tensor, labels: &Tensor, ignore: Option<i64>, valid_norm: bool) -> candle_core::Result<Tensor> {
    let (s, l) = scores_and_labels(scores, labels)?;
    let (n, c) = s.dims2()?;
    let lv: Vec<i64> = l.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let mut keep = Vec::with_capacity(n);
    let mut idx = Vec::with_capacity(n);
    for &v in &lv {
        let ignored = ignore == Some(v);
        if !ignored && (v < 0 || v as usize >= c) {
            candle_core::bail!("label {v} is outside 0..{c}");
        }
        keep.push(if ignored { 0f64 } else { 1.0 });
        idx.push(if ignored { 0u32 } else { v as u32 });
    }
    let count = keep.iter().sum::<f64>();
    let idx = Tensor::from_vec(idx, (n, 1), s.device())?;
    let logp = candle_nn::ops::log_softmax(&s, D::Minus1)?;
    let picked = logp.gather(&idx, 1)?.squeeze(1)?;
    let mask = Tensor::from_vec(keep, n, s.device())?.to_dtype(s.dtype())?;
    let denom = if valid_norm { count.max(1.0) } else { n.max(1) as f64 };
    (picked.mul(&mask)?.sum_all()? * (-1.0 / denom))?.reshape(())
}

/// Fraction of rows whose label is among the `top_k` highest scores (ties count against).
pub fn accuracy(scores: &Tensor, labels: &Tensor, top_k: usize, ignore: Option<i64>) -> candle_core::Result<Tensor> {
    let (s, l) = scores_and_labels(&scores.detach(), &labels.detach())?;
    let (n, c) = s.dims2()?;
    let sv: Vec<f64> = s.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let lv: Vec<i64> = l.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    let (mut right, mut total) = (0usize, 0usize);
    for (i, &lab) in lv.iter().enumerate() {
        if ignore == Some(lab) {
            continue;
        }
        total += 1;
        if lab < 0 || lab as usize >= c {
            continue;
        }
        let row = &sv[i * c..(i + 1) * c];
        let mine = row[lab as usize];
        let better = row.iter().filter(|&&v| v > mine).count();
        if better < top_k {
            right += 1;
        }
    }
    let acc = if total == 0 { 0.0 } else { right as f64 / total as f64 };
    let _ = n;
    Tensor::new(acc, s.device())?.to_dtype(s.dtype())
}
