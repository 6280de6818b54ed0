//! Shape inference: blob shapes of learnable layers and output shapes.
//!
//! Layers run in topological order (definition order for Caffe nets) over a table of blob
//! shapes keyed by blob name, as Caffe does, once per phase when the net has phase-restricted
//! layers. A dimension can be unknown (a Data layer without a dims hint gives `[batch, ?, ?, ?]`);
//! what can still be told is told (conv2's weight needs only conv1's `num_output`). Unknown
//! layer types give unknown outputs. Nothing here fails: bad or missing parameters only make
//! shapes unknown.

use std::collections::HashMap;

use crate::net::{BlobSpec, Net, Node, NodeId, Phase};
use crate::textformat::{Message, Value};

/// A shape whose dimensions may be unknown; `None` for the whole shape means even the rank is
/// unknown.
type Dims = Vec<Option<usize>>;
type Shape = Option<Dims>;

/// What shape inference found for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShapes {
    pub id: NodeId,
    /// Shapes of the bottoms, in order; `None` where not fully known.
    pub inputs: Vec<Option<Vec<usize>>>,
    /// Shapes of the tops, in order; `None` where not fully known.
    pub outputs: Vec<Option<Vec<usize>>>,
    /// Learnable blobs in Caffe blob order, when all their shapes are known. `Some(vec![])` for
    /// a layer that has no learnable blobs.
    pub blobs: Option<Vec<BlobSpec>>,
}

/// Result of [`Net::infer_shapes`]: one entry per node, in definition order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeInfo {
    pub nodes: Vec<NodeShapes>,
}

impl ShapeInfo {
    pub fn node(&self, id: NodeId) -> Option<&NodeShapes> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Learnable blobs of a node, when known.
    pub fn blobs(&self, id: NodeId) -> Option<&[BlobSpec]> {
        self.node(id).and_then(|n| n.blobs.as_deref())
    }

    /// Shape of the `top`-th output of a node, when known.
    pub fn output(&self, id: NodeId, top: usize) -> Option<&[usize]> {
        self.node(id).and_then(|n| n.outputs.get(top)).and_then(|s| s.as_deref())
    }

    /// Number of learnable parameters over the blobs whose shapes are known (saturating).
    pub fn param_count(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.blobs.as_ref())
            .flatten()
            .map(|b| b.shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64)))
            .fold(0u64, u64::saturating_add)
    }
}

/// Layer types that read data and take a batch size from their parameters, with the name of
/// that parameter message.
const DATA_LAYERS: &[(&str, &str)] = &[
    ("Data", "data_param"),
    ("ImageData", "image_data_param"),
    ("MemoryData", "memory_data_param"),
    ("WindowData", "window_data_param"),
    ("HDF5Data", "hdf5_data_param"),
    ("AnnotatedData", "data_param"),
];

/// Names of the learnable blobs of a layer in Caffe blob order, whether or not their shapes can
/// be inferred (for matching Caffe weights, which come in this order).
pub fn learnable_blob_names(node: &Node) -> Vec<&'static str> {
    let bias = |param: &str, default: bool| bool_param(node.params.get_msg(param), "bias_term").unwrap_or(default);
    match node.layer_type.as_str() {
        "Convolution" | "Deconvolution" => {
            if bias("convolution_param", true) {
                vec!["weight", "bias"]
            } else {
                vec!["weight"]
            }
        }
        "InnerProduct" => {
            if bias("inner_product_param", true) {
                vec!["weight", "bias"]
            } else {
                vec!["weight"]
            }
        }
        "Embed" => {
            if bias("embed_param", true) {
                vec!["weight", "bias"]
            } else {
                vec!["weight"]
            }
        }
        "BatchNorm" => vec!["running_mean", "running_var", "scale_factor"],
        "Scale" if node.bottoms.len() < 2 => {
            if bias("scale_param", false) {
                vec!["weight", "bias"]
            } else {
                vec!["weight"]
            }
        }
        "Bias" if node.bottoms.len() < 2 => vec!["bias"],
        "PReLU" => vec!["weight"],
        _ => Vec::new(),
    }
}

impl Net {
    /// Infers shapes from the inputs that the net itself declares (Input layers, net-level
    /// `input`/`input_shape`/`input_dim`, MemoryData and DummyData layers, ImageData with
    /// `new_height`/`new_width`).
    pub fn infer_shapes(&self) -> ShapeInfo {
        self.infer_shapes_with(&HashMap::new())
    }

