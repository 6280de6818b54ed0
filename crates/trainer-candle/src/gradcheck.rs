//! Per-layer gradient checks: autograd against central finite differences, in f64.
//!
//! Each check builds a one- or two-layer net from prototxt with Input layers, computes
//! `L = sum(y * R)` for a fixed random `R`, and compares dL/dx and dL/dparam from candle's
//! backward pass with `(L(x + h) - L(x - h)) / 2h` on a sample of elements.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use dlv_graph::{Net, Phase};

use crate::model::{BuildOptions, Init, Model};
use crate::rng::Rng;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn randn(shape: &[usize], rng: &mut Rng) -> R<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.gaussian()).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn input_layers(inputs: &[(&str, &[usize])]) -> String {
    inputs
        .iter()
        .map(|(name, shape)| {
            let dims: String = shape.iter().map(|d| format!(" dim: {d}")).collect();
            format!("layer {{ name: \"{name}\" type: \"Input\" top: \"{name}\" input_param {{ shape {{{dims} }} }} }}\n")
        })
        .collect()
}

/// Checks gradients of `out` w.r.t. every float input and every learnable parameter.
/// `labels` adds an integer input (not differentiated).
fn check(layers: &str, inputs: &[(&str, &[usize])], labels: Option<(&str, usize, u32)>, out: &str, phase: Phase) -> R<()> {
    let mut text = input_layers(inputs);
    if let Some((name, n, _)) = labels {
        text.push_str(&input_layers(&[(name, &[n])]));
    }
    text.push_str(layers);
    let net = Net::from_prototxt(&text, "gradcheck")?;
    let opts = BuildOptions { dtype: DType::F64, seed: 3, ..BuildOptions::default() };
    let model = Model::build(&net, &opts, Init::Fillers)?;
    let mut rng = Rng::new(11);
    let mut vars: Vec<(String, Var)> = Vec::new();
    for (name, shape) in inputs {
        vars.push((name.to_string(), Var::from_tensor(&randn(shape, &mut rng)?)?));
    }
    let label_t = match labels {
        Some((name, n, classes)) => {
            let v: Vec<u32> = (0..n).map(|_| rng.below(classes as usize) as u32).collect();
            Some((name.to_string(), Tensor::from_vec(v, n, &Device::Cpu)?))
        }
        None => None,
    };
    let loss_of = |model: &Model, vars: &[(String, Var)], r: Option<&Tensor>| -> R<(Tensor, Tensor)> {
        let mut feeds: HashMap<String, Tensor> = vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        if let Some((n, t)) = &label_t {
            feeds.insert(n.clone(), t.clone());
        }
        let f = model.forward(phase, &feeds, phase == Phase::Train, &mut Rng::new(5))?;
        let y = f.blobs.get(out).ok_or("no output")?.clone();
        let r = match r {
            Some(r) => r.clone(),
            None => randn(y.dims(), &mut Rng::new(99))?,
        };
        Ok(((&y * &r)?.sum_all()?, r))
    };
    let (l, r) = loss_of(&model, &vars, None)?;
    let grads = l.backward()?;
    let mut targets: Vec<(String, Var)> = vars.clone();
    for p in model.params.iter().filter(|p| p.learnable) {
        targets.push((p.key(), p.var.clone()));
    }
    let h = 1e-6;
    let mut checked = 0;
    for (name, var) in &targets {
        let analytic = grads.get(var.as_tensor()).ok_or_else(|| format!("no gradient for {name}"))?;
        let a: Vec<f64> = analytic.flatten_all()?.to_vec1()?;
        let base: Vec<f64> = var.as_tensor().flatten_all()?.to_vec1()?;
        let shape = var.as_tensor().dims().to_vec();
        let step = (base.len() / 17).max(1);
        for i in (0..base.len()).step_by(step) {
            let mut plus = base.clone();
            plus[i] += h;
            var.set(&Tensor::from_vec(plus, shape.as_slice(), &Device::Cpu)?)?;
            let lp = loss_of(&model, &vars, Some(&r))?.0.to_scalar::<f64>()?;
            let mut minus = base.clone();
            minus[i] -= h;
            var.set(&Tensor::from_vec(minus, shape.as_slice(), &Device::Cpu)?)?;
            let lm = loss_of(&model, &vars, Some(&r))?.0.to_scalar::<f64>()?;
            var.set(&Tensor::from_vec(base.clone(), shape.as_slice(), &Device::Cpu)?)?;
            let numeric = (lp - lm) / (2.0 * h);
            let err = (numeric - a[i]).abs() / numeric.abs().max(a[i].abs()).max(1.0);
            assert!(err < 1e-5, "{out}: d/d{name}[{i}] analytic {} numeric {numeric} (rel err {err})", a[i]);
            checked += 1;
        }
    }
    assert!(checked > 0);
    Ok(())
}

