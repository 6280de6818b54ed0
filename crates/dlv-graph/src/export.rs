//! JSON and Graphviz DOT export.
//!
//! The JSON form is canonical (keys sorted, no whitespace, floats in shortest round-trip form)
//! because the store hashes it; see the crate documentation for the layout.

use serde_json::{Map, Number, Value as J};

use crate::net::{BlobSpec, LayerForm, Net, Node, Phase};
use crate::textformat::{Message, Value};
use crate::GraphError;

impl Net {
    /// The canonical JSON form of the net: same net, same bytes.
    pub fn to_json(&self) -> String {
        let nodes: Vec<J> = self.nodes().enumerate().map(|(i, n)| node_json(i, n)).collect();
        let edges: Vec<J> = self
            .edge_positions()
            .into_iter()
            .map(|(a, b, blob)| obj(vec![("blob", J::String(blob)), ("from", J::from(a)), ("to", J::from(b))]))
            .collect();
        let mut top = vec![
            ("edges", J::Array(edges)),
            ("header", message_json(&self.header)),
            ("name", J::String(self.name.clone())),
            ("nodes", J::Array(nodes)),
        ];
        // Only the legacy form is recorded, so the usual case has exactly the four keys.
        if self.layer_form == LayerForm::LegacyV1 {
            top.insert(1, ("layer_form", J::String("v1".into())));
        }
        obj(top).to_string()
    }

    /// Reads the JSON form back, validating it: node ids must be their positions, edges must
    /// name existing nodes and make no cycle. Without an `edges` key, edges are derived from
    /// bottoms and tops as for a prototxt.
    pub fn from_json(s: &str) -> Result<Net, GraphError> {
        let root: J = serde_json::from_str(s).map_err(|e| GraphError::Json(e.to_string()))?;
        let root = root.as_object().ok_or_else(|| jerr("the top level must be an object"))?;
        let name = opt_str(root, "name", "net")?.unwrap_or_default();
        let header = match root.get("header") {
            None | Some(J::Null) => Message::default(),
            Some(h) => message_from(h, "header", 0)?,
        };
        let layer_form = match opt_str(root, "layer_form", "net")?.as_deref() {
            None | Some("layer") => LayerForm::Layer,
            Some("v1") => LayerForm::LegacyV1,
            Some(other) => return Err(jerr(format!("unknown layer_form '{other}': expected \"layer\" or \"v1\""))),
        };
        let nodes_json = root
            .get("nodes")
            .and_then(J::as_array)
            .ok_or_else(|| jerr("missing array 'nodes'"))?;
        let mut nodes = Vec::with_capacity(nodes_json.len());
        for (i, n) in nodes_json.iter().enumerate() {
            nodes.push(node_from(n, i)?);
        }
        let mut net = match root.get("edges") {
            None | Some(J::Null) => Net::from_layers(name, header, nodes),
            Some(edges) => {
                let edges = edges.as_array().ok_or_else(|| jerr("'edges' must be an array"))?;
                let mut list = Vec::with_capacity(edges.len());
                for (k, e) in edges.iter().enumerate() {
                    let e = e.as_object().ok_or_else(|| jerr(format!("edge {k} must be an object")))?;
                    let from = index(e, "from", k)?;
                    let to = index(e, "to", k)?;
                    let blob = opt_str(e, "blob", &format!("edge {k}"))?.unwrap_or_default();
                    if from >= nodes.len() || to >= nodes.len() {
                        return Err(jerr(format!(
                            "edge {k} ({from} -> {to}) refers to a node that does not exist ({} nodes)",
                            nodes.len()
                        )));
                    }
                    list.push((from, to, blob));
                }
                Net::from_parts(name, header, nodes, list).map_err(|e| match e {
                    GraphError::Invalid(m) => GraphError::Json(m),
                    other => other,
                })?
            }
        };
        net.layer_form = layer_form;
        Ok(net)
    }

    /// A Graphviz digraph: one box per layer labelled "name\ntype", edges labelled by blob.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph {} {{\n  rankdir=TB;\n  node [shape=box];\n", dot_quote(&self.name));
        for (i, n) in self.nodes().enumerate() {
            let label = format!("{}\n{}", n.name, n.layer_type);
            out.push_str(&format!("  n{i} [label={}];\n", dot_quote(&label)));
        }
        for (a, b, blob) in self.edge_positions() {
            out.push_str(&format!("  n{a} -> n{b} [label={}];\n", dot_quote(&blob)));
        }
        out.push_str("}\n");
        out
    }
}

/// A DOT double-quoted string; a newline becomes DOT's `\n` line break.
fn dot_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn jerr(msg: impl Into<String>) -> GraphError {
    GraphError::Json(msg.into())
}

