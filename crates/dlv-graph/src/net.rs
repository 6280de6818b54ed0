//! The network DAG: nodes are layers in definition order, edges follow data blobs.

use std::collections::HashMap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use petgraph::Direction;
use serde::{Deserialize, Serialize};

use crate::textformat::Message;
use crate::GraphError;

/// Stable identifier of a node inside one [`Net`] (its petgraph index).
pub type NodeId = NodeIndex<u32>;

/// Caffe phase a layer is restricted to by `include { phase: ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    Train,
    Test,
}

/// A learnable blob (tensor) that a node owns, e.g. `weight` of shape `[20, 1, 5, 5]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// One layer of the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Caffe layer type as written (`Convolution`, `ReLU`, or anything unknown).
    pub layer_type: String,
    pub bottoms: Vec<String>,
    pub tops: Vec<String>,
    /// Every other field of the layer message, in source order (`convolution_param`, `param`,
    /// `include`, ...). Unknown fields are kept verbatim.
    pub params: Message,
    /// Phase from `include { phase: ... }`, if any.
    pub phase: Option<Phase>,
    /// Learnable blobs, in Caffe blob order (weight, bias, ...). Filled by shape inference or
    /// from the weights that were matched to this layer.
    pub blobs: Vec<BlobSpec>,
}

impl Node {
    pub fn new(name: impl Into<String>, layer_type: impl Into<String>) -> Node {
        Node {
            name: name.into(),
            layer_type: layer_type.into(),
            bottoms: Vec::new(),
            tops: Vec::new(),
            params: Message::default(),
            phase: None,
            blobs: Vec::new(),
        }
    }
}

/// How the layers of a prototxt were written, so that [`Net::to_prototxt`] writes them back the
/// same way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LayerForm {
    /// `layer { type: "Convolution" ... }` (Caffe's current `LayerParameter`).
    #[default]
    Layer,
    /// `layers { type: CONVOLUTION ... }` (Caffe's legacy `V1LayerParameter`, enum types).
    LegacyV1,
}

/// A network: a DAG of layers. Node order is definition order; edge `a -> b` means that `b`
/// reads a blob that `a` produced (the latest producer of that blob name before `b`, so that
/// in-place layers chain: `conv1 -> relu1 -> pool1`).
#[derive(Debug, Clone, Default)]
pub struct Net {
    pub name: String,
    /// Net-level fields other than layers (`input`, `input_shape`, `force_backward`, ...).
    pub header: Message,
    /// The prototxt layer syntax this net was read from (and is written back in).
    pub layer_form: LayerForm,
    graph: StableDiGraph<Node, String, u32>,
    order: Vec<NodeId>,
}

impl Net {
    pub fn new(name: impl Into<String>) -> Net {
        Net {
            name: name.into(),
            ..Net::default()
        }
    }

    /// Builds a net from layers in definition order, deriving edges from bottoms/tops.
    pub fn from_layers(name: impl Into<String>, header: Message, layers: Vec<Node>) -> Net {
        let mut net = Net::new(name);
        net.header = header;
        for node in layers {
            net.push_layer(node);
        }
        net
    }

    /// Builds a net from nodes in definition order and explicit edges `(from, to, blob)` given
    /// as indexes into `nodes`. Errors on an index out of range or a cycle.
    pub fn from_parts(
        name: impl Into<String>,
        header: Message,
        nodes: Vec<Node>,
        edges: Vec<(usize, usize, String)>,
    ) -> Result<Net, GraphError> {
        let mut net = Net::new(name);
        net.header = header;
        for node in nodes {
            let id = net.graph.add_node(node);
            net.order.push(id);
        }
        let n = net.order.len();
        for (from, to, blob) in edges {
            let (Some(&a), Some(&b)) = (net.order.get(from), net.order.get(to)) else {
                return Err(GraphError::Invalid(format!(
                    "edge {from} -> {to} ('{blob}') refers to a node that does not exist ({n} nodes)"
                )));
            };
            net.graph.add_edge(a, b, blob);
        }
        net.topo_order()?;
        Ok(net)
    }

    /// Appends a layer and connects it to the latest producers of its bottoms. A producer
    /// restricted to the other phase is skipped, so TRAIN and TEST data layers both feed conv1.
    pub fn push_layer(&mut self, node: Node) -> NodeId {
        let mut sources = Vec::new();
        for bottom in &node.bottoms {
            for src in self.latest_producers(bottom, node.phase) {
                sources.push((src, bottom.clone()));
            }
        }
        let id = self.graph.add_node(node);
        self.order.push(id);
        for (src, blob) in sources {
            if !self.graph.edges_connecting(src, id).any(|e| *e.weight() == blob) {
                self.graph.add_edge(src, id, blob);
            }
        }
        id
    }

    /// Producers of `blob` that a layer of `phase` reads: the latest visible one; for a layer of
    /// no phase, the latest one of each phase (TRAIN and TEST data layers), stopping at the first
    /// producer of no phase. Result in definition order.
    fn latest_producers(&self, blob: &str, phase: Option<Phase>) -> Vec<NodeId> {
        let mut found: Vec<NodeId> = Vec::new();
        let (mut train, mut test) = (false, false);
        for &id in self.order.iter().rev() {
            let n = &self.graph[id];
            if !n.tops.iter().any(|t| t == blob) {
                continue;
            }
            if let (Some(p), Some(q)) = (phase, n.phase) {
                if p != q {
                    continue;
                }
            }
            if phase.is_some() {
                found.push(id);
                break;
            }
            match n.phase {
                None => {
                    found.push(id);
                    break;
                }
                Some(Phase::Train) if !train => {
                    train = true;
                    found.push(id);
                }
                Some(Phase::Test) if !test => {
                    test = true;
                    found.push(id);
                }
                Some(_) => {}
            }
            if train && test {
                break;
            }
        }
        found.reverse();
        found
    }

