//! DQL `evaluate` through dql-exec's `Trainer` trait: one [`Session`] per grid point, trained
//! rung by rung so that the executor can stop the bad ones early.
//!
//! Grid parameters (`vary config.NAME ...`): any solver key (`base_lr`, `momentum`,
//! `weight_decay`, `batch_size`, `max_iter`, `lr_policy`, ...); `input_data` (a data folder);
//! `net["PATTERN"].lr` and `net["PATTERN"].decay` (multiply the `lr_mult` / `decay_mult` of the
//! layers whose names match the glob). The config file named by `with config = "..."` is a
//! solver prototxt or a TOML file (`.toml`); its `input_data` (or `data`) key names the data
//! folder, relative to the file. `auto` grids are listed in [`auto_values`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::VarBuilder;
use dlv_store::formats;
use dql_exec::{ParamValue, TrainJob, TrainRun, TrainedTensor, Trainer};

use crate::data;
use crate::error::{Result, TrainError};
use crate::model::Init;
use crate::session::{Session, SessionOptions};
use crate::solver::SolverConfig;

/// The candle backend of DQL `evaluate`.
#[derive(Debug, Clone)]
pub struct CandleTrainer {
    /// Data folder used when neither the grid nor the config names one (`dlv query --data`).
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    pub seed: u64,
    /// Caps the test examples of each rung's test pass (whole test set when `None`).
    pub test_limit: Option<usize>,
}

impl CandleTrainer {
    pub fn new(data_dir: Option<PathBuf>) -> CandleTrainer {
        CandleTrainer { data_dir, device: Device::Cpu, seed: 1, test_limit: None }
    }
}