/// An object from key/value pairs; keys are inserted sorted so that the output is the same
/// whether or not serde_json keeps insertion order.
fn obj(mut pairs: Vec<(&str, J)>) -> J {
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.to_string(), v);
    }
    J::Object(m)
}

fn node_json(i: usize, n: &Node) -> J {
    let strs = |v: &[String]| J::Array(v.iter().map(|s| J::String(s.clone())).collect());
    let phase = match n.phase {
        None => J::Null,
        Some(Phase::Train) => J::String("TRAIN".into()),
        Some(Phase::Test) => J::String("TEST".into()),
    };
    let blobs = n
        .blobs
        .iter()
        .map(|b| obj(vec![("name", J::String(b.name.clone())), ("shape", J::from(b.shape.clone()))]))
        .collect();
    obj(vec![
        ("blobs", J::Array(blobs)),
        ("bottoms", strs(&n.bottoms)),
        ("id", J::from(i)),
        ("name", J::String(n.name.clone())),
        ("params", message_json(&n.params)),
        ("phase", phase),
        ("tops", strs(&n.tops)),
        ("type", J::String(n.layer_type.clone())),
    ])
}

/// A message is an array of `[key, value]` pairs (order and repetition matter). Values: integers
/// and floats as JSON numbers (a float always has a `.` or an exponent), booleans, strings,
/// `{"enum": NAME}`, nested arrays for messages, and `{"float": "inf" | "-inf" | "nan"}`.
fn message_json(m: &Message) -> J {
    J::Array(
        m.fields
            .iter()
            .map(|(k, v)| J::Array(vec![J::String(k.clone()), value_json(v)]))
            .collect(),
    )
}

fn value_json(v: &Value) -> J {
    match v {
        Value::Int(i) => J::from(*i),
        Value::Float(f) => match Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None => {
                let s = if f.is_nan() {
                    "nan"
                } else if *f > 0.0 {
                    "inf"
                } else {
                    "-inf"
                };
                obj(vec![("float", J::String(s.into()))])
            }
        },
        Value::Bool(b) => J::Bool(*b),
        Value::Str(s) => J::String(s.clone()),
        Value::Enum(e) => obj(vec![("enum", J::String(e.clone()))]),
        Value::Msg(m) => message_json(m),
    }
}

const MAX_JSON_DEPTH: usize = crate::textformat::MAX_DEPTH;

fn message_from(j: &J, what: &str, depth: usize) -> Result<Message, GraphError> {
    if depth > MAX_JSON_DEPTH {
        return Err(jerr(format!("{what}: messages nested deeper than {MAX_JSON_DEPTH} levels")));
    }
    let arr = j
        .as_array()
        .ok_or_else(|| jerr(format!("{what}: a message must be an array of [key, value] pairs")))?;
    let mut m = Message::default();
    for (i, pair) in arr.iter().enumerate() {
        let (k, v) = match pair.as_array().map(Vec::as_slice) {
            Some([J::String(k), v]) => (k, v),
            _ => return Err(jerr(format!("{what}: field {i} must be a [key, value] pair"))),
        };
        m.push(k.clone(), value_from(v, &format!("{what}.{k}"), depth)?);
    }
    Ok(m)
}

fn value_from(j: &J, what: &str, depth: usize) -> Result<Value, GraphError> {
    Ok(match j {
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_f64() {
                Value::Float(n.as_f64().unwrap_or_default())
            } else {
                return Err(jerr(format!("{what}: integer out of the 64-bit signed range")));
            }
        }
        J::Bool(b) => Value::Bool(*b),
        J::String(s) => Value::Str(s.clone()),
        J::Array(_) => Value::Msg(message_from(j, what, depth + 1)?),
        J::Object(o) if o.len() == 1 => match (o.get("enum"), o.get("float")) {
            (Some(J::String(e)), _) => Value::Enum(e.clone()),
            (_, Some(J::String(f))) => match f.as_str() {
                "inf" => Value::Float(f64::INFINITY),
                "-inf" => Value::Float(f64::NEG_INFINITY),
                "nan" => Value::Float(f64::NAN),
                _ => return Err(jerr(format!("{what}: unknown float '{f}'"))),
            },
            _ => return Err(jerr(format!("{what}: expected {{\"enum\": NAME}} or {{\"float\": \"inf\"}}"))),
        },
        _ => return Err(jerr(format!("{what}: unsupported value {j}"))),
    })
}

fn opt_str(o: &Map<String, J>, key: &str, what: &str) -> Result<Option<String>, GraphError> {
    match o.get(key) {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(jerr(format!("{what}: '{key}' must be a string"))),
    }
}

fn str_list(o: &Map<String, J>, key: &str, what: &str) -> Result<Vec<String>, GraphError> {
    match o.get(key) {
        None | Some(J::Null) => Ok(Vec::new()),
        Some(J::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| jerr(format!("{what}: '{key}' must hold strings")))
            })
            .collect(),
        Some(_) => Err(jerr(format!("{what}: '{key}' must be an array of strings"))),
    }
}

