//! Deterministic test data: weights whose shapes match the bundled networks.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};

/// splitmix64: tiny, deterministic, good enough for fixture values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// (name, shape) of LeNet's learnable tensors, as in testdata/nets/lenet*.prototxt.
pub const LENET: &[(&str, &[usize])] = &[
    ("conv1.weight", &[20, 1, 5, 5]),
    ("conv1.bias", &[20]),
    ("conv2.weight", &[50, 20, 5, 5]),
    ("conv2.bias", &[50]),
    ("ip1.weight", &[500, 800]),
    ("ip1.bias", &[500]),
    ("ip2.weight", &[10, 500]),
    ("ip2.bias", &[10]),
];

/// Xavier-scaled normal values for each tensor (biases small constants).
pub fn init_tensors(spec: &[(&str, &[usize])], seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    spec.iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let std = (1.0 / fan_in as f64).sqrt();
            let data = if shape.len() == 1 {
                vec![0.01f32; n]
            } else {
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            (name.to_string(), shape.to_vec(), data)
        })
        .collect()
}

/// A small, deterministic "fine-tuning" step: every value moves a little.
pub fn perturb(tensors: &mut [(String, Vec<usize>, Vec<f32>)], seed: u64, scale: f64) {
    let mut rng = Rng::new(seed);
    for (_, _, data) in tensors.iter_mut() {
        for v in data.iter_mut() {
            *v += (rng.normal() * scale * (*v as f64).abs().max(1e-3)) as f32;
        }
    }
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))
        })
        .collect::<Result<_>>()?;
    let meta: Option<HashMap<String, String>> = None;
    let out = safetensors::serialize(views, meta).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

pub fn generate() -> Result<()> {
    let dir = crate::root().join("testdata/weights");
    let base = init_tensors(LENET, 42);
    write_safetensors(&dir.join("lenet.safetensors"), &base)?;
    println!("wrote {}", dir.join("lenet.safetensors").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed fixture is exactly what `cargo xtask gen-testdata` makes.
    #[test]
    fn committed_weights_are_reproducible() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("dlv-gen-{}", std::process::id()));
        let path = dir.join("lenet.safetensors");
        write_safetensors(&path, &init_tensors(LENET, 42))?;
        let fresh = std::fs::read(&path)?;
        std::fs::remove_dir_all(&dir).ok();
        let committed = std::fs::read(crate::root().join("testdata/weights/lenet.safetensors"))?;
        assert!(fresh == committed, "testdata/weights/lenet.safetensors is stale: run `cargo xtask gen-testdata`");
        Ok(())
    }
}
