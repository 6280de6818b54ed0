//! Editing a network (DQL `construct … mutate`): insert a node on the outgoing edges of a node,
//! delete nodes, delete or add edges. The result is a new [`Net`]; the source is untouched.
//!
//! Edits keep three things true, or fail with [`GraphError::Invalid`] naming the node:
//! - the graph stays acyclic;
//! - no input is left dangling: every bottom of every layer is produced by some layer, is a
//!   net-level input, or was already unproduced in the source;
//! - bottoms and tops agree with the edges, so that `to_prototxt` writes a Caffe net that reads
//!   back to the same DAG (checked when the source net itself had that property).
//!
//! How each edit rewrites bottoms and tops:
//! - **insert in place** (element-wise templates such as ReLU, Dropout, BatchNorm): the new layer
//!   reads and writes the blob the node produced (`bottom: conv5 top: conv5`) and is placed right
//!   after the node, so that every consumer of that blob now reads it through the new layer;
//! - **insert out of place** (all other templates): the new layer writes a blob named after itself
//!   and the consumers' bottoms are renamed to it (through in-place chains that followed);
//! - **delete** a layer with one input and one output: it is spliced out, its consumers read its
//!   input instead; any other layer whose outputs are still read is refused (dangling input);
//! - **delete edge**: the consumer's bottom goes; a layer left with no input is refused.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::net::{Net, Node, NodeId};
use crate::GraphError;

/// One edit of a network, on the node ids of the net it is applied to.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Insert `node` (its bottoms and tops are filled in) on the outgoing edges of `after`.
    Insert { after: NodeId, node: Node, in_place: bool },
    /// Remove a node (spliced out when it has one input and one output).
    Delete { node: NodeId },
    /// Remove every edge from `from` to `to`.
    DeleteEdge { from: NodeId, to: NodeId },
    /// Add an edge carrying `from`'s first output to `to` (a new bottom of `to`).
    Connect { from: NodeId, to: NodeId },
}

/// A mutable copy of a net: nodes in an arena (indexes never move), definition order and edges
/// over arena indexes.
struct Draft {
    nodes: Vec<Option<Node>>,
    order: Vec<usize>,
    edges: Vec<(usize, usize, String)>,
}

fn invalid(msg: impl Into<String>) -> GraphError {
    GraphError::Invalid(msg.into())
}

impl Draft {
    fn of(net: &Net) -> Draft {
        let nodes: Vec<Option<Node>> = net.nodes().cloned().map(Some).collect();
        let order = (0..nodes.len()).collect();
        Draft { nodes, order, edges: net.edge_positions() }
    }

    fn node(&self, i: usize) -> Result<&Node, GraphError> {
        self.nodes.get(i).and_then(Option::as_ref).ok_or_else(|| invalid("edit refers to a removed layer"))
    }

    fn node_mut(&mut self, i: usize) -> Result<&mut Node, GraphError> {
        self.nodes.get_mut(i).and_then(Option::as_mut).ok_or_else(|| invalid("edit refers to a removed layer"))
    }

    fn name(&self, i: usize) -> String {
        self.node(i).map(|n| n.name.clone()).unwrap_or_default()
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.order.iter().filter_map(|&i| self.nodes.get(i).and_then(Option::as_ref))
    }

    fn insert(&mut self, s: usize, mut node: Node, in_place: bool) -> Result<(), GraphError> {
        let sname = self.name(s);
        if self.live().any(|n| n.name == node.name) {
            return Err(invalid(format!("cannot insert '{}' after '{sname}': a layer named '{}' already exists", node.name, node.name)));
        }
        let mut blobs: Vec<String> = Vec::new();
        for (a, _, b) in &self.edges {
            if *a == s && !blobs.contains(b) {
                blobs.push(b.clone());
            }
        }
        if blobs.is_empty() {
            blobs = self.node(s)?.tops.clone();
        }
        let blob = match blobs.as_slice() {
            [one] => one.clone(),
            [] => return Err(invalid(format!("cannot insert '{}' after '{sname}': it has no output", node.name))),
            many => {
                return Err(invalid(format!(
                    "cannot insert '{}' after '{sname}': it has several outputs ({}), so where to insert is ambiguous",
                    node.name,
                    many.join(", ")
                )))
            }
        };
        if !in_place && self.live().any(|n| n.tops.contains(&node.name) || n.bottoms.contains(&node.name)) {
            return Err(invalid(format!(
                "cannot insert '{}' after '{sname}': a blob named '{}' already exists",
                node.name, node.name
            )));
        }
        node.bottoms = vec![blob.clone()];
        node.tops = vec![if in_place { blob.clone() } else { node.name.clone() }];
        let new_top = node.tops[0].clone();
        let n = self.nodes.len();
        self.nodes.push(Some(node));
        let at = self.order.iter().position(|&o| o == s).map_or(self.order.len(), |p| p + 1);
        self.order.insert(at, n);
        let consumers: Vec<usize> = self.edges.iter().filter(|(a, _, b)| *a == s && *b == blob).map(|e| e.1).collect();
        self.edges.retain(|(a, _, b)| !(*a == s && *b == blob));
        self.edges.push((s, n, blob.clone()));
        for c in consumers {
            self.edges.push((n, c, new_top.clone()));
            if !in_place {
                self.rename_reads(c, &blob, &new_top, 0)?;
            }
        }
        Ok(())
    }

