//! Matching of weight tensors to the layers of a network.
//!
//! A tensor named `[prefix.]layer.blob` matches the layer `layer` (layer names may themselves
//! contain dots) and its blob `blob`, where `blob` is a name (`weight`, `bias`, `running_mean`,
//! ...) or a Caffe blob index (`conv1.0`, `conv1.1`). One prefix common to the file (`module.`
//! from `DataParallel`, `model.`, `state_dict.`, ...) is found automatically: the prefix under
//! which most tensors match a layer is stripped from all of them.
//!
//! The blobs a layer should have are `node.blobs` (filled by dlv-graph's shape inference). When
//! a layer has none (shapes unknown), names alone decide and nothing is reported missing; blob
//! indices are then named by [`caffe_blob_name`]. Shapes are compared exactly where the expected
//! shape is known (non-empty): `[out, in]` against `[out, in, 1, 1]` is a mismatch.

use std::collections::{HashMap, HashSet};
use std::fmt;

use dlv_graph::{Net, Node};
use serde::{Deserialize, Serialize};

use super::caffemodel::caffe_blob_name;
use crate::TensorInfo;

/// A tensor assigned to a layer's blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMatch {
    /// Index into the tensor list given to [`match_tensors`].
    pub tensor: usize,
    pub layer: String,
    pub blob: String,
}

/// A tensor whose name matches a blob but whose shape does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeMismatch {
    /// Index into the tensor list given to [`match_tensors`].
    pub tensor: usize,
    pub layer: String,
    pub blob: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// Outcome of [`match_tensors`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchReport {
    pub matched: Vec<TensorMatch>,
    /// Names of tensors that match no layer blob (or a blob already taken by another tensor).
    pub unmatched_tensors: Vec<String>,
    /// `(layer, blob)` pairs the network expects that no tensor provides.
    pub missing_blobs: Vec<(String, String)>,
    pub wrong_shape: Vec<ShapeMismatch>,
    /// The name prefix stripped from the tensors (`""` when none).
    pub prefix: String,
}

impl MatchReport {
    /// True when every tensor matched and nothing is missing or mis-shaped.
    pub fn is_complete(&self) -> bool {
        self.unmatched_tensors.is_empty() && self.missing_blobs.is_empty() && self.wrong_shape.is_empty()
    }
}

fn dims(d: &[usize]) -> String {
    let parts: Vec<String> = d.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

impl fmt::Display for MatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.matched.len() + self.unmatched_tensors.len() + self.wrong_shape.len();
        let layers: HashSet<&str> = self.matched.iter().map(|m| m.layer.as_str()).collect();
        write!(f, "{} of {total} tensors matched to {} layers", self.matched.len(), layers.len())?;
        if !self.prefix.is_empty() {
            write!(f, " (prefix '{}' stripped)", self.prefix)?;
        }
        writeln!(f)?;
        if !self.wrong_shape.is_empty() {
            writeln!(f, "wrong shapes ({}):", self.wrong_shape.len())?;
            for m in &self.wrong_shape {
                writeln!(f, "  {}.{}: expected {}, found {}", m.layer, m.blob, dims(&m.expected), dims(&m.found))?;
            }
        }
        if !self.missing_blobs.is_empty() {
            writeln!(f, "missing blobs ({}):", self.missing_blobs.len())?;
            for (l, b) in &self.missing_blobs {
                writeln!(f, "  {l}.{b}")?;
            }
        }
        if !self.unmatched_tensors.is_empty() {
            writeln!(f, "unmatched tensors ({}):", self.unmatched_tensors.len())?;
            for t in &self.unmatched_tensors {
                writeln!(f, "  {t}")?;
            }
        }
        Ok(())
    }
}

/// A way to read a tensor name: `prefix` + `layer` + `.` + `blob`.
struct Candidate<'a> {
    prefix: &'a str,
    layer: &'a str,
    blob: &'a str,
}

fn candidates<'a>(name: &'a str, layers: &HashMap<&str, &Node>) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    let starts = std::iter::once(0).chain(name.match_indices('.').map(|(i, _)| i + 1));
    for start in starts {
        let rest = &name[start..];
        if let Some(q) = rest.rfind('.') {
            let layer = &rest[..q];
            if layers.contains_key(layer) {
                out.push(Candidate { prefix: &name[..start], layer, blob: &rest[q + 1..] });
            }
        }
    }
    out
}

