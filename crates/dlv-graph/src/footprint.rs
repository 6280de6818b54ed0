//! Execution footprint estimated from shapes: learnable parameters, the memory one forward
//! batch needs, and floating-point operations per layer.
//!
//! Counting rules (an estimate, as in the papers that report FLOPs): a multiply-add is two
//! operations; convolution and inner product count `2 * outputs * fan_in` plus one per output
//! for the bias; deconvolution `2 * inputs * fan_out`; pooling one operation per window element
//! and output; element-wise layers (ReLU, BatchNorm, Scale, ...) a small constant per output
//! value; reshaping layers (Concat, Split, Flatten, Input, Data) nothing. A layer whose type is
//! unknown or whose shapes are not known counts as unknown and makes the total a lower bound
//! ([`Footprint::flops_complete`] is false). Memory counts 4 bytes per value (fp32): every
//! output blob that is not computed in place, plus the parameters; framework workspaces are not
//! counted.

use crate::net::{Net, NodeId};
use crate::shapes::ShapeInfo;
use crate::textformat::Message;

/// What one layer costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFootprint {
    pub id: NodeId,
    /// Learnable values (over the blobs whose shapes are known).
    pub params: u64,
    /// Operations for one forward batch, when known.
    pub flops: Option<u64>,
    /// Output values this layer adds to memory (0 for in-place layers), when known.
    pub activations: Option<u64>,
}

/// Totals over the network, see the module documentation for what is counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Footprint {
    /// Layers in topological order.
    pub layers: Vec<LayerFootprint>,
    pub params: u64,
    /// First dimension of the first input's shape, when known.
    pub batch: Option<usize>,
    /// Output values held for one forward batch.
    pub activations: u64,
    /// Bytes for one forward batch in fp32: activations plus parameters.
    pub memory_bytes: u64,
    pub flops: u64,
    /// Whether every layer's operations are known (otherwise `flops` is a lower bound).
    pub flops_complete: bool,
}

/// Bytes per value the estimate assumes (fp32).
pub const VALUE_BYTES: u64 = 4;

