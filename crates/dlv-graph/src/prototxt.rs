//! Caffe NetParameter prototxt <-> Net.
//!
//! `name` is the net name, `layer {}` (or legacy `layers {}`) blocks become nodes, every other
//! net-level field goes into [`Net::header`] in source order. In a layer, the first `name` and
//! `type` and all `bottom`/`top` fields go into the [`Node`] fields, everything else into
//! [`Node::params`] in source order. See the crate documentation for the decisions.

use crate::net::{LayerForm, Net, Node, Phase};
use crate::textformat::{self, Message, Value};
use crate::GraphError;

/// Caffe's `V1LayerParameter.LayerType` names and the `LayerParameter.type` strings they were
/// upgraded to (Caffe's `UpgradeV1LayerType`).
const V1_TYPES: &[(&str, &str)] = &[
    ("ABSVAL", "AbsVal"),
    ("ACCURACY", "Accuracy"),
    ("ARGMAX", "ArgMax"),
    ("BNLL", "BNLL"),
    ("CONCAT", "Concat"),
    ("CONTRASTIVE_LOSS", "ContrastiveLoss"),
    ("CONVOLUTION", "Convolution"),
    ("DECONVOLUTION", "Deconvolution"),
    ("DATA", "Data"),
    ("DROPOUT", "Dropout"),
    ("DUMMY_DATA", "DummyData"),
    ("EUCLIDEAN_LOSS", "EuclideanLoss"),
    ("ELTWISE", "Eltwise"),
    ("EXP", "Exp"),
    ("FLATTEN", "Flatten"),
    ("HDF5_DATA", "HDF5Data"),
    ("HDF5_OUTPUT", "HDF5Output"),
    ("HINGE_LOSS", "HingeLoss"),
    ("IM2COL", "Im2col"),
    ("IMAGE_DATA", "ImageData"),
    ("INFOGAIN_LOSS", "InfogainLoss"),
    ("INNER_PRODUCT", "InnerProduct"),
    ("LRN", "LRN"),
    ("MEMORY_DATA", "MemoryData"),
    ("MULTINOMIAL_LOGISTIC_LOSS", "MultinomialLogisticLoss"),
    ("MVN", "MVN"),
    ("POOLING", "Pooling"),
    ("POWER", "Power"),
    ("RELU", "ReLU"),
    ("SIGMOID", "Sigmoid"),
    ("SIGMOID_CROSS_ENTROPY_LOSS", "SigmoidCrossEntropyLoss"),
    ("SILENCE", "Silence"),
    ("SOFTMAX", "Softmax"),
    ("SOFTMAX_LOSS", "SoftmaxWithLoss"),
    ("SPLIT", "Split"),
    ("SLICE", "Slice"),
    ("TANH", "TanH"),
    ("WINDOW_DATA", "WindowData"),
    ("THRESHOLD", "Threshold"),
];

/// The current type name of a legacy V1 layer type enum (`SOFTMAX_LOSS` -> `SoftmaxWithLoss`).
pub fn v1_to_type(v1: &str) -> Option<&'static str> {
    V1_TYPES.iter().find(|(a, _)| *a == v1).map(|(_, b)| *b)
}

/// The legacy V1 enum of a current layer type (`ReLU` -> `RELU`).
pub fn type_to_v1(t: &str) -> Option<&'static str> {
    V1_TYPES.iter().find(|(_, b)| *b == t).map(|(a, _)| *a)
}

impl Net {
    /// Reads a Caffe `NetParameter` in text format. `file` names the source in error messages.
    pub fn from_prototxt(src: &str, file: &str) -> Result<Net, GraphError> {
        let msg = textformat::parse(src, file)?;
        Net::from_message(msg, file)
    }

    /// Builds a net from an already parsed `NetParameter` message.
    pub fn from_message(msg: Message, file: &str) -> Result<Net, GraphError> {
        let mut name: Option<String> = None;
        let mut header = Message::default();
        let mut layers: Vec<Node> = Vec::new();
        let mut form: Option<(LayerForm, usize)> = None;
        for (key, value) in msg.fields {
            match (key.as_str(), value) {
                ("name", Value::Str(s)) if name.is_none() => name = Some(s),
                (kw @ ("layer" | "layers"), Value::Msg(m)) => {
                    let this = if kw == "layer" { LayerForm::Layer } else { LayerForm::LegacyV1 };
                    match form {
                        None => form = Some((this, layers.len())),
                        Some((f, _)) if f != this => {
                            return Err(GraphError::Invalid(format!(
                                "{file}: layer {} mixes 'layer' and 'layers' blocks; use one form",
                                layers.len() + 1
                            )))
                        }
                        _ => {}
                    }
                    layers.push(node_from_message(m, this, file, layers.len() + 1)?);
                }
                (_, value) => header.push(key, value),
            }
        }
        let mut net = Net::from_layers(name.unwrap_or_default(), header, layers);
        net.layer_form = form.map(|(f, _)| f).unwrap_or_default();
        Ok(net)
    }

