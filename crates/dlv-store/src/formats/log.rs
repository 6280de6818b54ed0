//! Metric series from training logs: Caffe's glog output and our trainer's JSON lines.
//!
//! Caffe lines understood (the glog prefix `I1122 10:00:00.123 12345 solver.cpp:228] ` is
//! optional):
//! - `Iteration N, loss = X` (also `Iteration N (1.2 iter/s, 3.4s/20 iters), loss = X`) ->
//!   `train/loss` at N;
//! - `Iteration N, lr = X` -> `lr`;
//! - `Train net output #k: NAME = X (* w = Y loss)` -> `train/NAME` at the last iteration seen;
//! - `Iteration N, Testing net (#k)` followed by `Test net output #j: NAME = X` -> `test/NAME` at
//!   N (`test{k}/NAME` for test nets other than #0).
//!
//! Each series keeps one point per iteration, the first one logged (so the `Iteration N, loss`
//! line wins over `Train net output #0: loss` of the same iteration), sorted by iteration.
//! Non-finite values (`nan`, `inf`) are dropped: they cannot be stored as JSON numbers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// One metric over training: `(iteration, value)` points sorted by iteration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// Builds series in first-appearance order, one point per iteration (first wins).
#[derive(Default)]
struct Collector {
    order: Vec<String>,
    series: HashMap<String, BTreeMap<u64, f64>>,
}

impl Collector {
    fn add(&mut self, name: &str, iter: u64, value: f64) {
        if !value.is_finite() {
            return;
        }
        if !self.series.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.series.entry(name.to_string()).or_default().entry(iter).or_insert(value);
    }

    fn finish(mut self) -> Vec<Series> {
        self.order
            .into_iter()
            .map(|name| {
                let points = self.series.remove(&name).map(|m| m.into_iter().collect()).unwrap_or_default();
                Series { name, points }
            })
            .collect()
    }
}

/// Strips a glog prefix (`I1122 10:00:00.123 12345 file.cpp:228] `) if there is one.
fn strip_glog(line: &str) -> (&str, bool) {
    let b = line.as_bytes();
    let is_glog = b.len() > 5 && matches!(b[0], b'I' | b'W' | b'E' | b'F') && b[1..5].iter().all(u8::is_ascii_digit);
    if is_glog {
        if let Some(p) = line.find("] ") {
            return (&line[p + 2..], true);
        }
    }
    (line, false)
}

/// Parses the number at the start of `s` (after spaces); Caffe prints `nan`, `-nan`, `inf`.
fn number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s.find(|c: char| c.is_whitespace() || c == ',' || c == '(').unwrap_or(s.len());
    let tok = &s[..end];
    match tok {
        "nan" | "-nan" | "NaN" => Some(f64::NAN),
        _ => tok.parse().ok(),
    }
}