/// The values `vary config.PARAM auto` tries: log-spaced grids around Caffe's usual settings.
pub fn auto_values(param: &str) -> Vec<f64> {
    match param {
        "base_lr" | "lr" => vec![0.1, 0.03, 0.01, 0.003, 0.001],
        "momentum" => vec![0.8, 0.9, 0.95, 0.99],
        "weight_decay" => vec![0.0, 1e-5, 1e-4, 5e-4, 1e-3],
        "batch_size" => vec![32.0, 64.0, 128.0, 256.0],
        "gamma" => vec![0.1, 0.3, 0.5],
        p if p.starts_with("net[") && (p.ends_with(".lr") || p.ends_with(".lr_mult")) => vec![0.0, 0.1, 1.0, 10.0],
        p if p.starts_with("net[") && p.ends_with(".decay") => vec![0.0, 1.0, 10.0],
        _ => Vec::new(),
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    fn rec(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => rec(&p[1..], n) || (!n.is_empty() && rec(p, &n[1..])),
            (Some('?'), Some(_)) => rec(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    rec(&p, &n)
}

/// `net["PATTERN"].FIELD` -> (PATTERN, FIELD).
fn layer_param(key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix("net[")?;
    let (pat, field) = rest.split_once("].")?;
    let pat = pat.trim().trim_matches('"').to_string();
    Some((pat, field.to_string()))
}

/// Flat hyper-parameters `(key, text, number)`.
type Items = Vec<(String, String, Option<f64>)>;

fn config_items(path: &str) -> Result<(Items, Option<PathBuf>)> {
    if path.trim().is_empty() {
        return Ok((Vec::new(), None));
    }
    let p = Path::new(path);
    let text = std::fs::read_to_string(p).map_err(|source| TrainError::Io { path: p.to_path_buf(), source })?;
    let pairs = if p.extension().is_some_and(|e| e == "toml") { formats::read_toml_config(&text, path)? } else { formats::read_solver(&text, path)? };
    let mut data = None;
    let mut items = Vec::new();
    for (k, v) in pairs {
        if k == "input_data" || k == "data" {
            let d = PathBuf::from(v.to_string());
            data = Some(if d.is_relative() { p.parent().map(|dir| dir.join(&d)).unwrap_or(d) } else { d });
            continue;
        }
        let n = v.as_f64();
        items.push((k, v.to_string(), n));
    }
    Ok((items, data))
}

fn decode(entry: &dlv_store::TensorEntry, bytes: &[u8]) -> Result<Tensor> {
    let dt = match entry.dtype.as_str() {
        "F32" => DType::F32,
        "F64" => DType::F64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        other => return Err(TrainError::Config(format!("tensor '{}' has dtype {other}; weights must be floats", entry.name))),
    };
    let shape: Vec<usize> = entry.shape.iter().map(|&d| d as usize).collect();
    if bytes.len() != shape.iter().product::<usize>() * dt.size_in_bytes() {
        return Err(TrainError::Config(format!("tensor '{}' has {} bytes, its shape needs more or fewer", entry.name, bytes.len())));
    }
    Ok(Tensor::from_raw_buffer(bytes, dt, &shape, &Device::Cpu)?.to_dtype(DType::F32)?)
}

impl CandleTrainer {
    fn start_run(&self, job: &TrainJob<'_>) -> Result<CandleRun> {
        let (mut items, mut data_dir) = config_items(job.config)?;
        let mut base: Vec<(String, String, Option<f64>)> = job.record.hyper.iter().map(|h| (h.key.clone(), h.text.clone(), h.num)).collect();
        base.append(&mut items);
        let mut layer_scales: Vec<(String, String, f64)> = Vec::new();
        for (k, v) in job.params {
            if k == "input_data" || k == "data" {
                data_dir = Some(PathBuf::from(v.to_string()));
            } else if let Some((pat, field)) = layer_param(k) {
                let ParamValue::Num(x) = v else { return Err(TrainError::Config(format!("{k} needs a number"))) };
                layer_scales.push((pat, field, *x));
            } else {
                let n = if let ParamValue::Num(x) = v { Some(*x) } else { None };
                base.push((k.clone(), v.to_string(), n));
            }
        }
        let config = SolverConfig::from_hyper(base.iter().map(|(k, t, n)| (k.as_str(), t.as_str(), *n)))?;
        let dir = data_dir
            .or_else(|| self.data_dir.clone())
            .ok_or_else(|| TrainError::Config("no training data: give input_data in the config or the grid, or --data".into()))?;
        let datasets = data::load_dir(&dir)?;
        let mut tensors = HashMap::new();
        for t in &job.record.tensors {
            let bytes = job.weights.tensor(t).map_err(|e| TrainError::Config(format!("cannot read tensor '{}': {e}", t.name)))?;
            let tensor = decode(t, &bytes)?;
            if let (Some(l), Some(b)) = (&t.layer, &t.blob) {
                tensors.insert(format!("{l}.{b}"), tensor.clone());
            }
            tensors.entry(t.name.clone()).or_insert(tensor);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        let opts = SessionOptions { device: self.device.clone(), dtype: DType::F32, seed: self.seed };
        let mut session = Session::new(job.net, Init::Backend(&vb), config, datasets, &opts)?;
        for (pat, field, x) in &layer_scales {
            let mut hit = false;
            for p in session.model.params.iter_mut().filter(|p| glob(pat, &p.layer)) {
                hit = true;
                match field.as_str() {
                    "lr" | "lr_mult" => p.lr_mult *= x,
                    "decay" | "decay_mult" => p.decay_mult *= x,
                    other => return Err(TrainError::Config(format!("net[\"{pat}\"].{other}: only lr and decay can vary per layer"))),
                }
            }
            if !hit {
                return Err(TrainError::Config(format!("net[\"{pat}\"] matches no layer with parameters")));
            }
        }
        Ok(CandleRun { session, test_limit: self.test_limit })
    }
}

impl Trainer for CandleTrainer {
    fn start(&self, job: &TrainJob<'_>) -> std::result::Result<Box<dyn TrainRun>, String> {
        self.start_run(job).map(|r| Box::new(r) as Box<dyn TrainRun>).map_err(|e| e.to_string())
    }

    fn auto_values(&self, param: &str) -> Vec<ParamValue> {
        auto_values(param).into_iter().map(ParamValue::Num).collect()
    }
}

/// One grid point being trained.
pub struct CandleRun {
    session: Session,
    test_limit: Option<usize>,
}

impl CandleRun {
    fn until(&mut self, iter: u64) -> Result<BTreeMap<String, f64>> {
        let target = iter.min(self.session.config().max_iter);
        let mut last_loss = None;
        while self.session.iter() < target {
            last_loss = Some(self.session.step()?.loss);
        }
        let mut m = BTreeMap::new();
        let limit = self.test_limit;
        let stats = crate::session::evaluate(&self.session.model, &self.session.datasets().test, limit, false)?;
        if let Some(a) = stats.accuracy {
            m.insert("accuracy".to_string(), a);
        }
        if let Some(l) = stats.loss.or(last_loss) {
            m.insert("loss".to_string(), l);
        }
        if let Some(l) = last_loss {
            m.insert("train_loss".to_string(), l);
        }
        Ok(m)
    }
}

impl TrainRun for CandleRun {
    fn total_iters(&self) -> u64 {
        self.session.config().max_iter
    }

    fn train_until(&mut self, iter: u64) -> std::result::Result<BTreeMap<String, f64>, String> {
        self.until(iter).map_err(|e| e.to_string())
    }

    fn finish(self: Box<Self>) -> std::result::Result<Vec<TrainedTensor>, String> {
        let tensors = self.session.tensors().map_err(|e| e.to_string())?;
        Ok(tensors
            .into_iter()
            .map(|t| TrainedTensor {
                name: t.name(),
                layer: Some(t.layer.clone()),
                blob: Some(t.blob.clone()),
                dtype: "F32".into(),
                shape: t.shape.iter().map(|&d| d as u64).collect(),
                data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_patterns_and_auto_grids() {
        assert_eq!(layer_param("net[\"conv*\"].lr"), Some(("conv*".into(), "lr".into())));
        assert!(glob("conv*", "conv12") && glob("ip?", "ip1") && !glob("conv*", "ip1"));
        assert_eq!(auto_values("base_lr").len(), 5);
        assert!(auto_values("net[\"conv*\"].lr").contains(&0.0));
        assert!(auto_values("unknown").is_empty());
    }
}