fn elems(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

impl Net {
    /// Footprint from shapes that [`Net::infer_shapes`] (or `infer_shapes_with`) found. Learnable
    /// blobs come from the shapes, or from the node's own blobs where inference could not tell.
    pub fn footprint(&self, shapes: &ShapeInfo) -> Footprint {
        let order = self.topo_order().unwrap_or_else(|_| self.node_ids().to_vec());
        let mut fp = Footprint { flops_complete: true, ..Footprint::default() };
        for id in order {
            let Some(node) = self.node(id) else { continue };
            let ns = shapes.node(id);
            let blobs: Vec<Vec<usize>> = match shapes.blobs(id) {
                Some(b) if !b.is_empty() || node.blobs.is_empty() => b.iter().map(|b| b.shape.clone()).collect(),
                _ => node.blobs.iter().map(|b| b.shape.clone()).collect(),
            };
            let params = blobs.iter().map(|s| elems(s)).fold(0u64, u64::saturating_add);
            let input = ns.and_then(|n| n.inputs.first().cloned().flatten());
            let output = ns.and_then(|n| n.outputs.first().cloned().flatten());
            if fp.batch.is_none() && node.bottoms.is_empty() {
                fp.batch = output.as_ref().and_then(|s| s.first().copied());
            }
            // Activations: outputs not computed in place.
            let activations = ns.and_then(|n| {
                node.tops
                    .iter()
                    .zip(&n.outputs)
                    .filter(|(top, _)| !node.bottoms.contains(top))
                    .try_fold(0u64, |acc, (_, s)| s.as_ref().map(|s| acc.saturating_add(elems(s))))
            });
            let flops = layer_flops(&node.layer_type, &node.params, node.bottoms.len(), input.as_deref(), output.as_deref(), &blobs);
            fp.params = fp.params.saturating_add(params);
            fp.activations = fp.activations.saturating_add(activations.unwrap_or(0));
            match flops {
                Some(f) => fp.flops = fp.flops.saturating_add(f),
                None => fp.flops_complete = false,
            }
            fp.layers.push(LayerFootprint { id, params, flops, activations });
        }
        fp.memory_bytes = fp.activations.saturating_add(fp.params).saturating_mul(VALUE_BYTES);
        fp
    }
}

fn uint(m: Option<&Message>, key: &str) -> Option<u64> {
    m?.get(key)?.as_int().and_then(|i| u64::try_from(i).ok())
}

/// Operations of one layer for one forward batch, `None` when unknown.
fn layer_flops(
    layer_type: &str,
    params: &Message,
    bottoms: usize,
    input: Option<&[usize]>,
    output: Option<&[usize]>,
    blobs: &[Vec<usize>],
) -> Option<u64> {
    let out = || output.map(elems);
    let fan = |w: &Vec<usize>| elems(w.get(1..).unwrap_or(&[]));
    let bias = || if blobs.len() > 1 { out() } else { Some(0) };
    match layer_type {
        "Convolution" => {
            let w = blobs.first()?;
            Some(out()?.saturating_mul(2).saturating_mul(fan(w)).saturating_add(bias()?))
        }
        "Deconvolution" => {
            let w = blobs.first()?;
            let inp = elems(input?);
            Some(inp.saturating_mul(2).saturating_mul(fan(w)).saturating_add(bias()?))
        }
        "InnerProduct" => {
            let w = blobs.first()?;
            let fan_in = w.get(1).copied().unwrap_or(1) as u64;
            Some(out()?.saturating_mul(2).saturating_mul(fan_in).saturating_add(bias()?))
        }
        "Pooling" => {
            let p = params.get_msg("pooling_param");
            let window = if p.and_then(|p| p.get("global_pooling")).and_then(|v| v.as_bool()) == Some(true) {
                let i = input?;
                elems(i.get(2..).unwrap_or(&[]))
            } else {
                let k = uint(p, "kernel_size");
                let kh = uint(p, "kernel_h").or(k)?;
                let kw = uint(p, "kernel_w").or(k)?;
                kh.saturating_mul(kw)
            };
            Some(out()?.saturating_mul(window))
        }
        "LRN" => {
            let size = uint(params.get_msg("lrn_param"), "local_size").unwrap_or(5);
            Some(out()?.saturating_mul(size.saturating_add(3)))
        }
        "ReLU" | "PReLU" | "ELU" | "AbsVal" | "BNLL" | "Threshold" | "Dropout" | "Bias" | "Power" | "Clip"
        | "Swish" => out(),
        "Scale" | "BatchNorm" | "MVN" => Some(out()?.saturating_mul(2)),
        "Sigmoid" | "TanH" | "Exp" | "Log" => Some(out()?.saturating_mul(4)),
        "Eltwise" => Some(out()?.saturating_mul(bottoms.saturating_sub(1).max(1) as u64)),
        "Softmax" => Some(out()?.saturating_mul(3)),
        "SoftmaxWithLoss" | "SigmoidCrossEntropyLoss" | "EuclideanLoss" | "Accuracy" | "ArgMax" => {
            Some(elems(input?).saturating_mul(3))
        }
        "Concat" | "Split" | "Flatten" | "Reshape" | "Slice" | "Silence" | "Input" | "Data" | "ImageData"
        | "MemoryData" | "HDF5Data" | "WindowData" | "DummyData" | "AnnotatedData" => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenet_footprint_counts_conv_and_fc_flops() {
        let src = r#"name: "L"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 10 } }
"#;
        let net = match Net::from_prototxt(src, "t") {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let fp = net.footprint(&net.infer_shapes());
        assert_eq!(fp.batch, Some(2));
        let conv_out = 2 * 20 * 24 * 24u64;
        let pool_out = 2 * 20 * 12 * 12u64;
        let conv = conv_out * 2 * 25 + conv_out;
        let relu = conv_out;
        let pool = pool_out * 4;
        let ip = 2 * 10 * 2 * 2880 + 2 * 10;
        assert_eq!(fp.flops, conv + relu + pool + ip);
        assert!(fp.flops_complete);
        assert_eq!(fp.params, 20 * 25 + 20 + 10 * 2880 + 10);
        // The in-place ReLU adds no activation memory.
        assert_eq!(fp.activations, 2 * 784 + conv_out + pool_out + 20);
        assert_eq!(fp.memory_bytes, (fp.activations + fp.params) * 4);
    }

    #[test]
    fn unknown_layers_make_the_total_a_lower_bound() {
        let net = match Net::from_prototxt("layer { name: \"x\" type: \"Mystery\" top: \"x\" }", "t") {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        let fp = net.footprint(&net.infer_shapes());
        assert!(!fp.flops_complete);
        assert_eq!(fp.flops, 0);
    }
}