    /// Infers shapes with hints for top blobs. For a data layer with a batch size (Data,
    /// ImageData, MemoryData, WindowData, HDF5Data), a hint gives the dims of one example
    /// (`[1, 28, 28]`) and the batch size is put in front; for any other layer it is the full
    /// shape of that top and overrides inference.
    pub fn infer_shapes_with(&self, hints: &HashMap<String, Vec<usize>>) -> ShapeInfo {
        let order = self.topo_order().unwrap_or_else(|_| self.node_ids().to_vec());
        let phased = self.nodes().any(|n| n.phase.is_some());
        let phases: Vec<Option<Phase>> = if phased {
            vec![Some(Phase::Train), Some(Phase::Test)]
        } else {
            vec![None]
        };
        let runs: Vec<HashMap<NodeId, Computed>> = phases.iter().map(|&p| self.run(&order, p, hints)).collect();
        let mut info = ShapeInfo::default();
        for &id in self.node_ids() {
            let candidates: Vec<&Computed> = runs.iter().filter_map(|r| r.get(&id)).collect();
            let best = candidates
                .iter()
                .copied()
                .find(|c| c.outputs.iter().all(|o| known(o).is_some()))
                .or_else(|| candidates.first().copied());
            let blobs = candidates.iter().find_map(|c| c.blobs.clone());
            let (inputs, outputs) = match best {
                Some(c) => (c.inputs.iter().map(known).collect(), c.outputs.iter().map(known).collect()),
                None => {
                    let n = self.node(id).map(|n| (n.bottoms.len(), n.tops.len())).unwrap_or((0, 0));
                    (vec![None; n.0], vec![None; n.1])
                }
            };
            info.nodes.push(NodeShapes { id, inputs, outputs, blobs });
        }
        info
    }

    /// Fills `node.blobs` with the inferred learnable blobs wherever their shapes are known;
    /// other nodes keep what they had.
    pub fn set_inferred_blobs(&mut self) {
        let info = self.infer_shapes();
        for n in info.nodes {
            if let (Some(blobs), Some(node)) = (n.blobs, self.node_mut(n.id)) {
                if !blobs.is_empty() {
                    node.blobs = blobs;
                }
            }
        }
    }

    fn run(&self, order: &[NodeId], phase: Option<Phase>, hints: &HashMap<String, Vec<usize>>) -> HashMap<NodeId, Computed> {
        let mut table: HashMap<String, Shape> = net_inputs(&self.header);
        let mut out = HashMap::new();
        for &id in order {
            let Some(node) = self.node(id) else { continue };
            if let (Some(p), Some(q)) = (phase, node.phase) {
                if p != q {
                    continue;
                }
            }
            let inputs: Vec<Shape> = node.bottoms.iter().map(|b| table.get(b).cloned().flatten()).collect();
            let (mut outputs, blobs) = infer_node(node, &inputs, hints);
            outputs.resize(node.tops.len(), None);
            for (top, shape) in node.tops.iter().zip(&outputs) {
                table.insert(top.clone(), shape.clone());
            }
            out.insert(id, Computed { inputs, outputs, blobs });
        }
        out
    }
}

struct Computed {
    inputs: Vec<Shape>,
    outputs: Vec<Shape>,
    blobs: Option<Vec<BlobSpec>>,
}

fn known(s: &Shape) -> Option<Vec<usize>> {
    s.as_ref().and_then(|d| d.iter().copied().collect())
}

fn full(v: &[usize]) -> Dims {
    v.iter().map(|&d| Some(d)).collect()
}

// ---------------------------------------------------------------------------------------------
// Parameter access. Negative or non-integer values read as absent.

fn uint(m: Option<&Message>, key: &str) -> Option<usize> {
    m?.get(key)?.as_int().and_then(|i| usize::try_from(i).ok())
}

fn int(m: Option<&Message>, key: &str) -> Option<i64> {
    m?.get(key)?.as_int()
}

fn uints(m: Option<&Message>, key: &str) -> Vec<usize> {
    m.map(|m| {
        m.get_all(key)
            .filter_map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
            .collect()
    })
    .unwrap_or_default()
}

fn bool_param(m: Option<&Message>, key: &str) -> Option<bool> {
    m?.get(key)?.as_bool()
}

fn enum_param<'a>(m: Option<&'a Message>, key: &str) -> Option<&'a str> {
    m?.get(key)?.as_str()
}

/// Dims of a `BlobShape { dim: ... }` message.
fn blob_shape(m: &Message) -> Dims {
    m.get_all("dim")
        .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect()
}

/// Resolves a possibly negative axis against a rank.
fn axis_index(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then(|| usize::try_from(a).ok()).flatten()
}

fn product(dims: &[Option<usize>]) -> Option<usize> {
    dims.iter().try_fold(1usize, |acc, d| acc.checked_mul((*d)?))
}

