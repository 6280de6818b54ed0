//! Property tests: random nets survive JSON export/import and prototxt print/parse.

use dlv_graph::{textformat, BlobSpec, LayerForm, Message, Net, Node, Phase, Value};
use proptest::prelude::*;

/// Field names that the prototxt reading gives a meaning to, kept out of random params.
const RESERVED: &[&str] = &["name", "type", "bottom", "top", "include", "exclude", "layer", "layers"];

fn key() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,10}".prop_filter("reserved", |k| !RESERVED.contains(&k.as_str()))
}

fn enum_value() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,8}".prop_filter("keyword", |e| textformat::is_plain_enum(e))
}

fn float() -> impl Strategy<Value = f64> {
    use proptest::num::f64 as f;
    (f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO | f::INFINITE).boxed()
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_/.]{0,12}",
        ".{0,12}",
        Just("quote \" back \\ nl \n tab \t nul \0 del \u{7f} é ✓".to_string()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        float().prop_map(Value::Float),
        any::<bool>().prop_map(Value::Bool),
        text().prop_map(Value::Str),
        enum_value().prop_map(Value::Enum),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let leaf = prop::collection::vec((key(), scalar()), 0..4).prop_map(|fields| Message { fields });
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop::collection::vec((key(), prop_oneof![scalar(), inner.prop_map(Value::Msg)]), 0..4)
            .prop_map(|fields| Message { fields })
    })
}

fn layer_type() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["Convolution", "ReLU", "Pooling", "InnerProduct", "Data", "SoftmaxWithLoss", "CONVOLUTION", "Custom", ""])
            .prop_map(str::to_string),
        text(),
    ]
}

/// One random layer: a name, a type, bottoms as indexes into the blobs made so far, tops as
/// new blobs or in place, params, and maybe a phase.
#[derive(Debug, Clone)]
struct LayerSpec {
    name: String,
    layer_type: String,
    bottoms: Vec<prop::sample::Index>,
    new_tops: usize,
    in_place: bool,
    params: Message,
    phase: Option<Phase>,
}

fn layer() -> impl Strategy<Value = LayerSpec> {
    (
        text(),
        layer_type(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        0usize..3,
        any::<bool>(),
        message(),
        prop_oneof![Just(None), Just(Some(Phase::Train)), Just(Some(Phase::Test))],
    )
        .prop_map(|(name, layer_type, bottoms, new_tops, in_place, params, phase)| LayerSpec {
            name,
            layer_type,
            bottoms,
            new_tops,
            in_place,
            params,
            phase,
        })
}

fn build(name: String, header: Message, v1: bool, specs: Vec<LayerSpec>) -> Net {
    let mut blobs: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    for (i, s) in specs.into_iter().enumerate() {
        let mut node = Node::new(s.name, s.layer_type);
        if !blobs.is_empty() {
            node.bottoms = s.bottoms.iter().map(|ix| ix.get(&blobs).clone()).collect();
        }
        if s.in_place {
            node.tops.extend(node.bottoms.first().cloned());
        }
        for t in 0..s.new_tops {
            let blob = format!("b{i}_{t}");
            node.tops.push(blob.clone());
            blobs.push(blob);
        }
        node.params = s.params;
        if let Some(p) = s.phase {
            let mut inc = Message::default();
            let e = if p == Phase::Train { "TRAIN" } else { "TEST" };
            inc.push("phase", Value::Enum(e.into()));
            node.params.push("include", Value::Msg(inc));
            node.phase = Some(p);
        }
        layers.push(node);
    }
    // A net without layers has no form to remember: it reads back in the current form.
    let v1 = v1 && !layers.is_empty();
    let mut net = Net::from_layers(name, header, layers);
    if v1 {
        net.layer_form = LayerForm::LegacyV1;
    }
    net
}

fn net() -> impl Strategy<Value = Net> {
    (text(), message(), any::<bool>(), prop::collection::vec(layer(), 0..8))
        .prop_map(|(name, header, v1, specs)| build(name, header, v1, specs))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn prototxt_round_trip(net in net()) {
        let text = net.to_prototxt();
        let back = Net::from_prototxt(&text, "printed");
        prop_assert!(back.is_ok(), "{:?}\n{}", back.err(), text);
        let back = back.unwrap_or_default();
        prop_assert_eq!(&back, &net, "{}", text);
        prop_assert_eq!(back.to_prototxt(), text);
    }

    #[test]
    fn json_round_trip(
        net in net(),
        extra in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), text()), 0..4),
        shapes in prop::collection::vec(prop::collection::vec(0usize..5000, 0..5), 0..3),
    ) {
        let mut net = net;
        let ids = net.node_ids().to_vec();
        // Explicit forward edges and blobs that no prototxt would give.
        if !ids.is_empty() {
            for (a, b, blob) in extra {
                let (a, b) = (a.index(ids.len()), b.index(ids.len()));
                if a < b {
                    prop_assert!(net.add_edge(ids[a], ids[b], blob).is_ok());
                }
            }
            if let Some(node) = net.node_mut(ids[0]) {
                node.blobs = shapes.into_iter().enumerate().map(|(i, shape)| BlobSpec { name: format!("blob{i}"), shape }).collect();
            }
        }
        let json = net.to_json();
        let back = Net::from_json(&json);
        prop_assert!(back.is_ok(), "{:?}\n{}", back.err(), json);
        let back = back.unwrap_or_default();
        prop_assert_eq!(&back, &net, "{}", json);
        prop_assert_eq!(back.to_json(), json);
    }

    #[test]
    fn text_format_round_trip(msg in message()) {
        let text = textformat::print(&msg);
        let back = textformat::parse(&text, "printed");
        prop_assert_eq!(back.ok(), Some(msg), "{}", text);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_text(src in ".{0,200}") {
        let _ = Net::from_prototxt(&src, "fuzz");
    }
}
