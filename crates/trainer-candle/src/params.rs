//! Reading Caffe layer parameters out of dlv-graph messages.

use dlv_graph::{Message, Node, Value};

use crate::error::{Result, TrainError};

pub fn msg<'a>(node: &'a Node, key: &str) -> Option<&'a Message> {
    node.params.get_msg(key)
}

pub fn f64_of(m: Option<&Message>, key: &str) -> Option<f64> {
    m.and_then(|m| m.get(key)).and_then(Value::as_f64)
}

pub fn str_of<'a>(m: Option<&'a Message>, key: &str) -> Option<&'a str> {
    m.and_then(|m| m.get(key)).and_then(Value::as_str)
}

pub fn bool_of(m: Option<&Message>, key: &str) -> Option<bool> {
    m.and_then(|m| m.get(key)).and_then(|v| match v {
        Value::Bool(b) => Some(*b),
        Value::Int(i) => Some(*i != 0),
        Value::Enum(s) | Value::Str(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    })
}

/// A non-negative integer field.
pub fn usize_of(node: &Node, m: Option<&Message>, key: &str) -> Result<Option<usize>> {
    match m.and_then(|m| m.get(key)) {
        None => Ok(None),
        Some(v) => match v.as_int() {
            Some(i) if i >= 0 => Ok(Some(i as usize)),
            _ => Err(TrainError::layer(&node.name, format!("{key} must be a non-negative integer"))),
        },
    }
}

/// A signed integer field.
pub fn int_of(node: &Node, m: Option<&Message>, key: &str) -> Result<Option<i64>> {
    match m.and_then(|m| m.get(key)) {
        None => Ok(None),
        Some(v) => v.as_int().map(Some).ok_or_else(|| TrainError::layer(&node.name, format!("{key} must be an integer"))),
    }
}

/// A spatial pair from Caffe's repeated field (`kernel_size: 3` or two values) or the
/// `_h`/`_w` pair, with a default when neither is given.
pub fn pair(node: &Node, m: Option<&Message>, rep: &str, h: &str, w: &str, default: Option<usize>) -> Result<(usize, usize)> {
    let hv = usize_of(node, m, h)?;
    let wv = usize_of(node, m, w)?;
    if hv.is_some() || wv.is_some() {
        return match (hv, wv) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(TrainError::layer(&node.name, format!("{h} and {w} must be given together"))),
        };
    }
    let vals: Vec<&Value> = m.map(|m| m.get_all(rep).collect()).unwrap_or_default();
    let mut ints = Vec::new();
    for v in vals {
        match v.as_int() {
            Some(i) if i >= 0 => ints.push(i as usize),
            _ => return Err(TrainError::layer(&node.name, format!("{rep} must be a non-negative integer"))),
        }
    }
    match ints.as_slice() {
        [] => default.map(|d| (d, d)).ok_or_else(|| TrainError::layer(&node.name, format!("{rep} is required"))),
        [a] => Ok((*a, *a)),
        [a, b] => Ok((*a, *b)),
        _ => Err(TrainError::layer(&node.name, format!("{rep} has {} values; only 2-D is supported", ints.len()))),
    }
}

/// `param { lr_mult decay_mult }` of the i-th learnable blob (Caffe defaults 1 and 1).
pub fn mults(node: &Node, i: usize) -> (f64, f64) {
    let p = node.params.get_all("param").nth(i).and_then(Value::as_msg);
    (f64_of(p, "lr_mult").unwrap_or(1.0), f64_of(p, "decay_mult").unwrap_or(1.0))
}

/// Caffe's `loss_weight` for the first top (1 for loss layers, 0 otherwise by default).
pub fn loss_weight(node: &Node, default: f64) -> f64 {
    node.params.get("loss_weight").and_then(Value::as_f64).unwrap_or(default)
}