    /// `c` now reads `new` where it read `old`; if `c` computed `old` in place, it now computes
    /// `new` in place, and so on down the chain.
    fn rename_reads(&mut self, c: usize, old: &str, new: &str, depth: usize) -> Result<(), GraphError> {
        if depth > self.nodes.len() {
            return Err(invalid("renaming a blob went round a cycle"));
        }
        let node = self.node_mut(c)?;
        for b in node.bottoms.iter_mut().filter(|b| *b == old) {
            *b = new.to_string();
        }
        if !node.tops.iter().any(|t| t == old) {
            return Ok(());
        }
        for t in node.tops.iter_mut().filter(|t| *t == old) {
            *t = new.to_string();
        }
        let next: Vec<usize> = self.edges.iter().filter(|(a, _, b)| *a == c && b == old).map(|e| e.1).collect();
        for e in self.edges.iter_mut().filter(|(a, _, b)| *a == c && b == old) {
            e.2 = new.to_string();
        }
        for d in next {
            self.rename_reads(d, old, new, depth + 1)?;
        }
        Ok(())
    }

    fn delete(&mut self, d: usize) -> Result<(), GraphError> {
        let node = self.node(d)?.clone();
        if let ([b], [t]) = (node.bottoms.as_slice(), node.tops.as_slice()) {
            let producers: Vec<usize> = self.edges.iter().filter(|(_, x, blob)| *x == d && blob == b).map(|e| e.0).collect();
            let consumers: Vec<usize> = self.edges.iter().filter(|(a, _, blob)| *a == d && blob == t).map(|e| e.1).collect();
            for &c in &consumers {
                for &p in &producers {
                    if !self.edges.contains(&(p, c, b.clone())) {
                        self.edges.push((p, c, b.clone()));
                    }
                }
                if t != b {
                    // Only the bottom: a consumer that computed `t` in place stays its producer.
                    for x in self.node_mut(c)?.bottoms.iter_mut().filter(|x| *x == t) {
                        *x = b.clone();
                    }
                }
            }
        }
        self.edges.retain(|(a, x, _)| *a != d && *x != d);
        self.order.retain(|&o| o != d);
        if let Some(slot) = self.nodes.get_mut(d) {
            *slot = None;
        }
        Ok(())
    }

    fn delete_edge(&mut self, f: usize, t: usize) -> Result<(), GraphError> {
        let removed: Vec<String> = self.edges.iter().filter(|(a, x, _)| *a == f && *x == t).map(|e| e.2.clone()).collect();
        if removed.is_empty() {
            return Ok(());
        }
        self.edges.retain(|(a, x, _)| !(*a == f && *x == t));
        let still: HashSet<String> = self.edges.iter().filter(|(_, x, _)| *x == t).map(|e| e.2.clone()).collect();
        let (fname, tname) = (self.name(f), self.name(t));
        let node = self.node_mut(t)?;
        node.bottoms.retain(|b| !removed.contains(b) || still.contains(b));
        if node.bottoms.is_empty() {
            return Err(invalid(format!(
                "deleting edge {fname} -> {tname} would leave layer '{tname}' without an input"
            )));
        }
        Ok(())
    }

    fn connect(&mut self, f: usize, t: usize) -> Result<(), GraphError> {
        let (fname, tname) = (self.name(f), self.name(t));
        let blob = self
            .node(f)?
            .tops
            .first()
            .cloned()
            .ok_or_else(|| invalid(format!("cannot connect '{fname}' -> '{tname}': '{fname}' has no output")))?;
        if f == t || self.reaches(t, f) {
            return Err(invalid(format!("connecting '{fname}' -> '{tname}' would make a cycle through '{tname}'")));
        }
        self.edges.push((f, t, blob.clone()));
        self.node_mut(t)?.bottoms.push(blob);
        Ok(())
    }