fn index(o: &Map<String, J>, key: &str, k: usize) -> Result<usize, GraphError> {
    o.get(key)
        .and_then(J::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| jerr(format!("edge {k}: '{key}' must be a node index")))
}

fn node_from(j: &J, i: usize) -> Result<Node, GraphError> {
    let what = format!("node {i}");
    let o = j.as_object().ok_or_else(|| jerr(format!("{what} must be an object")))?;
    if let Some(id) = o.get("id") {
        if id.as_u64() != Some(i as u64) {
            return Err(jerr(format!("{what}: id {id} is not its position {i}")));
        }
    }
    let name = opt_str(o, "name", &what)?.ok_or_else(|| jerr(format!("{what}: missing 'name'")))?;
    let layer_type = opt_str(o, "type", &what)?.ok_or_else(|| jerr(format!("{what}: missing 'type'")))?;
    let mut node = Node::new(name, layer_type);
    node.bottoms = str_list(o, "bottoms", &what)?;
    node.tops = str_list(o, "tops", &what)?;
    node.phase = match opt_str(o, "phase", &what)?.as_deref() {
        None => None,
        Some("TRAIN") => Some(Phase::Train),
        Some("TEST") => Some(Phase::Test),
        Some(p) => return Err(jerr(format!("{what}: unknown phase '{p}': expected \"TRAIN\" or \"TEST\""))),
    };
    node.params = match o.get("params") {
        None | Some(J::Null) => Message::default(),
        Some(p) => message_from(p, &format!("{what} params"), 0)?,
    };
    if let Some(blobs) = o.get("blobs").filter(|b| !b.is_null()) {
        let blobs = blobs.as_array().ok_or_else(|| jerr(format!("{what}: 'blobs' must be an array")))?;
        for b in blobs {
            let bo = b.as_object().ok_or_else(|| jerr(format!("{what}: a blob must be an object")))?;
            let name = opt_str(bo, "name", &what)?.ok_or_else(|| jerr(format!("{what}: a blob needs a 'name'")))?;
            let shape = bo
                .get("shape")
                .and_then(J::as_array)
                .ok_or_else(|| jerr(format!("{what}: blob '{name}' needs a 'shape' array")))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| jerr(format!("{what}: blob '{name}' shape must hold non-negative integers")))?;
            node.blobs.push(BlobSpec { name, shape });
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Net {
        let src = r#"name: "s" layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 } } }
            layer { name: "b\"q" type: "ReLU" bottom: "x" top: "x" f: 1.5 g: -inf e: MAX s: "t\n" }"#;
        match Net::from_prototxt(src, "s") {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn json_round_trip_and_determinism() {
        let n = sample();
        let j = n.to_json();
        assert_eq!(j, sample().to_json());
        let back = Net::from_json(&j).map_err(|e| e.to_string());
        assert_eq!(back, Ok(n));
        assert!(j.starts_with(r#"{"edges":[{"blob":"x","from":0,"to":1}],"header":[],"name":"s","nodes":"#), "{j}");
    }

    #[test]
    fn json_validation() {
        let bad_edge = r#"{"name":"x","nodes":[{"name":"a","type":"T"}],"edges":[{"from":0,"to":3,"blob":"b"}]}"#;
        let e = Net::from_json(bad_edge).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("does not exist"), "{e}");
        let cycle = r#"{"name":"x","nodes":[{"name":"a","type":"T"},{"name":"b","type":"T"}],
            "edges":[{"from":0,"to":1,"blob":"x"},{"from":1,"to":0,"blob":"y"}]}"#;
        let e = Net::from_json(cycle).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cycle"), "{e}");
        let bad_id = r#"{"name":"x","nodes":[{"id":4,"name":"a","type":"T"}]}"#;
        assert!(Net::from_json(bad_id).is_err());
        assert!(Net::from_json("[1]").is_err());
        assert!(Net::from_json("{").is_err());
        let deep = format!(r#"{{"name":"x","header":{}"#, "[[\"a\",".repeat(500));
        assert!(Net::from_json(&deep).is_err());
    }

    #[test]
    fn json_without_edges_derives_them() {
        let j = r#"{"name":"x","nodes":[{"name":"a","type":"T","tops":["b"]},{"name":"c","type":"T","bottoms":["b"]}]}"#;
        let n = Net::from_json(j).map_err(|e| e.to_string());
        assert_eq!(n.map(|n| n.edges().len()), Ok(1));
    }

    #[test]
    fn dot_escapes() {
        let d = sample().to_dot();
        assert!(d.contains(r#"n1 [label="b\"q\nReLU"];"#), "{d}");
        assert!(d.contains(r#"n0 -> n1 [label="x"];"#), "{d}");
        assert!(d.starts_with("digraph \"s\" {"));
    }
}