    /// Writes the net as a Caffe `NetParameter` in text format: `name`, the header fields, then
    /// the layers in definition order, in the form they were read in ([`Net::layer_form`]).
    pub fn to_prototxt(&self) -> String {
        textformat::print(&self.to_message())
    }

    /// The `NetParameter` message that [`Net::to_prototxt`] prints.
    pub fn to_message(&self) -> Message {
        let mut msg = Message::default();
        if !self.name.is_empty() || self.header.get("name").is_some() {
            msg.push("name", Value::Str(self.name.clone()));
        }
        msg.fields.extend(self.header.fields.iter().cloned());
        let key = match self.layer_form {
            LayerForm::Layer => "layer",
            LayerForm::LegacyV1 => "layers",
        };
        for node in self.nodes() {
            msg.push(key, Value::Msg(node_to_message(node, self.layer_form)));
        }
        msg
    }
}

/// The phase a layer is restricted to by its `include`/`exclude` rules: the first
/// `include { phase: X }`, else the opposite of the first `exclude { phase: X }`.
pub(crate) fn phase_of(params: &Message) -> Option<Phase> {
    let phase_in = |m: &Message| match m.get("phase") {
        Some(Value::Enum(p)) | Some(Value::Str(p)) if p == "TRAIN" => Some(Phase::Train),
        Some(Value::Enum(p)) | Some(Value::Str(p)) if p == "TEST" => Some(Phase::Test),
        Some(Value::Int(0)) => Some(Phase::Train),
        Some(Value::Int(1)) => Some(Phase::Test),
        _ => None,
    };
    if let Some(p) = params.get_all("include").filter_map(Value::as_msg).find_map(phase_in) {
        return Some(p);
    }
    params
        .get_all("exclude")
        .filter_map(Value::as_msg)
        .find_map(phase_in)
        .map(|p| match p {
            Phase::Train => Phase::Test,
            Phase::Test => Phase::Train,
        })
}

fn text_field(value: Value, field: &str, file: &str, index: usize) -> Result<String, GraphError> {
    match value {
        Value::Str(s) | Value::Enum(s) => Ok(s),
        other => Err(GraphError::Invalid(format!(
            "{file}: layer {index}: expected a string for '{field}', found {}",
            textformat::scalar_text(&other)
        ))),
    }
}

fn node_from_message(m: Message, form: LayerForm, file: &str, index: usize) -> Result<Node, GraphError> {
    let mut node = Node::new("", "");
    let (mut has_name, mut has_type) = (false, false);
    for (key, value) in m.fields {
        match key.as_str() {
            "name" if !has_name => {
                node.name = text_field(value, "name", file, index)?;
                has_name = true;
            }
            "type" if !has_type => {
                node.layer_type = match (form, value) {
                    (LayerForm::LegacyV1, Value::Enum(e)) => v1_to_type(&e).map(str::to_string).unwrap_or(e),
                    (_, v) => text_field(v, "type", file, index)?,
                };
                has_type = true;
            }
            "bottom" => node.bottoms.push(text_field(value, "bottom", file, index)?),
            "top" => node.tops.push(text_field(value, "top", file, index)?),
            _ => node.params.push(key, value),
        }
    }
    node.phase = phase_of(&node.params);
    Ok(node)
}