const G: &str = "weight_filler { type: \"gaussian\" std: 0.5 } bias_filler { type: \"gaussian\" std: 0.5 }";

#[test]
fn conv_with_stride_pad_group_dilation() -> R<()> {
    for params in ["kernel_size: 3 stride: 2 pad: 1", "kernel_size: 3 dilation: 2 pad: 2", "kernel_size: 2 group: 2", "kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0"] {
        let layer = format!(
            "layer {{ name: \"c\" type: \"Convolution\" bottom: \"x\" top: \"y\" convolution_param {{ num_output: 4 {params} {G} }} }}"
        );
        check(&layer, &[("x", &[2, 4, 6, 5])], None, "y", Phase::Test)?;
    }
    Ok(())
}

#[test]
fn pooling_max_ave_global() -> R<()> {
    for params in ["pool: MAX kernel_size: 3 stride: 2", "pool: AVE kernel_size: 3 stride: 2 pad: 1", "pool: MAX kernel_size: 2 stride: 2", "pool: AVE global_pooling: true"] {
        let layer = format!("layer {{ name: \"p\" type: \"Pooling\" bottom: \"x\" top: \"y\" pooling_param {{ {params} }} }}");
        check(&layer, &[("x", &[2, 3, 7, 6])], None, "y", Phase::Test)?;
    }
    Ok(())
}

#[test]
fn inner_product_and_activations() -> R<()> {
    check(&format!("layer {{ name: \"ip\" type: \"InnerProduct\" bottom: \"x\" top: \"y\" inner_product_param {{ num_output: 5 {G} }} }}"), &[("x", &[3, 2, 2, 2])], None, "y", Phase::Test)?;
    check("layer { name: \"r\" type: \"ReLU\" bottom: \"x\" top: \"y\" }", &[("x", &[4, 7])], None, "y", Phase::Test)?;
    check("layer { name: \"r\" type: \"ReLU\" bottom: \"x\" top: \"y\" relu_param { negative_slope: 0.1 } }", &[("x", &[4, 7])], None, "y", Phase::Test)?;
    check("layer { name: \"s\" type: \"Sigmoid\" bottom: \"x\" top: \"y\" }", &[("x", &[4, 7])], None, "y", Phase::Test)?;
    check("layer { name: \"t\" type: \"TanH\" bottom: \"x\" top: \"y\" }", &[("x", &[4, 7])], None, "y", Phase::Test)?;
    check("layer { name: \"s\" type: \"Softmax\" bottom: \"x\" top: \"y\" }", &[("x", &[4, 7])], None, "y", Phase::Test)?;
    Ok(())
}

#[test]
fn lrn_across_and_within() -> R<()> {
    check("layer { name: \"n\" type: \"LRN\" bottom: \"x\" top: \"y\" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }", &[("x", &[2, 5, 3, 3])], None, "y", Phase::Test)?;
    check("layer { name: \"n\" type: \"LRN\" bottom: \"x\" top: \"y\" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL } }", &[("x", &[2, 2, 4, 4])], None, "y", Phase::Test)?;
    Ok(())
}

#[test]
fn batchnorm_and_scale() -> R<()> {
    let layers = "layer { name: \"bn\" type: \"BatchNorm\" bottom: \"x\" top: \"b\" }\n\
                  layer { name: \"sc\" type: \"Scale\" bottom: \"b\" top: \"y\" scale_param { bias_term: true filler { type: \"gaussian\" std: 1 } bias_filler { type: \"gaussian\" std: 1 } } }";
    check(layers, &[("x", &[4, 3, 2, 2])], None, "y", Phase::Train)
}

#[test]
fn eltwise_and_concat() -> R<()> {
    for op in ["SUM coeff: 0.5 coeff: -2", "PROD", "MAX"] {
        let layer = format!("layer {{ name: \"e\" type: \"Eltwise\" bottom: \"a\" bottom: \"b\" top: \"y\" eltwise_param {{ operation: {op} }} }}");
        check(&layer, &[("a", &[2, 3, 2]), ("b", &[2, 3, 2])], None, "y", Phase::Test)?;
    }
    check("layer { name: \"c\" type: \"Concat\" bottom: \"a\" bottom: \"b\" top: \"y\" }", &[("a", &[2, 3, 2]), ("b", &[2, 1, 2])], None, "y", Phase::Test)?;
    check("layer { name: \"f\" type: \"Flatten\" bottom: \"a\" top: \"y\" }", &[("a", &[2, 3, 2])], None, "y", Phase::Test)?;
    Ok(())
}

#[test]
fn softmax_with_loss() -> R<()> {
    check("layer { name: \"l\" type: \"SoftmaxWithLoss\" bottom: \"x\" bottom: \"label\" top: \"y\" }", &[("x", &[5, 4])], Some(("label", 5, 4)), "y", Phase::Test)
}