    /// Nodes in definition order.
    pub fn node_ids(&self) -> &[NodeId] {
        &self.order
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.order.iter().map(move |&id| &self.graph[id])
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.graph.node_weight(id)
    }

    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.graph.node_weight_mut(id)
    }

    /// The first node with this name (names repeat across phases, e.g. two `mnist` data layers).
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.order.iter().copied().find(|&id| self.graph[id].name == name)
    }

    /// One-hop successors, in definition order.
    pub fn next(&self, id: NodeId) -> Vec<NodeId> {
        self.neighbours(id, Direction::Outgoing)
    }

    /// One-hop predecessors, in definition order.
    pub fn prev(&self, id: NodeId) -> Vec<NodeId> {
        self.neighbours(id, Direction::Incoming)
    }

    fn neighbours(&self, id: NodeId, dir: Direction) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.graph.neighbors_directed(id, dir).collect();
        v.sort_by_key(|n| self.position(*n));
        v.dedup();
        v
    }

    fn position(&self, id: NodeId) -> usize {
        self.order.iter().position(|&o| o == id).unwrap_or(usize::MAX)
    }

    /// Position of each node in definition order.
    pub(crate) fn positions(&self) -> HashMap<NodeId, usize> {
        self.order.iter().enumerate().map(|(i, &id)| (id, i)).collect()
    }

    /// Edges `(from, to, blob)` in a deterministic order (by definition order of the ends, then
    /// blob name).
    pub fn edges(&self) -> Vec<(NodeId, NodeId, &str)> {
        let pos = self.positions();
        let at = |id: &NodeId| pos.get(id).copied().unwrap_or(usize::MAX);
        let mut v: Vec<(NodeId, NodeId, &str)> = self
            .graph
            .edge_references()
            .map(|e| (e.source(), e.target(), e.weight().as_str()))
            .collect();
        v.sort_by(|x, y| (at(&x.0), at(&x.1), x.2).cmp(&(at(&y.0), at(&y.1), y.2)));
        v
    }

    /// Edges as `(from, to, blob)` with node positions in definition order, sorted.
    pub fn edge_positions(&self) -> Vec<(usize, usize, String)> {
        let pos = self.positions();
        let at = |id: &NodeId| pos.get(id).copied().unwrap_or(usize::MAX);
        self.edges()
            .into_iter()
            .map(|(a, b, blob)| (at(&a), at(&b), blob.to_string()))
            .collect()
    }

    /// Adds an explicit edge; refuses one that would close a cycle or names a missing node.
    pub fn add_edge(&mut self, from: NodeId, to: NodeId, blob: impl Into<String>) -> Result<(), GraphError> {
        if self.graph.node_weight(from).is_none() || self.graph.node_weight(to).is_none() {
            return Err(GraphError::Invalid("edge between nodes that are not in the network".into()));
        }
        if petgraph::algo::has_path_connecting(&self.graph, to, from, None) {
            return Err(GraphError::Invalid(format!(
                "edge {} -> {} would make a cycle",
                self.graph[from].name, self.graph[to].name
            )));
        }
        self.graph.add_edge(from, to, blob.into());
        Ok(())
    }

    /// Removes a node and its edges.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        self.order.retain(|&o| o != id);
        self.graph.remove_node(id)
    }

    /// Topological order, ties broken by definition order. Errors on a cycle, naming a node on it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, GraphError> {
        let mut indeg: HashMap<NodeId, usize> = self.order.iter().map(|&id| (id, 0)).collect();
        for e in self.graph.edge_references() {
            *indeg.entry(e.target()).or_default() += 1;
        }
        let mut ready: std::collections::BTreeSet<(usize, NodeId)> = self
            .order
            .iter()
            .enumerate()
            .filter(|(_, id)| indeg.get(id).copied().unwrap_or(0) == 0)
            .map(|(i, &id)| (i, id))
            .collect();
        let pos = self.positions();
        let mut out = Vec::with_capacity(self.order.len());
        while let Some(first) = ready.iter().next().copied() {
            ready.remove(&first);
            let (_, id) = first;
            out.push(id);
            for succ in self.graph.neighbors_directed(id, Direction::Outgoing) {
                if let Some(d) = indeg.get_mut(&succ) {
                    *d -= 1;
                    if *d == 0 {
                        ready.insert((pos.get(&succ).copied().unwrap_or(usize::MAX), succ));
                    }
                }
            }
        }
        if out.len() != self.order.len() {
            let done: std::collections::HashSet<NodeId> = out.iter().copied().collect();
            let stuck = self
                .order
                .iter()
                .find(|id| !done.contains(id))
                .map(|&id| self.graph[id].name.clone())
                .unwrap_or_default();
            return Err(GraphError::Invalid(format!("cycle through layer '{stuck}'")));
        }
        Ok(out)
    }

    /// The underlying petgraph graph, for algorithms that want it.
    pub fn graph(&self) -> &StableDiGraph<Node, String, u32> {
        &self.graph
    }
}

/// Equality of structure: same name, header, layer form, nodes in the same order, same edges.
impl PartialEq for Net {
    fn eq(&self, other: &Net) -> bool {
        if self.name != other.name
            || self.header != other.header
            || self.layer_form != other.layer_form
            || self.order.len() != other.order.len()
        {
            return false;
        }
        if !self.nodes().zip(other.nodes()).all(|(a, b)| a == b) {
            return false;
        }
        self.edge_positions() == other.edge_positions()
    }
}
