//! Alignment of two networks for `dlv diff`: which layer of one net corresponds to which layer
//! of the other, so that a renamed or inserted layer shows as such and does not shift every
//! layer after it.
//!
//! Layers are matched by name first; the rest is an edit-distance alignment over the two layer
//! sequences in topological order. A pair with the same name costs nothing; a pair of layers of
//! the same type whose names both occur only on their own side may be matched as a rename, at a
//! cost of one plus a penalty below one for different attributes, learnable shapes and
//! neighbours (the DAG structure is the tie-breaker between candidate renames); deleting or
//! inserting a layer costs one. Layers of different types are never matched unless they share
//! a name. Same-name layers that the ordered alignment could not pair (a layer moved across
//! others) are paired afterwards and marked [`AlignKind::Moved`].

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::net::{Net, Node, NodeId};
use crate::textformat::{scalar_text, Message, Value};

/// How one row of an alignment relates its two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlignKind {
    /// Same name on both sides (attributes may still differ).
    Same,
    /// Matched by type and position; the names differ.
    Renamed,
    /// Same name, but found at a different place in the order.
    Moved,
    /// Only on the left.
    Removed,
    /// Only on the right.
    Added,
}

impl AlignKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlignKind::Same => "same",
            AlignKind::Renamed => "renamed",
            AlignKind::Moved => "moved",
            AlignKind::Removed => "removed",
            AlignKind::Added => "added",
        }
    }
}

/// One row of an alignment: a left node, a right node, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlignedPair {
    pub left: Option<NodeId>,
    pub right: Option<NodeId>,
    pub kind: AlignKind,
}

/// Rows in a merged order: the left net's topological order with right-only layers placed where
/// they occur on the right.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alignment {
    pub pairs: Vec<AlignedPair>,
}

impl Alignment {
    /// The right node aligned with a left node.
    pub fn right_of(&self, left: NodeId) -> Option<NodeId> {
        self.pairs.iter().find(|p| p.left == Some(left)).and_then(|p| p.right)
    }

    /// The left node aligned with a right node.
    pub fn left_of(&self, right: NodeId) -> Option<NodeId> {
        self.pairs.iter().find(|p| p.right == Some(right)).and_then(|p| p.left)
    }
}

/// One attribute that differs between two layers: a dotted path into the layer parameters
/// (`convolution_param.kernel_size`, `param[1].lr_mult`) and its text on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamChange {
    pub path: String,
    pub left: Option<String>,
    pub right: Option<String>,
}

const INSERT: u32 = 100;
const RENAME: u32 = 100;

/// Aligns `right` to `left`. Never fails: a net with a cycle is taken in definition order.
pub fn align(left: &Net, right: &Net) -> Alignment {
    let a = left.topo_order().unwrap_or_else(|_| left.node_ids().to_vec());
    let b = right.topo_order().unwrap_or_else(|_| right.node_ids().to_vec());
    let names_a: HashSet<&str> = a.iter().filter_map(|&id| left.node(id)).map(|n| n.name.as_str()).collect();
    let names_b: HashSet<&str> = b.iter().filter_map(|&id| right.node(id)).map(|n| n.name.as_str()).collect();
    let ctx_a = Context::new(left, &a);
    let ctx_b = Context::new(right, &b);

    // cost[i][j]: aligning a[i..] with b[j..]. Filled backwards so that the walk goes forwards.
    let (n, m) = (a.len(), b.len());
    let mut cost = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..=n).rev() {
        for j in (0..=m).rev() {
            if i == n && j == m {
                continue;
            }
            let mut best = u32::MAX;
            if i < n {
                best = best.min(cost[i + 1][j].saturating_add(INSERT));
            }
            if j < m {
                best = best.min(cost[i][j + 1].saturating_add(INSERT));
            }
            if i < n && j < m {
                if let Some(c) = pair_cost(&ctx_a, i, &ctx_b, j, &names_a, &names_b) {
                    best = best.min(cost[i + 1][j + 1].saturating_add(c));
                }
            }
            cost[i][j] = best;
        }
    }

    // Walk forwards; on ties prefer a match, then a removal (left order first).
    let mut pairs = Vec::with_capacity(n.max(m));
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m {
            if let Some(c) = pair_cost(&ctx_a, i, &ctx_b, j, &names_a, &names_b) {
                if cost[i][j] == cost[i + 1][j + 1].saturating_add(c) {
                    let same = ctx_a.name(i) == ctx_b.name(j);
                    let kind = if same { AlignKind::Same } else { AlignKind::Renamed };
                    pairs.push(AlignedPair { left: Some(a[i]), right: Some(b[j]), kind });
                    i += 1;
                    j += 1;
                    continue;
                }
            }
        }
        if i < n && (j == m || cost[i][j] == cost[i + 1][j].saturating_add(INSERT)) {
            pairs.push(AlignedPair { left: Some(a[i]), right: None, kind: AlignKind::Removed });
            i += 1;
        } else {
            pairs.push(AlignedPair { left: None, right: Some(b[j]), kind: AlignKind::Added });
            j += 1;
        }
    }

    pair_moved(left, right, &mut pairs);
    Alignment { pairs }
}

