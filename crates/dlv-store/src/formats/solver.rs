//! Hyper-parameters from a Caffe `solver.prototxt` or a TOML training config, as flat
//! `(key, value)` lists.
//!
//! Every scalar field is kept (solver fields in source order, TOML keys in key order); nested
//! messages and tables are flattened with dots (`train_state.level`). A key that repeats in one message (`stepvalue: 1000`,
//! `stepvalue: 2000`) becomes numbered keys `stepvalue.0`, `stepvalue.1`, and so do TOML arrays,
//! so every value stays a number that queries can compare. Enum identifiers (`lr_policy: step`
//! written bare, `solver_mode: GPU`) become text. The inline networks of a solver (`net_param`,
//! `train_net_param`, `test_net_param`) are networks, not hyper-parameters, and are skipped.

use std::collections::HashMap;
use std::path::PathBuf;

use dlv_graph::{Message, Value};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// One hyper-parameter value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum HyperValue {
    Num(f64),
    Int(i64),
    Text(String),
    Bool(bool),
}

impl HyperValue {
    /// The value as a number, for integers and floats.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            HyperValue::Num(v) => Some(*v),
            HyperValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
}

impl std::fmt::Display for HyperValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HyperValue::Num(v) => write!(f, "{v}"),
            HyperValue::Int(v) => write!(f, "{v}"),
            HyperValue::Text(s) => f.write_str(s),
            HyperValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Solver fields that embed whole networks.
const SKIPPED: &[&str] = &["net_param", "train_net_param", "test_net_param"];

/// Reads a Caffe `SolverParameter` in protobuf text format. `file` names it in errors.
pub fn read_solver(src: &str, file: &str) -> Result<Vec<(String, HyperValue)>> {
    let msg = dlv_graph::textformat::parse(src, file)?;
    let mut out = Vec::new();
    flatten_msg(&msg, "", 0, &mut out);
    Ok(out)
}

fn keyed(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

fn flatten_msg(msg: &Message, prefix: &str, depth: usize, out: &mut Vec<(String, HyperValue)>) {
    if depth > 32 {
        return;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (k, _) in &msg.fields {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, v) in &msg.fields {
        if depth == 0 && SKIPPED.contains(&k.as_str()) {
            continue;
        }
        let n = seen.entry(k.as_str()).or_default();
        let key = if counts.get(k.as_str()).copied().unwrap_or(0) > 1 {
            keyed(prefix, &format!("{k}.{n}"))
        } else {
            keyed(prefix, k)
        };
        *n += 1;
        let hv = match v {
            Value::Int(i) => HyperValue::Int(*i),
            Value::Float(x) => HyperValue::Num(*x),
            Value::Bool(b) => HyperValue::Bool(*b),
            Value::Str(s) | Value::Enum(s) => HyperValue::Text(s.clone()),
            Value::Msg(m) => {
                flatten_msg(m, &key, depth + 1, out);
                continue;
            }
        };
        out.push((key, hv));
    }
}

/// Reads a TOML training config. `file` names it in errors.
pub fn read_toml_config(src: &str, file: &str) -> Result<Vec<(String, HyperValue)>> {
    let table: toml::Table = toml::from_str(src).map_err(|e| StoreError::Format {
        path: PathBuf::from(file),
        offset: e.span().map(|s| s.start as u64),
        msg: format!("invalid TOML: {}", e.message()),
    })?;
    let mut out = Vec::new();
    flatten_toml_table(&table, "", 0, &mut out);
    Ok(out)
}

fn flatten_toml_table(t: &toml::Table, prefix: &str, depth: usize, out: &mut Vec<(String, HyperValue)>) {
    for (k, v) in t {
        flatten_toml(v, &keyed(prefix, k), depth + 1, out);
    }
}

fn flatten_toml(v: &toml::Value, key: &str, depth: usize, out: &mut Vec<(String, HyperValue)>) {
    if depth > 32 {
        return;
    }
    match v {
        toml::Value::String(s) => out.push((key.to_string(), HyperValue::Text(s.clone()))),
        toml::Value::Integer(i) => out.push((key.to_string(), HyperValue::Int(*i))),
        toml::Value::Float(x) => out.push((key.to_string(), HyperValue::Num(*x))),
        toml::Value::Boolean(b) => out.push((key.to_string(), HyperValue::Bool(*b))),
        toml::Value::Datetime(d) => out.push((key.to_string(), HyperValue::Text(d.to_string()))),
        toml::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten_toml(x, &format!("{key}.{i}"), depth + 1, out);
            }
        }
        toml::Value::Table(t) => flatten_toml_table(t, key, depth, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_messages_and_repeats() {
        let mut inner = Message::default();
        inner.push("level", Value::Int(2));
        let mut m = Message::default();
        m.push("base_lr", Value::Float(0.01));
        m.push("lr_policy", Value::Str("multistep".into()));
        m.push("stepvalue", Value::Int(1000));
        m.push("stepvalue", Value::Int(2000));
        m.push("solver_mode", Value::Enum("GPU".into()));
        m.push("train_state", Value::Msg(inner));
        m.push("net_param", Value::Msg(Message::default()));
        let mut out = Vec::new();
        flatten_msg(&m, "", 0, &mut out);
        assert_eq!(
            out,
            vec![
                ("base_lr".into(), HyperValue::Num(0.01)),
                ("lr_policy".into(), HyperValue::Text("multistep".into())),
                ("stepvalue.0".into(), HyperValue::Int(1000)),
                ("stepvalue.1".into(), HyperValue::Int(2000)),
                ("solver_mode".into(), HyperValue::Text("GPU".into())),
                ("train_state.level".into(), HyperValue::Int(2)),
            ]
        );
    }

    #[test]
    fn toml_config() {
        let src = "name = \"run1\"\n[optimizer]\nlr = 0.1\nmomentum = 0.9\nmilestones = [30, 60]\n[data]\nbatch_size = 64\nshuffle = true\n";
        let out = read_toml_config(src, "train.toml").unwrap_or_default();
        assert!(out.contains(&("optimizer.lr".into(), HyperValue::Num(0.1))));
        assert!(out.contains(&("optimizer.milestones.1".into(), HyperValue::Int(60))));
        assert!(out.contains(&("data.batch_size".into(), HyperValue::Int(64))));
        assert!(out.contains(&("data.shuffle".into(), HyperValue::Bool(true))));
        let err = read_toml_config("lr = = 1", "bad.toml").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("bad.toml at byte"), "{err}");
    }
}