fn leading_u64(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

/// `NAME = X ...` -> (NAME, X).
fn name_value(s: &str) -> Option<(&str, f64)> {
    let (name, rest) = s.split_once(" = ")?;
    Some((name.trim(), number(rest)?))
}

/// Reads the metric series of a Caffe training log. Unrecognised lines are ignored.
pub fn read_caffe_log(src: &str) -> Vec<Series> {
    let mut c = Collector::default();
    let mut iter: u64 = 0;
    let mut test_net: Option<(u64, u64)> = None;
    for raw in src.lines() {
        let (msg, _) = strip_glog(raw.trim_end());
        let msg = msg.trim_start();
        if let Some(rest) = msg.strip_prefix("Iteration ") {
            let Some((n, rest)) = leading_u64(rest) else { continue };
            iter = n;
            // Skip the optional "(25.1 iter/s, 3.99s/100 iters)".
            let rest = match rest.strip_prefix(" (") {
                Some(r) => r.split_once(')').map(|(_, after)| after).unwrap_or(""),
                None => rest,
            };
            let Some(rest) = rest.strip_prefix(", ") else { continue };
            if let Some(v) = rest.strip_prefix("loss = ").and_then(number) {
                c.add("train/loss", n, v);
                test_net = None;
            } else if let Some(v) = rest.strip_prefix("lr = ").and_then(number) {
                c.add("lr", n, v);
            } else if let Some(r) = rest.strip_prefix("Testing net (#") {
                let k = leading_u64(r).map(|(k, _)| k).unwrap_or(0);
                test_net = Some((n, k));
            }
        } else if let Some(rest) = msg.strip_prefix("Test net output #") {
            let Some((at, k)) = test_net else { continue };
            let Some((_, rest)) = rest.split_once(": ") else { continue };
            if let Some((name, v)) = name_value(rest) {
                let series = if k == 0 { format!("test/{name}") } else { format!("test{k}/{name}") };
                c.add(&series, at, v);
            }
        } else if let Some(rest) = msg.strip_prefix("Train net output #") {
            let Some((_, rest)) = rest.split_once(": ") else { continue };
            if let Some((name, v)) = name_value(rest) {
                c.add(&format!("train/{name}"), iter, v);
            }
        }
    }
    c.finish()
}

/// Whether the start of a text file looks like a Caffe log: a glog line from Caffe's sources,
/// or a line of Caffe's solver output.
pub fn is_caffe_log(src_prefix: &str) -> bool {
    const SOURCES: &[&str] = &["caffe.cpp:", "solver.cpp:", "net.cpp:", "layer_factory.hpp:", "data_layer.cpp:", "upgrade_proto.cpp:"];
    src_prefix.lines().take(2000).any(|line| {
        let (msg, glog) = strip_glog(line);
        let msg = msg.trim_start();
        (glog && SOURCES.iter().any(|s| line.contains(s)))
            || (msg.starts_with("Iteration ") && (msg.contains(", loss = ") || msg.contains("Testing net")))
            || msg.starts_with("Test net output #")
    })
}

fn jsonl_err(offset: usize, msg: String) -> StoreError {
    StoreError::Format { path: PathBuf::from("<JSON-lines metrics>"), offset: Some(offset as u64), msg }
}

/// Reads our trainer's JSON-lines metrics: one object per line with an `iter` (or `iteration`,
/// `step`) integer; every other numeric key is a series, named `PHASE/KEY` when the line has a
/// string `phase` (`train`, `test`). Blank lines are skipped; other lines must be JSON objects.
pub fn read_jsonl_metrics(src: &str) -> Result<Vec<Series>> {
    let mut c = Collector::default();
    let mut offset = 0usize;
    for (lineno, line) in src.split_inclusive('\n').enumerate() {
        let at = offset;
        offset += line.len();
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| jsonl_err(at, format!("line {}: not JSON: {e}", lineno + 1)))?;
        let serde_json::Value::Object(obj) = v else {
            return Err(jsonl_err(at, format!("line {}: not a JSON object", lineno + 1)));
        };
        let iter = ["iter", "iteration", "step"]
            .iter()
            .find_map(|k| obj.get(*k))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| jsonl_err(at, format!("line {}: no non-negative integer \"iter\"", lineno + 1)))?;
        let phase = obj.get("phase").and_then(serde_json::Value::as_str);
        for (k, v) in &obj {
            if matches!(k.as_str(), "iter" | "iteration" | "step" | "phase") {
                continue;
            }
            if let Some(x) = v.as_f64() {
                let name = match phase {
                    Some(p) if !p.is_empty() => format!("{p}/{k}"),
                    _ => k.clone(),
                };
                c.add(&name, iter, x);
            }
        }
    }
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iteration_line_variants() {
        let log = "I0101 00:00:00.000 1 solver.cpp:228] Iteration 100 (25.1 iter/s, 3.99s/100 iters), loss = 0.5\n\
                   I0101 00:00:00.000 1 solver.cpp:244]     Train net output #0: loss = 0.45 (* 1 = 0.45 loss)\n\
                   I0101 00:00:00.000 1 sgd_solver.cpp:106] Iteration 100, lr = 0.01\n\
                   Iteration 200, loss = nan\n";
        let s = read_caffe_log(log);
        assert_eq!(s[0], Series { name: "train/loss".into(), points: vec![(100, 0.5)] });
        assert_eq!(s[1], Series { name: "lr".into(), points: vec![(100, 0.01)] });
        assert!(is_caffe_log(log));
        assert!(!is_caffe_log("hello\nworld\n"));
    }

    #[test]
    fn jsonl() {
        let src = "{\"iter\": 100, \"loss\": 0.3}\n\n{\"iter\": 100, \"phase\": \"test\", \"accuracy\": 0.9, \"note\": \"x\"}\n";
        let s = read_jsonl_metrics(src).unwrap_or_default();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1], Series { name: "test/accuracy".into(), points: vec![(100, 0.9)] });
        let err = read_jsonl_metrics("{\"iter\": 1}\n[1]\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 2"), "{err}");
    }
}