    fn reaches(&self, from: usize, to: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        while let Some(x) = stack.pop() {
            if x == to {
                return true;
            }
            if seen.insert(x) {
                stack.extend(self.edges.iter().filter(|e| e.0 == x).map(|e| e.1));
            }
        }
        false
    }

    /// Unproduced bottoms `(layer, blob)` in definition order: no incoming edge carries them.
    fn dangling(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for &i in &self.order {
            let Some(n) = self.nodes.get(i).and_then(Option::as_ref) else { continue };
            for b in &n.bottoms {
                if !self.edges.iter().any(|(_, x, blob)| *x == i && blob == b) {
                    out.push((n.name.clone(), b.clone()));
                }
            }
        }
        out
    }

    /// Topological order (ties by draft order); a cycle names a layer on it.
    fn sorted(&self) -> Result<Vec<usize>, GraphError> {
        let pos: HashMap<usize, usize> = self.order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let mut indeg: HashMap<usize, usize> = self.order.iter().map(|&i| (i, 0)).collect();
        for (_, x, _) in &self.edges {
            *indeg.entry(*x).or_default() += 1;
        }
        let mut ready: BTreeSet<(usize, usize)> =
            self.order.iter().filter(|i| indeg.get(i) == Some(&0)).map(|&i| (pos[&i], i)).collect();
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(first) = ready.pop_first() {
            out.push(first.1);
            for (a, x, _) in &self.edges {
                if *a == first.1 {
                    if let Some(d) = indeg.get_mut(x) {
                        *d -= 1;
                        if *d == 0 {
                            ready.insert((pos.get(x).copied().unwrap_or(usize::MAX), *x));
                        }
                    }
                }
            }
        }
        if out.len() != self.order.len() {
            let stuck = self.order.iter().find(|i| !out.contains(i)).map(|&i| self.name(i)).unwrap_or_default();
            return Err(invalid(format!("the edit would make a cycle through layer '{stuck}'")));
        }
        Ok(out)
    }
}