/// Pairs a removed and an added layer of the same name (the ordered alignment could not match
/// them because they cross other matches); the pair takes the removed row's place.
fn pair_moved(left: &Net, right: &Net, pairs: &mut Vec<AlignedPair>) {
    let mut added: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, p) in pairs.iter().enumerate() {
        if let (AlignKind::Added, Some(r)) = (p.kind, p.right) {
            if let Some(node) = right.node(r) {
                added.entry(node.name.as_str()).or_default().push(k);
            }
        }
    }
    let mut drop = Vec::new();
    for k in 0..pairs.len() {
        let p = pairs[k];
        let (AlignKind::Removed, Some(l)) = (p.kind, p.left) else { continue };
        let Some(node) = left.node(l) else { continue };
        let Some(list) = added.get_mut(node.name.as_str()) else { continue };
        if list.is_empty() {
            continue;
        }
        let at = list.remove(0);
        pairs[k] = AlignedPair { left: Some(l), right: pairs[at].right, kind: AlignKind::Moved };
        drop.push(at);
    }
    drop.sort_unstable();
    for at in drop.into_iter().rev() {
        pairs.remove(at);
    }
}

/// What the cost function looks at for one side.
struct Context<'a> {
    net: &'a Net,
    order: &'a [NodeId],
}

impl<'a> Context<'a> {
    fn new(net: &'a Net, order: &'a [NodeId]) -> Context<'a> {
        Context { net, order }
    }

    fn node(&self, i: usize) -> Option<&'a Node> {
        self.order.get(i).and_then(|&id| self.net.node(id))
    }

    fn name(&self, i: usize) -> &'a str {
        self.node(i).map(|n| n.name.as_str()).unwrap_or("")
    }

    /// Types and names of the neighbours, for the structural tie-breaker.
    fn neighbours(&self, i: usize) -> (Vec<&'a str>, Vec<&'a str>) {
        let Some(&id) = self.order.get(i) else { return (Vec::new(), Vec::new()) };
        let mut types = Vec::new();
        let mut names = Vec::new();
        for n in self.net.prev(id).into_iter().chain(self.net.next(id)) {
            if let Some(node) = self.net.node(n) {
                types.push(node.layer_type.as_str());
                names.push(node.name.as_str());
            }
        }
        (types, names)
    }
}

/// Cost of matching `a[i]` with `b[j]`, or `None` when they may not be matched.
fn pair_cost(
    ctx_a: &Context<'_>,
    i: usize,
    ctx_b: &Context<'_>,
    j: usize,
    names_a: &HashSet<&str>,
    names_b: &HashSet<&str>,
) -> Option<u32> {
    let (x, y) = (ctx_a.node(i)?, ctx_b.node(j)?);
    if x.name == y.name {
        return Some(0);
    }
    // A name present on the other side must be matched with that layer or with nothing.
    if names_b.contains(x.name.as_str()) || names_a.contains(y.name.as_str()) {
        return None;
    }
    if x.layer_type != y.layer_type {
        return None;
    }
    // Penalty in [0, 90]: attributes (40), learnable shapes (20), neighbours (30).
    let changes = param_changes(&x.params, &y.params).len();
    let fields = flatten(&x.params).len().max(flatten(&y.params).len()).max(1);
    let attr = (40 * changes.min(fields) / fields) as u32;
    let shapes = if x.blobs == y.blobs { 0 } else { 20 };
    let (ta, na) = ctx_a.neighbours(i);
    let (tb, nb) = ctx_b.neighbours(j);
    let shared_types = overlap(&ta, &tb);
    let shared_names = overlap(&na, &nb);
    let total = ta.len().max(tb.len()).max(1);
    let neigh = 30 - (15 * shared_types.min(total) / total + 15 * shared_names.min(total) / total) as u32;
    Some(RENAME + attr + shapes + neigh)
}

