//! Slicing a network (DQL `slice`): the sub-network from an input node to an output node.
//!
//! Kept: every node on a path from the input to the output (both included), plus whatever
//! those nodes need that does not come through the input: their other ancestors (a label
//! blob for a loss, a second branch that joins). In-place layers that run on the output's blob
//! after it (`relu7` on `fc7`) are not on a path to it and are not kept. Blobs that kept layers
//! read but no kept layer produces become net-level inputs (`input: "data"` with
//! `input_shape` when shape inference knows every one of them), so the result is a valid net.

use std::collections::{HashMap, HashSet};

use crate::mutate::net_inputs;
use crate::net::{Net, NodeId};
use crate::textformat::{Message, Value};
use crate::GraphError;

impl Net {
    /// The sub-network from `input` to `output`; see the module documentation. Errors when the
    /// output cannot be reached from the input.
    pub fn slice(&self, input: NodeId, output: NodeId) -> Result<Net, GraphError> {
        let name_of = |id: NodeId| self.node(id).map(|n| n.name.clone()).unwrap_or_default();
        if self.node(input).is_none() || self.node(output).is_none() {
            return Err(GraphError::Invalid("slice endpoint is not in the network".into()));
        }
        let down = self.closure(input, true);
        let up = self.closure(output, false);
        if !down.contains(&output) {
            return Err(GraphError::Invalid(format!(
                "no path from '{}' to '{}': cannot slice between them",
                name_of(input),
                name_of(output)
            )));
        }
        let mut keep: HashSet<NodeId> = down.intersection(&up).copied().collect();
        // What the kept nodes need besides the input's data: their other ancestors.
        let mut stack: Vec<NodeId> = keep.iter().copied().filter(|&n| n != input).collect();
        while let Some(n) = stack.pop() {
            for p in self.prev(n) {
                if keep.insert(p) {
                    stack.push(p);
                }
            }
        }
        let order: Vec<NodeId> = self.node_ids().iter().copied().filter(|id| keep.contains(id)).collect();
        let at: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        let nodes = order.iter().filter_map(|&id| self.node(id).cloned()).collect::<Vec<_>>();
        let edges: Vec<(usize, usize, String)> = self
            .edges()
            .into_iter()
            .filter_map(|(a, b, blob)| Some((*at.get(&a)?, *at.get(&b)?, blob.to_string())))
            .collect();

        // Blobs read by kept layers without a kept producer become net inputs.
        let declared = net_inputs(self);
        let mut missing: Vec<(String, Option<Vec<usize>>)> = Vec::new();
        let shapes = self.infer_shapes();
        for &id in &order {
            let Some(node) = self.node(id) else { continue };
            for (k, b) in node.bottoms.iter().enumerate() {
                let fed = edges.iter().any(|(_, x, blob)| Some(x) == at.get(&id) && blob == b);
                if !fed && !missing.iter().any(|(m, _)| m == b) {
                    let shape = shapes.node(id).and_then(|s| s.inputs.get(k).cloned()).flatten();
                    missing.push((b.clone(), shape));
                }
            }
        }
        let mut header = Message::default();
        let input_keys = ["input", "input_shape", "input_dim"];
        for (k, v) in &self.header.fields {
            let is_input = input_keys.contains(&k.as_str());
            // Declared inputs that the slice still reads stay, in their own form.
            if !is_input || missing.iter().all(|(m, _)| declared.contains(m)) {
                header.fields.push((k.clone(), v.clone()));
            }
        }
        if !missing.iter().all(|(m, _)| declared.contains(m)) {
            header.fields.retain(|(k, _)| !input_keys.contains(&k.as_str()));
            let all_known = missing.iter().all(|(_, s)| s.is_some());
            for (b, _) in &missing {
                header.push("input", Value::Str(b.clone()));
            }
            if all_known {
                for (_, s) in &missing {
                    let mut shape = Message::default();
                    for &d in s.iter().flatten() {
                        shape.push("dim", Value::Int(d as i64));
                    }
                    header.push("input_shape", Value::Msg(shape));
                }
            }
        }
        let mut out = Net::from_parts(self.name.clone(), header, nodes, edges)?;
        out.layer_form = self.layer_form;
        Ok(out)
    }

    /// `start` and every node reachable from it (downward) or that reaches it (upward).
    fn closure(&self, start: NodeId, down: bool) -> HashSet<NodeId> {
        let mut seen = HashSet::from([start]);
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            let step = if down { self.next(n) } else { self.prev(n) };
            for m in step {
                if seen.insert(m) {
                    stack.push(m);
                }
            }
        }
        seen
    }
}
