//! Selectors over a [`Net`]: layer-name matches with captures, one-hop traversals, and layer
//! templates (`POOL("MAX")`, `CONV`, `RELU`, ...) that test a node's type and key attribute or
//! build a new node.
//!
//! The pattern language itself belongs to the query language (dql-parse); this module takes any
//! matcher `Fn(&str) -> Option<Vec<String>>` (what each capture group matched, or `None`), so
//! that dlv-graph stays free of other workspace crates.

use crate::net::{Net, Node, NodeId};
use crate::textformat::{Message, Value};
use crate::GraphError;

/// One node whose name matched a selector pattern, with what each capture group matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMatch {
    pub node: NodeId,
    pub captures: Vec<String>,
}

/// A one-hop traversal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The successors (consumers of the node's outputs).
    Next,
    /// The predecessors (producers of the node's inputs).
    Prev,
}

impl Net {
    /// Nodes whose name the matcher accepts, in definition order, with their captures. A name
    /// that several nodes share (TRAIN and TEST data layers) gives each of them.
    pub fn select<F>(&self, matcher: F) -> Vec<NodeMatch>
    where
        F: Fn(&str) -> Option<Vec<String>>,
    {
        self.node_ids()
            .iter()
            .filter_map(|&id| {
                let node = self.node(id)?;
                matcher(&node.name).map(|captures| NodeMatch { node: id, captures })
            })
            .collect()
    }

    /// One hop from every node of `set`: the union of their successors (or predecessors), in
    /// definition order, without repeats.
    pub fn hop(&self, set: &[NodeId], hop: Hop) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::new();
        for &id in set {
            let step = match hop {
                Hop::Next => self.next(id),
                Hop::Prev => self.prev(id),
            };
            for n in step {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        let order = self.positions();
        out.sort_by_key(|id| order.get(id).copied().unwrap_or(usize::MAX));
        out
    }
}

/// The key attribute of a template: the parameter that its positional argument names, e.g.
/// `pooling_param.pool` for `POOL("MAX")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAttr {
    /// Field inside the layer's parameter message (`pool`).
    pub field: &'static str,
    /// Value Caffe assumes when the field is absent (`MAX`).
    pub default: Option<&'static str>,
    /// Accepted spellings mapped to Caffe's enum value (`AVG` -> `AVE`).
    pub aliases: &'static [(&'static str, &'static str)],
}

/// A layer template: a DQL name, the Caffe layer types it matches, the type a new node gets,
/// its parameter message and its key attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerTemplate {
    /// Name in queries, matched without regard to case (`POOL`).
    pub name: &'static str,
    /// Caffe types a node may have to match (`Pooling`); the first is the type of new nodes.
    pub types: &'static [&'static str],
    /// The layer parameter message of this type (`pooling_param`), where named arguments and
    /// the key attribute live.
    pub param: Option<&'static str>,
    /// The attribute that a positional argument of `has` compares.
    pub key: Option<KeyAttr>,
    /// Inserted nodes of this template compute in place (`top == bottom`), as Caffe nets write
    /// element-wise layers.
    pub in_place: bool,
}

const POOL_KEY: KeyAttr = KeyAttr {
    field: "pool",
    default: Some("MAX"),
    aliases: &[("AVG", "AVE"), ("AVERAGE", "AVE"), ("MEAN", "AVE")],
};
const ELTWISE_KEY: KeyAttr = KeyAttr { field: "operation", default: Some("SUM"), aliases: &[] };
const LRN_KEY: KeyAttr = KeyAttr { field: "norm_region", default: Some("ACROSS_CHANNELS"), aliases: &[] };

macro_rules! t {
    ($name:expr, [$($ty:expr),+], $param:expr, $key:expr, $inplace:expr) => {
        LayerTemplate { name: $name, types: &[$($ty),+], param: $param, key: $key, in_place: $inplace }
    };
}