fn overlap(a: &[&str], b: &[&str]) -> usize {
    let mut rest: Vec<&str> = b.to_vec();
    let mut n = 0;
    for x in a {
        if let Some(k) = rest.iter().position(|y| y == x) {
            rest.remove(k);
            n += 1;
        }
    }
    n
}

/// Attribute differences between two layer parameter messages, in the order the paths first
/// occur (left, then right-only ones).
pub fn param_changes(left: &Message, right: &Message) -> Vec<ParamChange> {
    let l = flatten(left);
    let r = flatten(right);
    let rmap: HashMap<&str, &str> = r.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lmap: HashMap<&str, &str> = l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for (k, v) in &l {
        match rmap.get(k.as_str()) {
            Some(w) if *w == v.as_str() => {}
            other => out.push(ParamChange { path: k.clone(), left: Some(v.clone()), right: other.map(|w| w.to_string()) }),
        }
    }
    for (k, v) in &r {
        if !lmap.contains_key(k.as_str()) {
            out.push(ParamChange { path: k.clone(), left: None, right: Some(v.clone()) });
        }
    }
    out
}

/// A message as `(dotted path, scalar text)` pairs. A field that repeats gets an index
/// (`param[1].lr_mult`); a field that occurs once does not.
pub fn flatten(msg: &Message) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(msg, "", &mut out, 0);
    out
}