/// Shapes declared at the net level: `input` with `input_shape` or `input_dim`.
fn net_inputs(header: &Message) -> HashMap<String, Shape> {
    let mut t = HashMap::new();
    let names: Vec<&str> = header.get_all("input").filter_map(Value::as_str).collect();
    let shapes: Vec<Dims> = header.get_all("input_shape").filter_map(Value::as_msg).map(blob_shape).collect();
    let dims: Vec<Option<usize>> = header
        .get_all("input_dim")
        .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let shape = if !shapes.is_empty() {
            shapes.get(i).cloned()
        } else {
            dims.get(i * 4..i * 4 + 4).map(<[Option<usize>]>::to_vec)
        };
        t.insert(name.to_string(), shape);
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Per-layer rules

/// Outputs (one per top, possibly fewer) and learnable blobs of one layer.
fn infer_node(node: &Node, inputs: &[Shape], hints: &HashMap<String, Vec<usize>>) -> (Vec<Shape>, Option<Vec<BlobSpec>>) {
    let p = &node.params;
    let first = inputs.first().cloned().flatten();
    let same = || node.tops.iter().map(|_| first.clone()).collect::<Vec<Shape>>();
    let no_blobs = Some(Vec::new());
    let t = node.layer_type.as_str();
    let (mut outputs, blobs): (Vec<Shape>, Option<Vec<BlobSpec>>) = match t {
        "Input" => {
            let shapes: Vec<Dims> = p
                .get_msg("input_param")
                .map(|ip| ip.get_all("shape").filter_map(Value::as_msg).map(blob_shape).collect())
                .unwrap_or_default();
            let outs = (0..node.tops.len())
                .map(|i| if shapes.len() == 1 { shapes.first().cloned() } else { shapes.get(i).cloned() })
                .collect();
            (outs, no_blobs)
        }
        "DummyData" => (dummy_data(p.get_msg("dummy_data_param"), node.tops.len()), no_blobs),
        _ if DATA_LAYERS.iter().any(|(n, _)| *n == t) => (data_layer(node, hints), no_blobs),
        "Convolution" | "Deconvolution" => conv(node, first.as_ref()),
        "Pooling" => (node.tops.iter().map(|_| pool(p.get_msg("pooling_param"), first.as_ref())).collect(), no_blobs),
        "InnerProduct" => inner_product(p.get_msg("inner_product_param"), first.as_ref()),
        "Embed" => {
            let ep = p.get_msg("embed_param");
            let n = uint(ep, "num_output");
            let k = uint(ep, "input_dim");
            let out = first.as_ref().map(|d| {
                let mut d = d.clone();
                d.push(n);
                d
            });
            let mut blobs = vec![(String::from("weight"), vec![k, n])];
            if bool_param(ep, "bias_term").unwrap_or(true) {
                blobs.push(("bias".into(), vec![n]));
            }
            (vec![out], blob_list(blobs))
        }
        "ReLU" | "Sigmoid" | "TanH" | "Dropout" | "LRN" | "Softmax" | "Power" | "AbsVal" | "BNLL" | "ELU"
        | "Exp" | "Log" | "Threshold" | "MVN" | "Split" | "Clip" | "Swish" | "LogSoftmax" | "GELU" => (same(), no_blobs),
        "BatchNorm" => {
            let c = channels(first.as_ref(), 1);
            let blobs = vec![
                ("running_mean".to_string(), vec![c]),
                ("running_var".into(), vec![c]),
                ("scale_factor".into(), vec![Some(1)]),
            ];
            (same(), blob_list(blobs))
        }
        "Scale" | "Bias" => {
            let param = if t == "Scale" { "scale_param" } else { "bias_param" };
            let sp = p.get_msg(param);
            let blobs = if inputs.len() >= 2 {
                no_blobs
            } else {
                let shape = scale_shape(sp, first.as_ref());
                let mut b = Vec::new();
                if t == "Scale" {
                    b.push(("weight".to_string(), shape.clone()));
                    if bool_param(sp, "bias_term").unwrap_or(false) {
                        b.push(("bias".into(), shape));
                    }
                } else {
                    b.push(("bias".to_string(), shape));
                }
                b.into_iter()
                    .map(|(name, s)| s.and_then(|s| s.into_iter().collect::<Option<Vec<usize>>>()).map(|shape| BlobSpec { name, shape }))
                    .collect()
            };
            (same(), blobs)
        }
        "PReLU" => {
            let shared = bool_param(p.get_msg("prelu_param"), "channel_shared").unwrap_or(false);
            let c = if shared { Some(1) } else { channels(first.as_ref(), 1) };
            (same(), blob_list(vec![("weight".into(), vec![c])]))
        }
        "Eltwise" => {
            // All bottoms have one shape; take the most known one.
            let best = inputs
                .iter()
                .flatten()
                .max_by_key(|d| d.iter().filter(|x| x.is_some()).count())
                .cloned();
            (vec![best], no_blobs)
        }
        "Concat" => (vec![concat(p.get_msg("concat_param"), inputs)], no_blobs),
        "Flatten" => (vec![flatten(p.get_msg("flatten_param"), first.as_ref())], no_blobs),
        "Reshape" => (vec![reshape(p.get_msg("reshape_param"), first.as_ref())], no_blobs),
        "SoftmaxWithLoss" | "EuclideanLoss" | "SigmoidCrossEntropyLoss" | "HingeLoss" | "InfogainLoss"
        | "MultinomialLogisticLoss" | "ContrastiveLoss" => {
            let mut outs = vec![Some(Vec::new())];
            if node.tops.len() > 1 {
                outs.push(first.clone());
            }
            (outs, no_blobs)
        }
        "Accuracy" => {
            let mut outs = vec![Some(Vec::new())];
            if node.tops.len() > 1 {
                let axis = int(p.get_msg("accuracy_param"), "axis").unwrap_or(1);
                let classes = first
                    .as_ref()
                    .and_then(|d| axis_index(axis, d.len()).and_then(|a| d.get(a).copied()))
                    .flatten();
                outs.push(Some(vec![classes]));
            }
            (outs, no_blobs)
        }
        "Silence" => (Vec::new(), no_blobs),
        _ => (Vec::new(), None),
    };
    // Hints for tops of layers other than batch data layers are full shapes.
    if !DATA_LAYERS.iter().any(|(n, _)| *n == t) {
        outputs.resize(node.tops.len(), None);
        for (top, out) in node.tops.iter().zip(outputs.iter_mut()) {
            if let Some(h) = hints.get(top) {
                *out = Some(full(h));
            }
        }
    }
    (outputs, blobs)
}

/// Learnable blobs when all their dims are known.
fn blob_list(blobs: Vec<(String, Dims)>) -> Option<Vec<BlobSpec>> {
    blobs
        .into_iter()
        .map(|(name, d)| d.into_iter().collect::<Option<Vec<usize>>>().map(|shape| BlobSpec { name, shape }))
        .collect()
}

fn channels(s: Option<&Dims>, axis: usize) -> Option<usize> {
    match s {
        Some(d) if d.len() == 1 => Some(1),
        Some(d) => d.get(axis).copied().flatten(),
        None => None,
    }
}

fn scale_shape(sp: Option<&Message>, input: Option<&Dims>) -> Option<Dims> {
    let d = input?;
    let axis = axis_index(int(sp, "axis").unwrap_or(1), d.len())?;
    let num_axes = int(sp, "num_axes").unwrap_or(1);
    let end = if num_axes < 0 { d.len() } else { axis.checked_add(usize::try_from(num_axes).ok()?)? };
    d.get(axis..end).map(<[Option<usize>]>::to_vec)
}

fn dummy_data(dp: Option<&Message>, tops: usize) -> Vec<Shape> {
    let Some(dp) = dp else { return vec![None; tops] };
    let shapes: Vec<Dims> = dp.get_all("shape").filter_map(Value::as_msg).map(blob_shape).collect();
    if !shapes.is_empty() {
        return (0..tops)
            .map(|i| if shapes.len() == 1 { shapes.first().cloned() } else { shapes.get(i).cloned() })
            .collect();
    }
    let lists: Vec<Vec<usize>> = ["num", "channels", "height", "width"].iter().map(|k| uints(Some(dp), k)).collect();
    (0..tops)
        .map(|i| {
            lists
                .iter()
                .map(|l| if l.len() == 1 { l.first().copied() } else { l.get(i).copied() })
                .map(Some)
                .collect::<Option<Dims>>()
        })
        .collect()
}

/// Data layers: `[batch, C, H, W]` for the data top (C, H, W from parameters, hints, crop
/// size), `[batch]` for the label top.
fn data_layer(node: &Node, hints: &HashMap<String, Vec<usize>>) -> Vec<Shape> {
    let t = node.layer_type.as_str();
    let param = DATA_LAYERS.iter().find(|(n, _)| *n == t).map(|(_, p)| *p).unwrap_or("data_param");
    let dp = node.params.get_msg(param);
    let batch = uint(dp, "batch_size");
    let crop = uint(node.params.get_msg("transform_param"), "crop_size")
        .or_else(|| uint(dp, "crop_size"))
        .filter(|&c| c > 0);
    let mut outs = Vec::new();
    for (i, top) in node.tops.iter().enumerate() {
        let hint = hints.get(top);
        let shape = if let (Some(h), None) = (hint, batch) {
            // No batch size to prepend: the hint is the full shape.
            Some(full(h))
        } else if i == 0 {
            let mut d: Dims = match (t, hint) {
                (_, Some(h)) => full(h),
                ("MemoryData", None) => vec![uint(dp, "channels"), uint(dp, "height"), uint(dp, "width")],
                ("ImageData", None) => {
                    let color = bool_param(dp, "is_color").unwrap_or(true);
                    let nh = uint(dp, "new_height").filter(|&h| h > 0);
                    let nw = uint(dp, "new_width").filter(|&w| w > 0);
                    vec![Some(if color { 3 } else { 1 }), nh, nw]
                }
                ("WindowData", None) => vec![Some(3), None, None],
                _ => vec![None, None, None],
            };
            if let Some(c) = crop {
                if d.len() == 3 {
                    d[1] = Some(c);
                    d[2] = Some(c);
                }
            }
            d.insert(0, batch);
            Some(d)
        } else {
            let mut d = hint.map(|h| full(h)).unwrap_or_default();
            d.insert(0, batch);
            Some(d)
        };
        outs.push(shape);
    }
    outs
}

/// Per-spatial-axis value of a repeated conv parameter with optional `_h`/`_w` overrides.
fn spatial(cp: Option<&Message>, key: &str, default: Option<usize>, n: usize) -> Vec<Option<usize>> {
    let (hk, wk) = match key {
        "kernel_size" => ("kernel_h", "kernel_w"),
        "stride" => ("stride_h", "stride_w"),
        "pad" => ("pad_h", "pad_w"),
        _ => ("", ""),
    };
    if n == 2 && !hk.is_empty() {
        let (h, w) = (uint(cp, hk), uint(cp, wk));
        if h.is_some() || w.is_some() {
            return vec![h, w];
        }
    }
    let list = uints(cp, key);
    (0..n)
        .map(|i| match list.len() {
            0 => default,
            1 => list.first().copied(),
            _ => list.get(i).copied(),
        })
        .collect()
}

fn conv(node: &Node, input: Option<&Dims>) -> (Vec<Shape>, Option<Vec<BlobSpec>>) {
    let cp = node.params.get_msg("convolution_param");
    let deconv = node.layer_type == "Deconvolution";
    let num_output = uint(cp, "num_output");
    let group = uint(cp, "group").unwrap_or(1).max(1);
    let bias = bool_param(cp, "bias_term").unwrap_or(true);
    let Some(d) = input else {
        return (node.tops.iter().map(|_| None).collect(), None);
    };
    let Some(axis) = axis_index(int(cp, "axis").unwrap_or(1), d.len()) else {
        return (node.tops.iter().map(|_| None).collect(), None);
    };
    let n = d.len() - axis - 1;
    let kernel = spatial(cp, "kernel_size", None, n);
    let stride = spatial(cp, "stride", Some(1), n);
    let pad = spatial(cp, "pad", Some(0), n);
    let dilation = spatial(cp, "dilation", Some(1), n);
    let mut out: Dims = d.get(..axis).map(<[Option<usize>]>::to_vec).unwrap_or_default();
    out.push(num_output);
    for i in 0..n {
        let size = (|| {
            let x = d.get(axis + 1 + i).copied().flatten()?;
            let (k, s, p, dl) = (kernel.get(i).copied().flatten()?, stride.get(i).copied().flatten()?, pad.get(i).copied().flatten()?, dilation.get(i).copied().flatten()?);
            if s == 0 || k == 0 || dl == 0 {
                return None;
            }
            let ext = dl.checked_mul(k - 1)?.checked_add(1)?;
            if deconv {
                s.checked_mul(x.checked_sub(1)?)?.checked_add(ext)?.checked_sub(p.checked_mul(2)?)
            } else {
                let span = x.checked_add(p.checked_mul(2)?)?.checked_sub(ext)?;
                Some(span / s + 1)
            }
        })();
        out.push(size);
    }
    let c_in = d.get(axis).copied().flatten();
    let per_group = |c: Option<usize>| c.filter(|c| c % group == 0).map(|c| c / group);
    let mut wshape: Dims = if deconv {
        vec![c_in, per_group(num_output)]
    } else {
        vec![num_output, per_group(c_in)]
    };
    wshape.extend(kernel.iter().copied());
    let mut blobs = vec![("weight".to_string(), wshape)];
    if bias {
        blobs.push(("bias".into(), vec![num_output]));
    }
    (node.tops.iter().map(|_| Some(out.clone())).collect(), blob_list(blobs))
}

fn pool(pp: Option<&Message>, input: Option<&Dims>) -> Shape {
    let d = input?;
    if d.len() != 4 {
        return None;
    }
    let (h, w) = (d.get(2).copied().flatten(), d.get(3).copied().flatten());
    let mut out: Dims = d.get(..2).map(<[Option<usize>]>::to_vec).unwrap_or_default();
    if bool_param(pp, "global_pooling").unwrap_or(false) {
        out.extend([Some(1), Some(1)]);
        return Some(out);
    }
    let ks = uint(pp, "kernel_size");
    let (kh, kw) = (uint(pp, "kernel_h").or(ks), uint(pp, "kernel_w").or(ks));
    let st = uint(pp, "stride").unwrap_or(1);
    let (sh, sw) = (uint(pp, "stride_h").unwrap_or(st), uint(pp, "stride_w").unwrap_or(st));
    let pd = uint(pp, "pad").unwrap_or(0);
    let (ph, pw) = (uint(pp, "pad_h").unwrap_or(pd), uint(pp, "pad_w").unwrap_or(pd));
    let floor = enum_param(pp, "round_mode") == Some("FLOOR");
    let any_pad = ph > 0 || pw > 0;
    let dim = |x: Option<usize>, k: Option<usize>, s: usize, p: usize| -> Option<usize> {
        let (x, k) = (x?, k?);
        if s == 0 || k == 0 {
            return None;
        }
        let span = x.checked_add(p.checked_mul(2)?)?.checked_sub(k)?;
        let mut o = if floor { span / s + 1 } else { span.div_ceil(s) + 1 };
        // Caffe: make sure the last pooling window starts inside the image (plus padding).
        if any_pad && (o - 1).saturating_mul(s) >= x.saturating_add(p) {
            o -= 1;
        }
        Some(o)
    };
    out.push(dim(h, kh, sh, ph));
    out.push(dim(w, kw, sw, pw));
    Some(out)
}

fn inner_product(ip: Option<&Message>, input: Option<&Dims>) -> (Vec<Shape>, Option<Vec<BlobSpec>>) {
    let n = uint(ip, "num_output");
    let bias = bool_param(ip, "bias_term").unwrap_or(true);
    let transpose = bool_param(ip, "transpose").unwrap_or(false);
    let Some(d) = input else { return (vec![None], None) };
    let Some(axis) = axis_index(int(ip, "axis").unwrap_or(1), d.len()) else {
        return (vec![None], None);
    };
    let k = d.get(axis..).and_then(product);
    let mut out: Dims = d.get(..axis).map(<[Option<usize>]>::to_vec).unwrap_or_default();
    out.push(n);
    let w = if transpose { vec![k, n] } else { vec![n, k] };
    let mut blobs = vec![("weight".to_string(), w)];
    if bias {
        blobs.push(("bias".into(), vec![n]));
    }
    (vec![Some(out)], blob_list(blobs))
}

fn concat(cp: Option<&Message>, inputs: &[Shape]) -> Shape {
    let first = inputs.first()?.as_ref()?;
    let axis_param = int(cp, "axis").or_else(|| int(cp, "concat_dim")).unwrap_or(1);
    let axis = axis_index(axis_param, first.len())?;
    let mut out = first.clone();
    let mut total = Some(0usize);
    for s in inputs {
        let Some(s) = s else { return None };
        if s.len() != first.len() {
            return None;
        }
        total = match (total, s.get(axis).copied().flatten()) {
            (Some(t), Some(x)) => t.checked_add(x),
            _ => None,
        };
        for (i, d) in s.iter().enumerate() {
            if i != axis && out.get(i).copied().flatten().is_none() {
                if let Some(o) = out.get_mut(i) {
                    *o = *d;
                }
            }
        }
    }
    if let Some(o) = out.get_mut(axis) {
        *o = total;
    }
    Some(out)
}

fn flatten(fp: Option<&Message>, input: Option<&Dims>) -> Shape {
    let d = input?;
    let start = axis_index(int(fp, "axis").unwrap_or(1), d.len())?;
    let end = axis_index(int(fp, "end_axis").unwrap_or(-1), d.len())?;
    if end < start {
        return None;
    }
    let mut out: Dims = d.get(..start)?.to_vec();
    out.push(product(d.get(start..=end)?));
    out.extend_from_slice(d.get(end + 1..)?);
    Some(out)
}

/// Reshape over the whole shape (`axis: 0`, `num_axes: -1`): `0` copies a dim, one `-1` is
/// inferred.
fn reshape(rp: Option<&Message>, input: Option<&Dims>) -> Shape {
    let d = input?;
    let rp = rp?;
    if int(Some(rp), "axis").unwrap_or(0) != 0 || int(Some(rp), "num_axes").unwrap_or(-1) != -1 {
        return None;
    }
    let spec: Vec<i64> = rp.get_msg("shape")?.get_all("dim").filter_map(Value::as_int).collect();
    let mut out: Dims = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            0 => out.push(d.get(i).copied().flatten()),
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(None);
            }
            s if s > 0 => out.push(usize::try_from(s).ok()),
            _ => return None,
        }
    }
    if let Some(i) = infer_at {
        let total = product(d);
        let rest = out.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, x)| *x).collect::<Vec<_>>();
        let rest = product(&rest);
        if let (Some(t), Some(r), Some(slot)) = (total, rest, out.get_mut(i)) {
            if r > 0 && t % r == 0 {
                *slot = Some(t / r);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(src: &str) -> Net {
        match Net::from_prototxt(src, "t") {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    fn out(n: &Net, info: &ShapeInfo, name: &str) -> Option<Vec<usize>> {
        n.find(name).and_then(|id| info.output(id, 0)).map(<[usize]>::to_vec)
    }

    fn blobs(n: &Net, info: &ShapeInfo, name: &str) -> Vec<(String, Vec<usize>)> {
        n.find(name)
            .and_then(|id| info.blobs(id))
            .map(|b| b.iter().map(|b| (b.name.clone(), b.shape.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn conv_pool_ip() {
        let n = net(r#"input: "data" input_shape { dim: 2 dim: 3 dim: 32 dim: 32 }
            layer { name: "c" type: "Convolution" bottom: "data" top: "c"
                    convolution_param { num_output: 8 kernel_size: 5 pad: 2 stride: 1 group: 1 } }
            layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
            layer { name: "g" type: "Pooling" bottom: "p" top: "g" pooling_param { pool: AVE global_pooling: true } }
            layer { name: "f" type: "InnerProduct" bottom: "p" top: "f" inner_product_param { num_output: 10 bias_term: false } }
            layer { name: "d" type: "Deconvolution" bottom: "c" top: "d" convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 2 } }"#);
        let info = n.infer_shapes();
        assert_eq!(out(&n, &info, "c"), Some(vec![2, 8, 32, 32]));
        // Caffe rounds pooling up: ceil((32 - 3) / 2) + 1 = 16.
        assert_eq!(out(&n, &info, "p"), Some(vec![2, 8, 16, 16]));
        assert_eq!(out(&n, &info, "g"), Some(vec![2, 8, 1, 1]));
        assert_eq!(out(&n, &info, "f"), Some(vec![2, 10]));
        assert_eq!(out(&n, &info, "d"), Some(vec![2, 4, 64, 64]));
        assert_eq!(blobs(&n, &info, "c"), [("weight".into(), vec![8, 3, 5, 5]), ("bias".into(), vec![8])]);
        assert_eq!(blobs(&n, &info, "f"), [("weight".to_string(), vec![10, 8 * 16 * 16])]);
        assert_eq!(blobs(&n, &info, "d"), [("weight".into(), vec![8, 2, 4, 4]), ("bias".into(), vec![4])]);
    }

    #[test]
    fn pooling_with_padding_drops_window_outside() {
        let pp = crate::textformat::parse("kernel_size: 3 stride: 2 pad: 1", "t").ok();
        let d = vec![Some(1), Some(1), Some(4), Some(4)];
        // ceil((4 + 2 - 3) / 2) + 1 = 3; (3 - 1) * 2 = 4 >= 4 + 1? no, stays 3.
        assert_eq!(pool(pp.as_ref(), Some(&d)), Some(vec![Some(1), Some(1), Some(3), Some(3)]));
        let d = vec![Some(1), Some(1), Some(5), Some(5)];
        let pp = crate::textformat::parse("kernel_size: 2 stride: 2 pad: 1", "t").ok();
        // ceil((5 + 2 - 2) / 2) + 1 = 4; (4 - 1) * 2 = 6 >= 5 + 1 -> 3.
        assert_eq!(pool(pp.as_ref(), Some(&d)), Some(vec![Some(1), Some(1), Some(3), Some(3)]));
    }

    #[test]
    fn batchnorm_scale_prelu_concat_eltwise_flatten_reshape() {
        let n = net(r#"layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 dim: 5 dim: 5 } } }
            layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" }
            layer { name: "sc" type: "Scale" bottom: "x" top: "x" scale_param { bias_term: true } }
            layer { name: "pr" type: "PReLU" bottom: "x" top: "x" }
            layer { name: "cat" type: "Concat" bottom: "x" bottom: "x" top: "cat" }
            layer { name: "sum" type: "Eltwise" bottom: "x" bottom: "x" top: "sum" }
            layer { name: "fl" type: "Flatten" bottom: "cat" top: "fl" }
            layer { name: "rs" type: "Reshape" bottom: "cat" top: "rs" reshape_param { shape { dim: 0 dim: -1 } } }
            layer { name: "u" type: "Mystery" bottom: "x" top: "u" }
            layer { name: "after" type: "ReLU" bottom: "u" top: "v" }"#);
        let info = n.infer_shapes();
        assert_eq!(blobs(&n, &info, "bn").len(), 3);
        assert_eq!(blobs(&n, &info, "bn")[2], ("scale_factor".to_string(), vec![1]));
        assert_eq!(blobs(&n, &info, "sc"), [("weight".into(), vec![6]), ("bias".into(), vec![6])]);
        assert_eq!(blobs(&n, &info, "pr"), [("weight".to_string(), vec![6])]);
        assert_eq!(out(&n, &info, "cat"), Some(vec![4, 12, 5, 5]));
        assert_eq!(out(&n, &info, "sum"), Some(vec![4, 6, 5, 5]));
        assert_eq!(out(&n, &info, "fl"), Some(vec![4, 300]));
        assert_eq!(out(&n, &info, "rs"), Some(vec![4, 300]));
        assert_eq!(out(&n, &info, "u"), None);
        assert_eq!(out(&n, &info, "after"), None);
        assert_eq!(n.find("u").and_then(|id| info.node(id)).map(|s| s.blobs.clone()), Some(None));
    }

    #[test]
    fn data_layer_with_and_without_hints() {
        let n = net(r#"layer { name: "d" type: "Data" top: "data" top: "label" data_param { batch_size: 8 } }
            layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }
            layer { name: "c2" type: "Convolution" bottom: "c" top: "c2" convolution_param { num_output: 2 kernel_size: 1 } }"#);
        let info = n.infer_shapes();
        assert_eq!(out(&n, &info, "c"), None);
        assert!(n.find("c").and_then(|id| info.blobs(id)).is_none());
        // conv2 needs only conv1's num_output.
        assert_eq!(blobs(&n, &info, "c2"), [("weight".into(), vec![2, 4, 1, 1]), ("bias".into(), vec![2])]);
        let hints = HashMap::from([("data".to_string(), vec![3, 10, 10])]);
        let info = n.infer_shapes_with(&hints);
        assert_eq!(out(&n, &info, "d"), Some(vec![8, 3, 10, 10]));
        assert_eq!(n.find("d").and_then(|id| info.output(id, 1)).map(<[usize]>::to_vec), Some(vec![8]));
        assert_eq!(out(&n, &info, "c"), Some(vec![8, 4, 8, 8]));
    }

    #[test]
    fn nonsense_parameters_give_unknown_not_panics() {
        let n = net(r#"input: "x" input_dim: 1 input_dim: 1 input_dim: 2 input_dim: 2
            layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: -3 kernel_size: 9 stride: 0 group: 0 axis: 7 } }
            layer { name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { kernel_size: 0 stride: 0 } }
            layer { name: "q" type: "Pooling" bottom: "x" top: "q" pooling_param { kernel_size: 5 } }
            layer { name: "i" type: "InnerProduct" bottom: "x" top: "i" inner_product_param { axis: -9 } }
            layer { name: "f" type: "Flatten" bottom: "x" top: "f" flatten_param { axis: 3 end_axis: 1 } }
            layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: -1 dim: -1 } } }"#);
        let info = n.infer_shapes();
        for name in ["c", "p", "q", "i", "f", "r"] {
            assert_eq!(out(&n, &info, name), None, "{name}");
        }
    }

    #[test]
    fn set_inferred_blobs_fills_nodes() {
        let mut n = net(r#"input: "x" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }
            layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 } }"#);
        n.set_inferred_blobs();
        let b = n.nodes().next().map(|n| n.blobs.clone()).unwrap_or_default();
        assert_eq!(b, [BlobSpec { name: "weight".into(), shape: vec![4, 2, 3, 1] }, BlobSpec { name: "bias".into(), shape: vec![4] }]);
        assert_eq!(learnable_blob_names(&n.nodes().next().cloned().unwrap_or_else(|| Node::new("", ""))), ["weight", "bias"]);
    }
}
