//! Forward parity on fixed weights against testdata/golden/forward.json, which
//! testdata/tools/golden.py computed with an independent NumPy implementation of Caffe's layers.

use std::collections::HashMap;

use dlv_graph::{Net, Phase};
use trainer_candle::{BuildOptions, DType, Device, Init, Model, Rng, VarBuilder};

use crate::{testdata, R};

fn tensor(v: &serde_json::Value) -> R<candle_core::Tensor> {
    let shape: Vec<usize> = v["shape"].as_array().ok_or("shape")?.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect();
    let data: Vec<f64> = v["data"].as_array().ok_or("data")?.iter().filter_map(|d| d.as_f64()).collect();
    Ok(candle_core::Tensor::from_vec(data, shape, &Device::Cpu)?)
}

#[test]
fn forward_matches_numpy_reference() -> R {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(testdata("golden/forward.json"))?)?;
    let net = Net::from_prototxt(doc["prototxt"].as_str().ok_or("prototxt")?, "golden")?;
    let mut weights = HashMap::new();
    for (k, v) in doc["weights"].as_object().ok_or("weights")? {
        weights.insert(k.clone(), tensor(v)?);
    }
    let vb = VarBuilder::from_tensors(weights, DType::F64, &Device::Cpu);
    let opts = BuildOptions { dtype: DType::F64, ..BuildOptions::default() };
    let model = Model::build(&net, &opts, Init::Backend(&vb))?;
    let feeds = HashMap::from([("data".to_string(), tensor(&doc["input"])?)]);
    let out = model.forward(Phase::Test, &feeds, false, &mut Rng::new(0))?;
    let blobs = doc["blobs"].as_object().ok_or("blobs")?;
    assert!(blobs.len() > 15);
    for (name, want) in blobs {
        let want = tensor(want)?;
        let got = out.blobs.get(name).ok_or_else(|| format!("blob {name} not produced"))?;
        assert_eq!(got.dims(), want.dims(), "shape of {name}");
        let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-9, "{name}: max abs difference {diff}");
    }
    Ok(())
}