fn flatten_into(msg: &Message, prefix: &str, out: &mut Vec<(String, String)>, depth: usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (k, _) in &msg.fields {
        *counts.entry(k.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, v) in &msg.fields {
        let idx = seen.entry(k.as_str()).or_default();
        let path = if counts.get(k.as_str()).copied().unwrap_or(0) > 1 {
            format!("{prefix}{k}[{idx}]")
        } else {
            format!("{prefix}{k}")
        };
        *idx += 1;
        match v {
            // Parsing bounds nesting, but a net built through the API may not be; stop deep.
            Value::Msg(m) if depth < 64 => flatten_into(m, &format!("{path}."), out, depth + 1),
            Value::Msg(_) => out.push((path, "{...}".into())),
            scalar => out.push((path, scalar_text(scalar))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenet() -> &'static str {
        r#"name: "LeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 20 kernel_size: 5 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 50 kernel_size: 5 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" inner_product_param { num_output: 500 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
"#
    }

    fn net(src: &str) -> Net {
        match Net::from_prototxt(src, "t.prototxt") {
            Ok(n) => n,
            Err(e) => panic!("test net does not parse: {e}"),
        }
    }

    /// Rows as `left-name/right-name/kind`, `-` for a missing side.
    fn rows(a: &Net, b: &Net) -> Vec<String> {
        let al = align(a, b);
        al.pairs
            .iter()
            .map(|p| {
                let l = p.left.and_then(|id| a.node(id)).map(|n| n.name.as_str()).unwrap_or("-");
                let r = p.right.and_then(|id| b.node(id)).map(|n| n.name.as_str()).unwrap_or("-");
                format!("{l}/{r}/{}", p.kind.as_str())
            })
            .collect()
    }

    #[test]
    fn identical_nets_align_one_to_one() {
        let a = net(lenet());
        let r = rows(&a, &a);
        assert_eq!(r.len(), 9);
        assert!(r.iter().all(|x| x.ends_with("/same")), "{r:?}");
    }

    #[test]
    fn a_layer_inserted_in_the_middle_shifts_nothing() {
        let a = net(lenet());
        let src = lenet().replace(
            "layer { name: \"pool1\"",
            "layer { name: \"relu0\" type: \"ReLU\" bottom: \"conv1\" top: \"conv1\" }\nlayer { name: \"pool1\"",
        );
        let b = net(&src);
        assert_eq!(
            rows(&a, &b),
            [
                "data/data/same",
                "conv1/conv1/same",
                "-/relu0/added",
                "pool1/pool1/same",
                "conv2/conv2/same",
                "pool2/pool2/same",
                "ip1/ip1/same",
                "relu1/relu1/same",
                "ip2/ip2/same",
                "prob/prob/same"
            ]
        );
        // And the other way round it is a removal.
        assert!(rows(&b, &a).contains(&"relu0/-/removed".to_string()));
    }

    #[test]
    fn a_renamed_layer_is_a_rename_not_a_removal_and_an_addition() {
        let a = net(lenet());
        let b = net(&lenet().replace("\"ip1\"", "\"fc6\""));
        let r = rows(&a, &b);
        assert!(r.contains(&"ip1/fc6/renamed".to_string()), "{r:?}");
        assert_eq!(r.len(), 9, "{r:?}");
        assert_eq!(r.iter().filter(|x| x.ends_with("/same")).count(), 8, "{r:?}");
    }

    #[test]
    fn a_rename_next_to_an_insertion_picks_the_structural_match() {
        // conv2 renamed to convB, and a new convolution inserted before it: the renamed layer
        // is the one that keeps conv2's attributes and neighbours.
        let a = net(lenet());
        let src = lenet().replace("\"conv2\"", "\"convB\"").replace(
            "layer { name: \"convB\"",
            "layer { name: \"convX\" type: \"Convolution\" bottom: \"pool1\" top: \"pool1\" convolution_param { num_output: 7 kernel_size: 1 } }\nlayer { name: \"convB\"",
        );
        let b = net(&src);
        let r = rows(&a, &b);
        assert!(r.contains(&"conv2/convB/renamed".to_string()), "{r:?}");
        assert!(r.contains(&"-/convX/added".to_string()), "{r:?}");
    }

    #[test]
    fn a_changed_kernel_size_is_reported_on_the_aligned_layer() {
        let a = net(lenet());
        let src = lenet().replacen("num_output: 20 kernel_size: 5", "num_output: 20 kernel_size: 3", 1);
        let b = net(&src);
        let al = align(&a, &b);
        assert!(al.pairs.iter().all(|p| p.kind == AlignKind::Same));
        let (Some(l), Some(r)) = (a.find("conv1"), b.find("conv1")) else { panic!("conv1 missing") };
        assert_eq!(al.right_of(l), Some(r));
        let (Some(x), Some(y)) = (a.node(l), b.node(r)) else { panic!("node missing") };
        assert_eq!(
            param_changes(&x.params, &y.params),
            [ParamChange {
                path: "convolution_param.kernel_size".into(),
                left: Some("5".into()),
                right: Some("3".into())
            }]
        );
    }

    #[test]
    fn layers_of_other_types_are_not_renamed_into_each_other() {
        let a = net(lenet());
        let b = net(&lenet().replace("name: \"relu1\" type: \"ReLU\"", "name: \"sig1\" type: \"Sigmoid\""));
        let r = rows(&a, &b);
        assert!(r.contains(&"relu1/-/removed".to_string()), "{r:?}");
        assert!(r.contains(&"-/sig1/added".to_string()), "{r:?}");
    }

    #[test]
    fn a_moved_layer_is_paired_by_name() {
        let src = "name: \"n\"\nlayer { name: \"a\" type: \"ReLU\" }\nlayer { name: \"b\" type: \"TanH\" }\n";
        let a = net(src);
        let b = net("name: \"n\"\nlayer { name: \"b\" type: \"TanH\" }\nlayer { name: \"a\" type: \"ReLU\" }\n");
        let r = rows(&a, &b);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.iter().any(|x| x.ends_with("/moved")), "{r:?}");
    }

    #[test]
    fn empty_nets_align() {
        let a = Net::new("x");
        let b = net(lenet());
        assert_eq!(align(&a, &a).pairs.len(), 0);
        assert!(align(&a, &b).pairs.iter().all(|p| p.kind == AlignKind::Added));
        assert!(align(&b, &a).pairs.iter().all(|p| p.kind == AlignKind::Removed));
    }

    #[test]
    fn repeated_fields_are_indexed() {
        let m = net("name: \"n\"\nlayer { name: \"c\" type: \"Convolution\" param { lr_mult: 1 } param { lr_mult: 2 } }\n");
        let Some(node) = m.nodes().next() else { panic!("no node") };
        let f = flatten(&node.params);
        assert_eq!(f, [("param[0].lr_mult".to_string(), "1".to_string()), ("param[1].lr_mult".to_string(), "2".to_string())]);
    }
}
