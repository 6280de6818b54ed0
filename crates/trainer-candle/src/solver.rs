//! Solver settings (Caffe's `SolverParameter` names) and the update rules: SGD with momentum and
//! weight decay as Caffe does it, and Adam; learning-rate policies fixed, step, exp, inv,
//! multistep, poly, sigmoid.

use candle_core::{Tensor, Var};

use crate::error::{Result, TrainError};
use crate::model::Param;

/// Learning-rate policy, with Caffe's formulas.
#[derive(Debug, Clone, PartialEq)]
pub enum LrPolicy {
    Fixed,
    /// `base_lr * gamma ^ floor(iter / stepsize)`
    Step { gamma: f64, stepsize: u64 },
    /// `base_lr * gamma ^ iter`
    Exp { gamma: f64 },
    /// `base_lr * (1 + gamma * iter) ^ -power`
    Inv { gamma: f64, power: f64 },
    /// `base_lr * gamma ^ (number of stepvalues <= iter)`
    MultiStep { gamma: f64, steps: Vec<u64> },
    /// `base_lr * (1 - iter / max_iter) ^ power`
    Poly { power: f64, max_iter: u64 },
    /// `base_lr / (1 + exp(-gamma * (iter - stepsize)))`
    Sigmoid { gamma: f64, stepsize: u64 },
}

/// Update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SolverKind {
    Sgd,
    Adam,
}

/// Everything the training loop needs, with Caffe's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SolverConfig {
    pub kind: SolverKind,
    pub base_lr: f64,
    pub policy: LrPolicy,
    pub momentum: f64,
    /// Adam's beta2.
    pub momentum2: f64,
    /// Adam's epsilon.
    pub delta: f64,
    pub weight_decay: f64,
    /// L2 (Caffe's default) or L1.
    pub l1: bool,
    pub max_iter: u64,
    /// Test every this many iterations (0: only at the end).
    pub test_interval: u64,
    /// Test batches per test (0: the whole test set).
    pub test_iter: u64,
    /// Record the training loss every this many iterations.
    pub display: u64,
    /// Snapshot every this many iterations (0: none).
    pub snapshot: u64,
    /// Rescale gradients whose global L2 norm exceeds this (0: off).
    pub clip_gradients: f64,
    /// Overrides every data layer's batch size.
    pub batch_size: Option<usize>,
    pub random_seed: Option<u64>,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            kind: SolverKind::Sgd,
            base_lr: 0.01,
            policy: LrPolicy::Fixed,
            momentum: 0.0,
            momentum2: 0.999,
            delta: 1e-8,
            weight_decay: 0.0,
            l1: false,
            max_iter: 1000,
            test_interval: 0,
            test_iter: 0,
            display: 10,
            snapshot: 0,
            clip_gradients: 0.0,
            batch_size: None,
            random_seed: None,
        }
    }
}

/// One hyper-parameter as the store keeps it: key, display text, number when numeric.
pub type HyperItem<'a> = (&'a str, &'a str, Option<f64>);