/// Matches tensors (by name and shape) to the layers of `net`.
pub fn match_tensors(net: &Net, tensors: &[TensorInfo]) -> MatchReport {
    // Layer name -> node; with duplicate names (per-phase variants), prefer one with blobs.
    let mut layers: HashMap<&str, &Node> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for node in net.nodes() {
        match layers.get(node.name.as_str()) {
            None => {
                layers.insert(&node.name, node);
                order.push(&node.name);
            }
            Some(prev) if prev.blobs.is_empty() && !node.blobs.is_empty() => {
                layers.insert(&node.name, node);
            }
            Some(_) => {}
        }
    }

    let cands: Vec<Vec<Candidate<'_>>> = tensors.iter().map(|t| candidates(&t.name, &layers)).collect();
    let mut votes: HashMap<&str, usize> = HashMap::new();
    for cs in &cands {
        let prefixes: HashSet<&str> = cs.iter().map(|c| c.prefix).collect();
        for p in prefixes {
            *votes.entry(p).or_default() += 1;
        }
    }
    let prefix = votes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.len().cmp(&a.0.len())))
        .map(|(p, _)| *p)
        .unwrap_or("");

    let mut report = MatchReport { prefix: prefix.to_string(), ..MatchReport::default() };
    let mut claimed: HashSet<(String, String)> = HashSet::new();
    for (i, (t, cs)) in tensors.iter().zip(&cands).enumerate() {
        let pick = cs
            .iter()
            .find(|c| c.prefix == prefix)
            .or_else(|| cs.iter().find(|c| c.prefix.is_empty()))
            .or_else(|| cs.first());
        let resolved = pick.and_then(|c| {
            let node = layers.get(c.layer)?;
            let blob = resolve_blob(node, c.blob)?;
            Some((node, c.layer.to_string(), blob))
        });
        let Some((node, layer, blob)) = resolved else {
            report.unmatched_tensors.push(t.name.clone());
            continue;
        };
        if !claimed.insert((layer.clone(), blob.clone())) {
            report.unmatched_tensors.push(t.name.clone());
            continue;
        }
        let expected = node.blobs.iter().find(|b| b.name == blob).map(|b| b.shape.clone()).unwrap_or_default();
        if !expected.is_empty() && expected != t.shape {
            report.wrong_shape.push(ShapeMismatch { tensor: i, layer, blob, expected, found: t.shape.clone() });
        } else {
            report.matched.push(TensorMatch { tensor: i, layer, blob });
        }
    }
    for name in order {
        let Some(node) = layers.get(name) else { continue };
        for b in &node.blobs {
            if !claimed.contains(&(name.to_string(), b.name.clone())) {
                report.missing_blobs.push((name.to_string(), b.name.clone()));
            }
        }
    }
    report
}

/// The blob of `node` that `spec` (a name or a Caffe index) designates, if any.
fn resolve_blob(node: &Node, spec: &str) -> Option<String> {
    if !spec.is_empty() && spec.bytes().all(|c| c.is_ascii_digit()) {
        let idx: usize = spec.parse().ok()?;
        if node.blobs.is_empty() {
            return Some(caffe_blob_name(&node.layer_type, idx));
        }
        return node.blobs.get(idx).map(|b| b.name.clone());
    }
    if node.blobs.is_empty() || node.blobs.iter().any(|b| b.name == spec) {
        Some(spec.to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;
    use dlv_graph::BlobSpec;

    fn net() -> Net {
        let mut conv = Node::new("conv1", "Convolution");
        conv.blobs = vec![
            BlobSpec { name: "weight".into(), shape: vec![20, 1, 5, 5] },
            BlobSpec { name: "bias".into(), shape: vec![20] },
        ];
        let mut ip = Node::new("ip1", "InnerProduct");
        ip.blobs = vec![
            BlobSpec { name: "weight".into(), shape: vec![10, 20] },
            BlobSpec { name: "bias".into(), shape: vec![10] },
        ];
        let relu = Node::new("relu1", "ReLU");
        let mut n = Net::new("t");
        n.push_layer(conv);
        n.push_layer(relu);
        n.push_layer(ip);
        n
    }

    fn t(name: &str, shape: &[usize]) -> TensorInfo {
        TensorInfo { name: name.into(), dtype: DType::F32, shape: shape.to_vec() }
    }

    #[test]
    fn matches_names_indices_and_prefixes() {
        let ts = vec![
            t("module.conv1.weight", &[20, 1, 5, 5]),
            t("module.conv1.1", &[20]),
            t("module.ip1.weight", &[10, 20, 1, 1]),
            t("module.fc9.weight", &[3]),
        ];
        let r = match_tensors(&net(), &ts);
        assert_eq!(r.prefix, "module.");
        assert_eq!(r.matched.len(), 2);
        assert_eq!(r.matched[1].blob, "bias");
        assert_eq!(r.wrong_shape.len(), 1);
        assert_eq!(r.wrong_shape[0].expected, vec![10, 20]);
        assert_eq!(r.unmatched_tensors, vec!["module.fc9.weight".to_string()]);
        assert_eq!(r.missing_blobs, vec![("ip1".to_string(), "bias".to_string())]);
        let text = r.to_string();
        assert!(text.contains("ip1.weight: expected [10, 20], found [10, 20, 1, 1]"), "{text}");
        assert!(!r.is_complete());
    }

    #[test]
    fn unknown_shapes_match_by_name_only() {
        let mut n = Net::new("t");
        n.push_layer(Node::new("conv1", "Convolution"));
        let ts = vec![t("conv1.0", &[2, 2]), t("conv1.1", &[2])];
        let r = match_tensors(&n, &ts);
        assert!(r.is_complete(), "{r}");
        assert_eq!(r.matched[0].blob, "weight");
    }
}