/// Every template DQL knows; `docs/DQL.md` shows the same table.
pub const TEMPLATES: &[LayerTemplate] = &[
    t!("CONV", ["Convolution"], Some("convolution_param"), None, false),
    t!("DECONV", ["Deconvolution"], Some("convolution_param"), None, false),
    t!("POOL", ["Pooling"], Some("pooling_param"), Some(POOL_KEY), false),
    t!("FC", ["InnerProduct"], Some("inner_product_param"), None, false),
    t!("RELU", ["ReLU"], Some("relu_param"), None, true),
    t!("PRELU", ["PReLU"], Some("prelu_param"), None, true),
    t!("ELU", ["ELU"], Some("elu_param"), None, true),
    t!("SIGMOID", ["Sigmoid"], None, None, true),
    t!("TANH", ["TanH"], None, None, true),
    t!("DROPOUT", ["Dropout"], Some("dropout_param"), None, true),
    t!("LRN", ["LRN"], Some("lrn_param"), Some(LRN_KEY), false),
    t!("BN", ["BatchNorm"], Some("batch_norm_param"), None, true),
    t!("SCALE", ["Scale"], Some("scale_param"), None, true),
    t!("SOFTMAX", ["Softmax", "SoftmaxWithLoss"], Some("softmax_param"), None, false),
    t!("LOSS", ["SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss"], None, None, false),
    t!("ACCURACY", ["Accuracy"], Some("accuracy_param"), None, false),
    t!("CONCAT", ["Concat"], Some("concat_param"), None, false),
    t!("ELTWISE", ["Eltwise"], Some("eltwise_param"), Some(ELTWISE_KEY), false),
    t!("FLATTEN", ["Flatten"], Some("flatten_param"), None, false),
    t!("SPLIT", ["Split"], None, None, false),
    t!("DATA", ["Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "Input"], None, None, false),
    t!("INPUT", ["Input"], Some("input_param"), None, false),
];

/// The template of that name (any case), or the template whose first Caffe type has that name
/// (`Pooling`, `InnerProduct`).
pub fn template(name: &str) -> Option<&'static LayerTemplate> {
    TEMPLATES
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .or_else(|| TEMPLATES.iter().find(|t| t.types[0] == name))
}

/// A template argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl ArgValue {
    fn to_value(&self, enum_like: bool) -> Value {
        match self {
            ArgValue::Str(s) if enum_like && crate::textformat::is_plain_enum(s) => Value::Enum(s.clone()),
            ArgValue::Str(s) => Value::Str(s.clone()),
            ArgValue::Int(i) => Value::Int(*i),
            ArgValue::Float(f) => Value::Float(*f),
            ArgValue::Bool(b) => Value::Bool(*b),
        }
    }

    fn matches(&self, v: &Value) -> bool {
        match (self, v) {
            (ArgValue::Str(a), Value::Str(b) | Value::Enum(b)) => a.eq_ignore_ascii_case(b),
            (ArgValue::Int(a), Value::Int(b)) => a == b,
            (ArgValue::Int(_) | ArgValue::Float(_), _) => match (self.as_f64(), v.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
            (ArgValue::Bool(a), Value::Bool(b)) => a == b,
            _ => false,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            ArgValue::Int(i) => Some(*i as f64),
            ArgValue::Float(f) => Some(*f),
            _ => None,
        }
    }
}

impl LayerTemplate {
    /// Canonical value of the key attribute for `value` (`AVG` -> `AVE`, upper case).
    fn key_value(&self, value: &str) -> String {
        let upper = value.to_ascii_uppercase();
        self.key
            .and_then(|k| k.aliases.iter().find(|(a, _)| *a == upper).map(|(_, c)| (*c).to_string()))
            .unwrap_or(upper)
    }

    /// Checks the arguments of `has TEMPLATE(args)`: at most one positional argument, and only
    /// for a template with a key attribute.
    pub fn check_match_args(&self, positional: &[ArgValue]) -> Result<(), GraphError> {
        match (positional.len(), self.key) {
            (0, _) => Ok(()),
            (1, Some(_)) => Ok(()),
            (_, Some(k)) => Err(GraphError::Invalid(format!(
                "template {} takes one positional argument (its `{}`), got {}",
                self.name,
                k.field,
                positional.len()
            ))),
            (n, None) => Err(GraphError::Invalid(format!(
                "template {} has no key attribute, so it takes no positional argument (got {n}); name attributes, e.g. {}(num_output = 64)",
                self.name, self.name
            ))),
        }
    }

    /// Whether `node` matches: its type is one of the template's, the positional argument (if
    /// any) equals the key attribute (absent means Caffe's default), and every named argument
    /// equals the field of that name in the layer's parameter message (or among the layer's
    /// own fields).
    pub fn matches(&self, node: &Node, positional: &[ArgValue], named: &[(String, ArgValue)]) -> bool {
        if !self.types.contains(&node.layer_type.as_str()) {
            return false;
        }
        let param = self.param.and_then(|p| node.params.get_msg(p));
        if let (Some(arg), Some(key)) = (positional.first(), self.key) {
            let actual = param
                .and_then(|m| m.get(key.field))
                .and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_int().map(|i| i.to_string())))
                .or_else(|| key.default.map(str::to_string));
            let wanted = match arg {
                ArgValue::Str(s) => self.key_value(s),
                other => match other.as_f64() {
                    Some(f) => f.to_string(),
                    None => return false,
                },
            };
            if actual.map(|a| self.key_value(&a)) != Some(wanted) {
                return false;
            }
        }
        named.iter().all(|(k, want)| {
            param
                .and_then(|m| m.get(k))
                .or_else(|| node.params.get(k))
                .is_some_and(|v| want.matches(v))
        })
    }

    /// A new node of this template: the first positional argument is its name, a second one the
    /// key attribute; named arguments become fields of the parameter message (`name = "x"`
    /// also names the node). Bottoms and tops are left empty for the caller.
    pub fn build(&self, positional: &[ArgValue], named: &[(String, ArgValue)]) -> Result<Node, GraphError> {
        let mut name = match positional.first() {
            Some(ArgValue::Str(s)) => Some(s.clone()),
            Some(other) => {
                return Err(GraphError::Invalid(format!(
                    "the first argument of {} in insert is the new layer's name, a string (got {other:?})",
                    self.name
                )))
            }
            None => None,
        };
        let mut param = Message::default();
        match (positional.get(1), self.key) {
            (None, _) => {}
            (Some(ArgValue::Str(v)), Some(k)) => {
                param.push(k.field, Value::Enum(self.key_value(v)));
            }
            (Some(_), _) => {
                return Err(GraphError::Invalid(format!(
                    "template {} in insert takes a name and {}",
                    self.name,
                    if self.key.is_some() { "one key attribute" } else { "named attributes only" }
                )))
            }
        }
        if positional.len() > 2 {
            return Err(GraphError::Invalid(format!("too many positional arguments for {}", self.name)));
        }
        for (k, v) in named {
            if k == "name" {
                match v {
                    ArgValue::Str(s) => name = Some(s.clone()),
                    _ => return Err(GraphError::Invalid("`name` must be a string".into())),
                }
                continue;
            }
            param.push(k.clone(), v.to_value(self.key.is_some_and(|key| key.field == k)));
        }
        let name = name.ok_or_else(|| {
            GraphError::Invalid(format!("an inserted {} needs a name, e.g. {}(\"new_layer\")", self.name, self.name))
        })?;
        if name.is_empty() {
            return Err(GraphError::Invalid(format!("an inserted {} needs a non-empty name", self.name)));
        }
        let mut node = Node::new(name, self.types[0]);
        if !param.is_empty() {
            match self.param {
                Some(p) => node.params.push(p, Value::Msg(param)),
                None => {
                    return Err(GraphError::Invalid(format!(
                        "template {} takes no attributes (got {})",
                        self.name,
                        named.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(kind: Option<&str>) -> Node {
        let mut n = Node::new("p", "Pooling");
        let mut m = Message::default();
        if let Some(k) = kind {
            m.push("pool", Value::Enum(k.into()));
        }
        m.push("kernel_size", Value::Int(3));
        n.params.push("pooling_param", Value::Msg(m));
        n
    }

    #[test]
    fn pool_key_attribute_and_aliases() {
        let t = template("pool").expect("POOL");
        let avg = [ArgValue::Str("AVG".into())];
        let max = [ArgValue::Str("MAX".into())];
        assert!(t.matches(&pool(Some("AVE")), &avg, &[]));
        assert!(!t.matches(&pool(Some("AVE")), &max, &[]));
        assert!(t.matches(&pool(None), &max, &[]), "absent pool is Caffe's default MAX");
        assert!(t.matches(&pool(None), &[], &[("kernel_size".into(), ArgValue::Int(3))]));
        assert!(!t.matches(&pool(None), &[], &[("kernel_size".into(), ArgValue::Int(2))]));
        assert!(!template("CONV").expect("CONV").matches(&pool(None), &[], &[]));
        assert!(template("InnerProduct").is_some() && template("NOPE").is_none());
    }

    #[test]
    fn build_names_and_attributes() {
        let t = template("POOL").expect("POOL");
        let n = t
            .build(&[ArgValue::Str("p9".into()), ArgValue::Str("avg".into())], &[("kernel_size".into(), ArgValue::Int(2))])
            .expect("build");
        assert_eq!(n.name, "p9");
        assert!(t.matches(&n, &[ArgValue::Str("AVG".into())], &[("kernel_size".into(), ArgValue::Int(2))]));
        assert!(template("RELU").expect("RELU").build(&[], &[]).is_err());
        assert!(template("SIGMOID").expect("s").build(&[ArgValue::Str("s".into())], &[("x".into(), ArgValue::Int(1))]).is_err());
    }
}