/// Blobs declared as inputs of the whole net (`input: "data"`).
pub(crate) fn net_inputs(net: &Net) -> HashSet<String> {
    net.header.get_all("input").filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// Whether bottoms/tops, read as a prototxt reads them, give exactly the net's edges.
pub fn is_consistent(net: &Net) -> bool {
    let derived = Net::from_layers(net.name.clone(), net.header.clone(), net.nodes().cloned().collect());
    derived.edge_positions() == net.edge_positions()
}

impl Net {
    /// Applies `edits` in order and returns the edited net; see the module documentation for
    /// what each edit does and what is refused.
    pub fn mutate(&self, edits: &[Edit]) -> Result<Net, GraphError> {
        let pos = self.positions();
        let idx = |id: NodeId| {
            pos.get(&id).copied().ok_or_else(|| invalid(format!("edit refers to node {} that is not in the network", id.index())))
        };
        let before = Draft::of(self).dangling();
        let consistent = is_consistent(self);
        let mut d = Draft::of(self);
        for e in edits {
            match e {
                Edit::Insert { after, node, in_place } => d.insert(idx(*after)?, node.clone(), *in_place)?,
                Edit::Delete { node } => {
                    let i = idx(*node)?;
                    if d.nodes.get(i).is_some_and(Option::is_some) {
                        d.delete(i)?;
                    }
                }
                Edit::DeleteEdge { from, to } => d.delete_edge(idx(*from)?, idx(*to)?)?,
                Edit::Connect { from, to } => d.connect(idx(*from)?, idx(*to)?)?,
            }
        }
        let inputs = net_inputs(self);
        if let Some((layer, blob)) = d.dangling().into_iter().find(|x| !before.contains(x) && !inputs.contains(&x.1)) {
            let producer = self.nodes().find(|n| n.tops.contains(&blob)).map(|n| n.name.clone());
            return Err(invalid(match producer {
                Some(p) => format!("the edit would leave input '{blob}' of layer '{layer}' dangling (its producer '{p}' is gone)"),
                None => format!("the edit would leave input '{blob}' of layer '{layer}' dangling"),
            }));
        }
        let order = d.sorted()?;
        let at: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        let mut nodes = Vec::with_capacity(order.len());
        for &i in &order {
            nodes.push(d.node(i)?.clone());
        }
        let edges = d.edges.iter().filter_map(|(a, x, b)| Some((*at.get(a)?, *at.get(x)?, b.clone()))).collect();
        let mut out = Net::from_parts(self.name.clone(), self.header.clone(), nodes, edges)?;
        out.layer_form = self.layer_form;
        if consistent && !is_consistent(&out) {
            let derived = Net::from_layers(out.name.clone(), out.header.clone(), out.nodes().cloned().collect());
            let want: HashSet<_> = out.edge_positions().into_iter().collect();
            let culprit = derived
                .edge_positions()
                .into_iter()
                .chain(out.edge_positions())
                .find(|e| !want.contains(e) || !derived.edge_positions().contains(e))
                .and_then(|(_, b, _)| out.nodes().nth(b).map(|n| n.name.clone()))
                .unwrap_or_default();
            return Err(invalid(format!(
                "the edit would change which blob layer '{culprit}' reads when the network is written as a prototxt"
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::template;

    fn alexnet() -> Net {
        let text = include_str!("../../../testdata/nets/alexnet.prototxt");
        Net::from_prototxt(text, "alexnet.prototxt").expect("alexnet parses")
    }

    /// AlexNet with relu5 removed and pool5 averaging: conv5 feeds an AVG pool directly.
    fn avg_variant() -> Net {
        let text = include_str!("../../../testdata/nets/alexnet.prototxt")
            .replace("  name: \"relu5\"\n  type: \"ReLU\"\n  bottom: \"conv5\"\n  top: \"conv5\"\n", "  name: \"relu5\"\n  type: \"ReLU\"\n  bottom: \"conv5\"\n  top: \"relu5_gone\"\n");
        let mut net = Net::from_prototxt(&text, "a").expect("parses");
        let id = net.find("relu5").expect("relu5");
        net = net.mutate(&[Edit::Delete { node: id }]).expect("delete relu5");
        net
    }

    fn id(net: &Net, name: &str) -> NodeId {
        net.find(name).unwrap_or_else(|| panic!("no layer {name}"))
    }

    fn names(net: &Net, ids: &[NodeId]) -> Vec<String> {
        ids.iter().filter_map(|&i| net.node(i)).map(|n| n.name.clone()).collect()
    }

    fn roundtrips(net: &Net) {
        let back = Net::from_prototxt(&net.to_prototxt(), "x").expect("re-parses");
        assert_eq!(back.edge_positions(), net.edge_positions(), "prototxt gives the same DAG");
        assert!(is_consistent(net));
    }

    #[test]
    fn insert_in_place_relu_after_conv() {
        let net = avg_variant();
        assert_eq!(names(&net, &net.next(id(&net, "conv5"))), ["pool5"]);
        let relu = template("RELU").expect("RELU").build(&[crate::ArgValue::Str("relu5".into())], &[]).expect("node");
        let out = net.mutate(&[Edit::Insert { after: id(&net, "conv5"), node: relu, in_place: true }]).expect("insert");
        assert_eq!(out.len(), net.len() + 1);
        assert_eq!(names(&out, &out.next(id(&out, "conv5"))), ["relu5"]);
        assert_eq!(names(&out, &out.next(id(&out, "relu5"))), ["pool5"]);
        let r = out.node(id(&out, "relu5")).expect("relu5");
        assert_eq!((r.bottoms.as_slice(), r.tops.as_slice()), (&["conv5".to_string()][..], &["conv5".to_string()][..]));
        roundtrips(&out);
    }

    #[test]
    fn insert_out_of_place_renames_consumers_through_in_place_chains() {
        let net = alexnet();
        let pool = template("POOL").expect("POOL").build(&[crate::ArgValue::Str("extra_pool".into())], &[]).expect("node");
        // fc6 -> relu6 (in place) -> drop6 (in place) -> fc7: the new layer sits between fc6 and relu6.
        let out = net.mutate(&[Edit::Insert { after: id(&net, "fc6"), node: pool, in_place: false }]).expect("insert");
        assert_eq!(names(&out, &out.next(id(&out, "fc6"))), ["extra_pool"]);
        assert_eq!(names(&out, &out.next(id(&out, "extra_pool"))), ["relu6"]);
        assert_eq!(names(&out, &out.prev(id(&out, "fc7"))), ["drop6"]);
        assert_eq!(out.node(id(&out, "fc7")).map(|n| n.bottoms.clone()), Some(vec!["extra_pool".to_string()]));
        roundtrips(&out);
    }

    #[test]
    fn insert_refuses_an_existing_name() {
        let net = alexnet();
        let relu = template("RELU").expect("RELU").build(&[crate::ArgValue::Str("relu1".into())], &[]).expect("node");
        let err = net.mutate(&[Edit::Insert { after: id(&net, "conv2"), node: relu, in_place: true }]).expect_err("dup");
        assert!(err.to_string().contains("'relu1' already exists"), "{err}");
    }

    #[test]
    fn delete_splices_single_input_layers() {
        let net = alexnet();
        // drop6 is in place; pool5 is not: fc6 then reads conv5 directly.
        let out = net.mutate(&[Edit::Delete { node: id(&net, "drop6") }, Edit::Delete { node: id(&net, "pool5") }]).expect("delete");
        assert_eq!(out.len(), net.len() - 2);
        assert_eq!(names(&out, &out.prev(id(&out, "fc7"))), ["relu6"]);
        assert_eq!(names(&out, &out.prev(id(&out, "fc6"))), ["relu5"]);
        assert_eq!(out.node(id(&out, "fc6")).map(|n| n.bottoms.clone()), Some(vec!["conv5".to_string()]));
        roundtrips(&out);
    }

    #[test]
    fn delete_that_leaves_a_dangling_input_names_the_layer() {
        let net = alexnet();
        let data: Vec<NodeId> = net.node_ids().iter().copied().filter(|&i| net.node(i).is_some_and(|n| n.name == "data")).collect();
        let edits: Vec<Edit> = data.into_iter().map(|node| Edit::Delete { node }).collect();
        let err = net.mutate(&edits).expect_err("dangling");
        let msg = err.to_string();
        assert!(msg.contains("layer 'conv1'") && msg.contains("'data'") && msg.contains("dangling"), "{msg}");
    }

    #[test]
    fn delete_edge_and_its_limits() {
        let net = alexnet();
        let err = net.mutate(&[Edit::DeleteEdge { from: id(&net, "fc6"), to: id(&net, "relu6") }]).expect_err("no input");
        assert!(err.to_string().contains("layer 'relu6' without an input"), "{err}");
        // accuracy reads fc8 and label: dropping the label edges leaves it one input.
        let acc = id(&net, "accuracy");
        let edits: Vec<Edit> = net.prev(acc).into_iter().filter(|&p| net.node(p).is_some_and(|n| n.name == "data")).map(|from| Edit::DeleteEdge { from, to: acc }).collect();
        let out = net.mutate(&edits).expect("delete edges");
        assert_eq!(out.node(id(&out, "accuracy")).map(|n| n.bottoms.clone()), Some(vec!["fc8".to_string()]));
        roundtrips(&out);
    }

    #[test]
    fn connect_refuses_a_cycle() {
        let net = alexnet();
        let err = net.mutate(&[Edit::Connect { from: id(&net, "fc7"), to: id(&net, "conv2") }]).expect_err("cycle");
        assert!(err.to_string().contains("cycle through 'conv2'"), "{err}");
    }

    #[test]
    fn slice_conv1_to_fc7() {
        let net = alexnet();
        let s = net.slice(id(&net, "conv1"), id(&net, "fc7")).expect("slice");
        let got: Vec<&str> = s.nodes().map(|n| n.name.as_str()).collect();
        assert_eq!(
            got,
            ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5", "fc6", "relu6", "drop6", "fc7"]
        );
        assert_eq!(s.header.get("input").and_then(|v| v.as_str()), Some("data"));
        let back = Net::from_prototxt(&s.to_prototxt(), "s").expect("valid prototxt");
        assert_eq!(back.edge_positions(), s.edge_positions());
        let err = net.slice(id(&net, "fc7"), id(&net, "conv1")).expect_err("no path");
        assert!(err.to_string().contains("no path from 'fc7' to 'conv1'"), "{err}");
    }

    #[test]
    fn slice_keeps_what_the_output_needs() {
        let net = alexnet();
        let s = net.slice(id(&net, "fc7"), id(&net, "accuracy")).expect("slice");
        let got: Vec<&str> = s.nodes().map(|n| n.name.as_str()).collect();
        // accuracy needs the label, so both data layers come along.
        assert!(got.contains(&"data") && got.contains(&"fc8") && got.contains(&"accuracy"), "{got:?}");
        assert!(!got.contains(&"fc6"), "{got:?}");
    }

    #[test]
    fn selectors_and_hops() {
        let net = alexnet();
        let m = net.select(|n| n.strip_prefix("conv").map(|rest| vec![rest.to_string()]));
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].captures, ["3"]);
        let ids: Vec<NodeId> = m.iter().map(|x| x.node).collect();
        assert_eq!(names(&net, &net.hop(&ids, crate::Hop::Next)), ["relu1", "relu2", "relu3", "relu4", "relu5"]);
        assert_eq!(names(&net, &net.hop(&[id(&net, "conv1")], crate::Hop::Prev)), ["data", "data"]);
    }
}