fn node_to_message(node: &Node, form: LayerForm) -> Message {
    let mut m = Message::default();
    if !node.name.is_empty() || node.params.get("name").is_some() {
        m.push("name", Value::Str(node.name.clone()));
    }
    if !node.layer_type.is_empty() || node.params.get("type").is_some() {
        let t = &node.layer_type;
        let value = match form {
            LayerForm::Layer => Value::Str(t.clone()),
            LayerForm::LegacyV1 => match type_to_v1(t) {
                Some(e) => Value::Enum(e.to_string()),
                // An enum that is not a V1 name reads back as itself; a V1 name or anything that
                // is not an identifier must stay a string to read back unchanged.
                None if textformat::is_plain_enum(t) && v1_to_type(t).is_none() => Value::Enum(t.clone()),
                None => Value::Str(t.clone()),
            },
        };
        m.push("type", value);
    }
    for b in &node.bottoms {
        m.push("bottom", Value::Str(b.clone()));
    }
    for t in &node.tops {
        m.push("top", Value::Str(t.clone()));
    }
    m.fields.extend(node.params.fields.iter().cloned());
    // A phase set through the API without an include rule is written as one, so Caffe sees it.
    if let Some(phase) = node.phase {
        if phase_of(&node.params) != Some(phase) {
            let mut inc = Message::default();
            let p = match phase {
                Phase::Train => "TRAIN",
                Phase::Test => "TEST",
            };
            inc.push("phase", Value::Enum(p.into()));
            m.push("include", Value::Msg(inc));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(src: &str) -> Net {
        match Net::from_prototxt(src, "t.prototxt") {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn layers_and_header() {
        let n = net(r#"name: "n" input: "data" input_dim: 1
            layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 2 } }
            layer { name: "r" type: "ReLU" bottom: "c" top: "c" }"#);
        assert_eq!(n.name, "n");
        assert_eq!(n.header.fields.len(), 2);
        assert_eq!(n.len(), 2);
        let c = n.nodes().next().map(|c| c.params.clone()).unwrap_or_default();
        assert!(c.get_msg("convolution_param").is_some());
        assert_eq!(n.edges().len(), 1);
        assert_eq!(Net::from_prototxt(&n.to_prototxt(), "x").ok(), Some(n));
    }

    #[test]
    fn v1_types_map_both_ways() {
        let n = net("layers { name: 'a' type: SOFTMAX_LOSS } layers { name: 'b' type: CUSTOM_THING } layers { name: 'c' type: 'ReLU' }");
        let types: Vec<&str> = n.nodes().map(|n| n.layer_type.as_str()).collect();
        assert_eq!(types, ["SoftmaxWithLoss", "CUSTOM_THING", "ReLU"]);
        assert_eq!(n.layer_form, LayerForm::LegacyV1);
        let text = n.to_prototxt();
        assert!(text.contains("type: SOFTMAX_LOSS") && text.contains("type: RELU"), "{text}");
        assert_eq!(Net::from_prototxt(&text, "x").ok(), Some(n));
    }

    #[test]
    fn v1_name_as_current_type_stays_a_string() {
        let mut n = Net::new("x");
        n.layer_form = LayerForm::LegacyV1;
        n.push_layer(Node::new("a", "CONVOLUTION"));
        n.push_layer(Node::new("b", "my-type"));
        assert_eq!(Net::from_prototxt(&n.to_prototxt(), "x").ok(), Some(n));
    }

    #[test]
    fn mixed_forms_are_refused() {
        let e = Net::from_prototxt("layer { name: 'a' } layers { name: 'b' }", "f").err();
        assert!(e.map(|e| e.to_string()).unwrap_or_default().contains("mixes"));
    }

    #[test]
    fn phase_from_include_and_exclude() {
        let n = net("layer { name: 'a' include { phase: TEST } } layer { name: 'b' exclude { phase: TEST } } layer { name: 'c' }");
        let phases: Vec<Option<Phase>> = n.nodes().map(|n| n.phase).collect();
        assert_eq!(phases, [Some(Phase::Test), Some(Phase::Train), None]);
    }

    #[test]
    fn api_phase_is_written_as_include() {
        let mut n = Net::new("x");
        let mut node = Node::new("a", "Data");
        node.phase = Some(Phase::Train);
        n.push_layer(node);
        let back = net(&n.to_prototxt());
        assert_eq!(back.nodes().next().and_then(|n| n.phase), Some(Phase::Train));
    }

    #[test]
    fn non_string_name_is_an_error() {
        let e = Net::from_prototxt("layer { name: 5 }", "f.prototxt").err().map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("invalid network: f.prototxt: layer 1: expected a string for 'name', found 5"));
    }

    #[test]
    fn empty_name_with_extra_name_param_round_trips() {
        let mut n = Net::new("");
        let mut node = Node::new("", "");
        node.params.push("name", Value::Str("second".into()));
        node.params.push("type", Value::Int(3));
        n.push_layer(node);
        n.header.push("name", Value::Int(1));
        assert_eq!(Net::from_prototxt(&n.to_prototxt(), "x").ok(), Some(n));
    }
}