impl SolverConfig {
    /// Builds a config from flat hyper-parameters (a stored version's `hyper`, a solver
    /// prototxt or a TOML config as dlv-store flattens them); later entries override earlier
    /// ones, so callers pass stored values first and overrides last. Unknown keys are ignored.
    pub fn from_hyper<'a>(items: impl IntoIterator<Item = HyperItem<'a>>) -> Result<SolverConfig> {
        let mut c = SolverConfig::default();
        let mut policy = String::from("fixed");
        let (mut gamma, mut power, mut stepsize) = (None::<f64>, None::<f64>, None::<f64>);
        let mut steps: Vec<(usize, u64)> = Vec::new();
        let num = |key: &str, text: &str, n: Option<f64>| -> Result<f64> {
            n.or_else(|| text.trim().parse().ok())
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| TrainError::Config(format!("{key} = {text:?} is not a number")))
        };
        let count = |key: &str, v: f64| -> Result<u64> {
            if v < 0.0 || v.fract() != 0.0 {
                return Err(TrainError::Config(format!("{key} = {v} is not a non-negative integer")));
            }
            Ok(v as u64)
        };
        for (key, text, n) in items {
            let key = key.strip_prefix("solver.").unwrap_or(key);
            match key {
                "base_lr" => c.base_lr = num(key, text, n)?,
                "momentum" | "beta1" => c.momentum = num(key, text, n)?,
                "momentum2" | "beta2" => c.momentum2 = num(key, text, n)?,
                "delta" | "eps" => c.delta = num(key, text, n)?,
                "weight_decay" => c.weight_decay = num(key, text, n)?,
                "regularization_type" => c.l1 = text.eq_ignore_ascii_case("L1"),
                "lr_policy" => policy = text.trim().to_ascii_lowercase(),
                "gamma" => gamma = Some(num(key, text, n)?),
                "power" => power = Some(num(key, text, n)?),
                "stepsize" => stepsize = Some(num(key, text, n)?),
                "stepvalue" => steps.push((0, count(key, num(key, text, n)?)?)),
                "max_iter" => c.max_iter = count(key, num(key, text, n)?)?,
                "test_interval" => c.test_interval = count(key, num(key, text, n)?)?,
                "test_iter" | "test_iter.0" => c.test_iter = count(key, num(key, text, n)?)?,
                "display" => c.display = count(key, num(key, text, n)?)?,
                "snapshot" => c.snapshot = count(key, num(key, text, n)?)?,
                "clip_gradients" => c.clip_gradients = num(key, text, n)?,
                "batch_size" => c.batch_size = Some(count(key, num(key, text, n)?)?.max(1) as usize),
                "random_seed" => {
                    let v = num(key, text, n)?;
                    if v >= 0.0 {
                        c.random_seed = Some(v as u64);
                    }
                }
                "type" | "solver_type" => {
                    c.kind = match text.trim().to_ascii_lowercase().as_str() {
                        "sgd" => SolverKind::Sgd,
                        "adam" => SolverKind::Adam,
                        other => return Err(TrainError::Config(format!("solver type {other:?} is not supported (SGD, Adam)"))),
                    }
                }
                k => {
                    if let Some(i) = k.strip_prefix("stepvalue.").and_then(|i| i.parse::<usize>().ok()) {
                        steps.push((i, count(k, num(k, text, n)?)?));
                    }
                }
            }
        }
        if c.base_lr.is_nan() || c.base_lr <= 0.0 {
            return Err(TrainError::Config(format!("base_lr = {} must be positive", c.base_lr)));
        }
        let need = |what: &str, v: Option<f64>| v.ok_or_else(|| TrainError::Config(format!("lr_policy {policy:?} needs {what}")));
        c.policy = match policy.as_str() {
            "fixed" => LrPolicy::Fixed,
            "step" => LrPolicy::Step { gamma: need("gamma", gamma)?, stepsize: count("stepsize", need("stepsize", stepsize)?)?.max(1) },
            "exp" => LrPolicy::Exp { gamma: need("gamma", gamma)? },
            "inv" => LrPolicy::Inv { gamma: need("gamma", gamma)?, power: need("power", power)? },
            "multistep" => {
                steps.sort_unstable();
                LrPolicy::MultiStep { gamma: need("gamma", gamma)?, steps: steps.into_iter().map(|(_, v)| v).collect() }
            }
            "poly" => LrPolicy::Poly { power: need("power", power)?, max_iter: c.max_iter.max(1) },
            "sigmoid" => LrPolicy::Sigmoid { gamma: need("gamma", gamma)?, stepsize: count("stepsize", need("stepsize", stepsize)?)? },
            other => return Err(TrainError::Config(format!("lr_policy {other:?} is not supported (fixed, step, exp, inv, multistep, poly, sigmoid)"))),
        };
        Ok(c)
    }

    /// The learning rate at iteration `iter` (before lr_mult).
    pub fn lr(&self, iter: u64) -> f64 {
        let b = self.base_lr;
        let it = iter as f64;
        match &self.policy {
            LrPolicy::Fixed => b,
            LrPolicy::Step { gamma, stepsize } => b * gamma.powf((iter / (*stepsize).max(1)) as f64),
            LrPolicy::Exp { gamma } => b * gamma.powf(it),
            LrPolicy::Inv { gamma, power } => b * (1.0 + gamma * it).powf(-power),
            LrPolicy::MultiStep { gamma, steps } => b * gamma.powi(steps.iter().filter(|&&s| iter >= s).count() as i32),
            LrPolicy::Poly { power, max_iter } => b * (1.0 - (it / *max_iter as f64).min(1.0)).powf(*power),
            LrPolicy::Sigmoid { gamma, stepsize } => b / (1.0 + (-gamma * (it - *stepsize as f64)).exp()),
        }
    }

    /// Hyper-parameters to record on a trained version, in the spelling `from_hyper` reads.
    pub fn to_hyper(&self) -> Vec<(String, String, Option<f64>)> {
        let mut v: Vec<(String, String, Option<f64>)> = Vec::new();
        let mut n = |k: &str, x: f64| v.push((k.to_string(), format!("{x}"), Some(x)));
        n("base_lr", self.base_lr);
        n("momentum", self.momentum);
        n("weight_decay", self.weight_decay);
        n("max_iter", self.max_iter as f64);
        if let Some(b) = self.batch_size {
            n("batch_size", b as f64);
        }
        match &self.policy {
            LrPolicy::Fixed => {}
            LrPolicy::Step { gamma, stepsize } | LrPolicy::Sigmoid { gamma, stepsize } => {
                n("gamma", *gamma);
                n("stepsize", *stepsize as f64);
            }
            LrPolicy::Exp { gamma } => n("gamma", *gamma),
            LrPolicy::Inv { gamma, power } => {
                n("gamma", *gamma);
                n("power", *power);
            }
            LrPolicy::MultiStep { gamma, steps } => {
                n("gamma", *gamma);
                for (i, s) in steps.iter().enumerate() {
                    n(&format!("stepvalue.{i}"), *s as f64);
                }
            }
            LrPolicy::Poly { power, .. } => n("power", *power),
        }
        if self.kind == SolverKind::Adam {
            n("momentum2", self.momentum2);
            n("delta", self.delta);
        }
        let policy = match &self.policy {
            LrPolicy::Fixed => "fixed",
            LrPolicy::Step { .. } => "step",
            LrPolicy::Exp { .. } => "exp",
            LrPolicy::Inv { .. } => "inv",
            LrPolicy::MultiStep { .. } => "multistep",
            LrPolicy::Poly { .. } => "poly",
            LrPolicy::Sigmoid { .. } => "sigmoid",
        };
        v.push(("lr_policy".into(), policy.into(), None));
        v.push(("type".into(), if self.kind == SolverKind::Adam { "Adam" } else { "SGD" }.into(), None));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Solver state: one history tensor per learnable parameter (two for Adam).
pub struct Solver {
    pub config: SolverConfig,
    history: Vec<Option<Tensor>>,
    history2: Vec<Option<Tensor>>,
}

impl Solver {
    pub fn new(config: SolverConfig, params: &[Param]) -> Solver {
        Solver { config, history: vec![None; params.len()], history2: vec![None; params.len()] }
    }

    /// Applies one update at iteration `iter` (0-based, Caffe's `iter_`) from `grads`.
    pub fn step(&mut self, iter: u64, params: &[Param], grads: &candle_core::backprop::GradStore) -> Result<f64> {
        let rate = self.config.lr(iter);
        let mut diffs: Vec<Option<Tensor>> = params
            .iter()
            .map(|p| if p.learnable && p.lr_mult != 0.0 { grads.get(p.var.as_tensor()).cloned() } else { None })
            .collect();
        if self.config.clip_gradients > 0.0 {
            let mut sumsq = 0f64;
            for d in diffs.iter().flatten() {
                sumsq += d.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
            let norm = sumsq.sqrt();
            if norm > self.config.clip_gradients {
                let s = self.config.clip_gradients / norm;
                for d in diffs.iter_mut().flatten() {
                    *d = (&*d * s)?;
                }
            }
        }
        let t = iter + 1;
        for (i, (p, d)) in params.iter().zip(diffs).enumerate() {
            let Some(mut g) = d else { continue };
            let w = p.var.as_tensor();
            let decay = self.config.weight_decay * p.decay_mult;
            if decay != 0.0 {
                g = if self.config.l1 { (g + (w.sign()? * decay)?)? } else { (g + (w * decay)?)? };
            }
            let lr = rate * p.lr_mult;
            match self.config.kind {
                SolverKind::Sgd => {
                    let v = match self.history[i].take() {
                        Some(h) if self.config.momentum != 0.0 => ((h * self.config.momentum)? + (g * lr)?)?,
                        _ => (g * lr)?,
                    };
                    update(&p.var, &(w - &v)?)?;
                    self.history[i] = Some(v);
                }
                SolverKind::Adam => {
                    let (b1, b2) = (self.config.momentum, self.config.momentum2);
                    let m = match self.history[i].take() {
                        Some(h) => ((h * b1)? + (&g * (1.0 - b1))?)?,
                        None => (&g * (1.0 - b1))?,
                    };
                    let v = match self.history2[i].take() {
                        Some(h) => ((h * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let correction = (1.0 - b2.powf(t as f64)).sqrt() / (1.0 - b1.powf(t as f64));
                    let step = (m.clone() / (v.sqrt()? + self.config.delta)?)?;
                    update(&p.var, &(w - (step * (lr * correction))?)?)?;
                    self.history[i] = Some(m);
                    self.history2[i] = Some(v);
                }
            }
        }
        Ok(rate)
    }
}

fn update(var: &Var, value: &Tensor) -> Result<()> {
    var.set(&value.detach())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(items: &[(&str, &str)]) -> Result<SolverConfig> {
        SolverConfig::from_hyper(items.iter().map(|(k, v)| (*k, *v, v.parse::<f64>().ok())))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn lr_policies_match_hand_computed_values() -> Result<()> {
        let c = cfg(&[("base_lr", "0.01"), ("lr_policy", "inv"), ("gamma", "0.0001"), ("power", "0.75")])?;
        assert!(close(c.lr(0), 0.01));
        // 0.01 * (1 + 0.0001 * 10000)^-0.75 = 0.01 * 2^-0.75
        assert!(close(c.lr(10_000), 0.005_946_035_575_013_605));
        let c = cfg(&[("base_lr", "0.1"), ("lr_policy", "step"), ("gamma", "0.1"), ("stepsize", "100")])?;
        assert!(close(c.lr(99), 0.1));
        assert!(close(c.lr(100), 0.01));
        assert!(close(c.lr(250), 0.001));
        let c = cfg(&[("base_lr", "1"), ("lr_policy", "multistep"), ("gamma", "0.5"), ("stepvalue.1", "30"), ("stepvalue.0", "10")])?;
        assert_eq!((c.lr(9), c.lr(10), c.lr(29), c.lr(30), c.lr(1000)), (1.0, 0.5, 0.5, 0.25, 0.25));
        let c = cfg(&[("base_lr", "0.2"), ("lr_policy", "poly"), ("power", "2"), ("max_iter", "100")])?;
        assert!(close(c.lr(50), 0.05));
        assert!(close(c.lr(100), 0.0));
        let c = cfg(&[("base_lr", "0.3"), ("lr_policy", "fixed")])?;
        assert!(close(c.lr(12345), 0.3));
        let c = cfg(&[("base_lr", "1"), ("lr_policy", "exp"), ("gamma", "0.5")])?;
        assert!(close(c.lr(3), 0.125));
        Ok(())
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(cfg(&[("lr_policy", "step"), ("gamma", "0.1")]).is_err());
        assert!(cfg(&[("lr_policy", "cosine")]).is_err());
        assert!(cfg(&[("base_lr", "-1")]).is_err());
        assert!(cfg(&[("max_iter", "1.5")]).is_err());
        assert!(cfg(&[("type", "RMSProp")]).is_err());
        let c = cfg(&[("type", "Adam"), ("base_lr", "0.001"), ("momentum", "0.9")]);
        assert!(matches!(c, Ok(SolverConfig { kind: SolverKind::Adam, .. })));
    }

    #[test]
    fn sgd_momentum_and_adam_updates_match_hand_computed_values() -> Result<()> {
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let mk = |v: f64| -> Result<Param> {
            Ok(Param {
                layer: "l".into(),
                blob: "weight".into(),
                var: Var::from_tensor(&Tensor::new(&[v], &dev)?)?,
                lr_mult: 1.0,
                decay_mult: 1.0,
                learnable: true,
            })
        };
        // loss = w^2 / 2, gradient w.
        let p = vec![mk(1.0)?];
        let c = cfg(&[("base_lr", "0.1"), ("momentum", "0.9"), ("weight_decay", "0.5")])?;
        let mut s = Solver::new(c, &p);
        let mut w = 1.0f64;
        let mut v = 0.0f64;
        for it in 0..3 {
            let loss = (p[0].var.as_tensor().sqr()? * 0.5)?.sum_all()?;
            let g = loss.backward()?;
            s.step(it, &p, &g)?;
            v = 0.9 * v + 0.1 * (w + 0.5 * w);
            w -= v;
            let got = p[0].var.as_tensor().to_vec1::<f64>()?[0];
            assert!((got - w).abs() < 1e-12, "{it}: {got} vs {w}");
        }
        let p = vec![mk(1.0)?];
        let c = cfg(&[("type", "Adam"), ("base_lr", "0.1"), ("momentum", "0.9"), ("momentum2", "0.999"), ("delta", "1e-8")])?;
        let mut s = Solver::new(c, &p);
        let (mut w, mut m, mut v2) = (1.0f64, 0.0f64, 0.0f64);
        for it in 0..3u64 {
            let loss = (p[0].var.as_tensor().sqr()? * 0.5)?.sum_all()?;
            let g = loss.backward()?;
            s.step(it, &p, &g)?;
            m = 0.9 * m + 0.1 * w;
            v2 = 0.999 * v2 + 0.001 * w * w;
            let t = (it + 1) as f64;
            let lr = 0.1 * (1.0 - 0.999f64.powf(t)).sqrt() / (1.0 - 0.9f64.powf(t));
            w -= lr * m / (v2.sqrt() + 1e-8);
            let got = p[0].var.as_tensor().to_vec1::<f64>()?[0];
            assert!((got - w).abs() < 1e-12, "adam {it}: {got} vs {w}");
        }
        Ok(())
    }
}
