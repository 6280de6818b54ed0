//! The test data nets: round trips, snapshots, structure, shapes, errors.

use std::collections::HashMap;
use std::fmt::Write;

use dlv_graph::{textformat, LayerForm, Net, NodeId, Phase, Value};

use crate::{load, read, NETS, SOLVERS};

/// A compact listing of a net for snapshots: nodes, edges and inferred blobs.
fn listing(net: &Net, hints: &HashMap<String, Vec<usize>>) -> String {
    let info = net.infer_shapes_with(hints);
    let mut s = String::new();
    let _ = writeln!(s, "net {:?} form {:?} header {} fields", net.name, net.layer_form, net.header.len());
    for (i, (id, n)) in net.node_ids().iter().zip(net.nodes()).enumerate() {
        let phase = n.phase.map(|p| format!(" [{p:?}]")).unwrap_or_default();
        let outs = info
            .node(*id)
            .map(|s| {
                s.outputs
                    .iter()
                    .map(|o| o.as_ref().map_or("?".to_string(), |d| format!("{d:?}")))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{i:2} {} : {}{phase} ({}) -> ({}) {outs}",
            n.name,
            n.layer_type,
            n.bottoms.join(", "),
            n.tops.join(", ")
        );
        for b in info.blobs(*id).unwrap_or_default() {
            let _ = writeln!(s, "     {}.{} {:?}", n.name, b.name, b.shape);
        }
    }
    for (a, b, blob) in net.edge_positions() {
        let _ = writeln!(s, "edge {a} -> {b} ({blob})");
    }
    let _ = writeln!(s, "params {}", info.param_count());
    s
}

fn hints_for(name: &str) -> HashMap<String, Vec<usize>> {
    match name {
        "lenet_train_test.prototxt" => HashMap::from([("data".to_string(), vec![1, 28, 28])]),
        "alexnet.prototxt" | "legacy_v1.prototxt" => HashMap::from([("data".to_string(), vec![3, 32, 32])]),
        _ => HashMap::new(),
    }
}

fn id(net: &Net, name: &str) -> NodeId {
    net.find(name).unwrap_or_else(|| panic!("no layer {name}"))
}

#[test]
fn round_trip_prototxt_every_net() {
    for name in NETS {
        let net = load(name);
        let text = net.to_prototxt();
        let back = Net::from_prototxt(&text, "printed").unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
        assert_eq!(back, net, "{name}");
        // Printing is canonical: a second round prints the same text.
        assert_eq!(back.to_prototxt(), text, "{name}");
    }
}

#[test]
fn round_trip_json_every_net() {
    for name in NETS {
        let mut net = load(name);
        net.set_inferred_blobs();
        let json = net.to_json();
        let back = Net::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back, net, "{name}");
        assert_eq!(back.to_json(), json, "{name}");
    }
}

#[test]
fn snapshots_of_listings() {
    for name in NETS {
        let net = load(name);
        insta::assert_snapshot!(format!("listing_{name}"), listing(&net, &hints_for(name)));
    }
}

/// The exact bytes that the store hashes: a change here changes every network's object id.
#[test]
fn snapshot_of_lenet_json() {
    let mut net = load("lenet.prototxt");
    net.set_inferred_blobs();
    insta::assert_snapshot!("lenet_json", net.to_json());
}

#[test]
fn snapshot_of_lenet_dot() {
    insta::assert_snapshot!("lenet_dot", load("lenet.prototxt").to_dot());
}

#[test]
fn in_place_relu_chains() {
    let net = load("lenet.prototxt");
    let (ip1, relu1, ip2) = (id(&net, "ip1"), id(&net, "relu1"), id(&net, "ip2"));
    assert_eq!(net.next(ip1), [relu1]);
    assert_eq!(net.next(relu1), [ip2]);
    assert_eq!(net.prev(ip2), [relu1]);

    let net = load("alexnet.prototxt");
    let (conv1, relu1, norm1) = (id(&net, "conv1"), id(&net, "relu1"), id(&net, "norm1"));
    assert_eq!(net.next(conv1), [relu1]);
    assert_eq!(net.next(relu1), [norm1]);

    // The brief's example: conv1 -> relu1 -> pool1 with relu1 in place.
    let net = Net::from_prototxt(
        r#"layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }
           layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
           layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" }"#,
        "inline",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (c, r, p) = (id(&net, "conv1"), id(&net, "relu1"), id(&net, "pool1"));
    assert_eq!(net.next(c), [r]);
    assert_eq!(net.next(r), [p]);
    assert_eq!(net.prev(p), [r]);
    assert_eq!(net.topo_order().ok(), Some(vec![c, r, p]));
}

#[test]
fn train_and_test_data_layers_both_feed_conv1() {
    let net = load("lenet_train_test.prototxt");
    let conv1 = id(&net, "conv1");
    let prev = net.prev(conv1);
    assert_eq!(prev.len(), 2);
    let phases: Vec<Option<Phase>> = prev.iter().map(|&p| net.node(p).and_then(|n| n.phase)).collect();
    assert_eq!(phases, [Some(Phase::Train), Some(Phase::Test)]);
    assert!(prev.iter().all(|&p| net.node(p).map(|n| n.name.as_str()) == Some("mnist")));
    // The include rule is kept in the params so it prints back.
    let first = net.node(prev[0]).map(|n| n.params.get_msg("include").cloned());
    assert!(matches!(first, Some(Some(_))));
    // The TEST-only accuracy layer reads the TEST label only; the loss reads both.
    let acc = id(&net, "accuracy");
    let acc_sources: Vec<Option<Phase>> = net
        .edges()
        .iter()
        .filter(|(_, to, blob)| *to == acc && *blob == "label")
        .map(|(from, _, _)| net.node(*from).and_then(|n| n.phase))
        .collect();
    assert_eq!(acc_sources, [Some(Phase::Test)]);
    let loss = id(&net, "loss");
    assert_eq!(net.prev(loss).len(), 3);
}

#[test]
fn shapes_of_lenet() {
    for (name, hints) in [
        ("lenet.prototxt", HashMap::new()),
        ("lenet_train_test.prototxt", hints_for("lenet_train_test.prototxt")),
    ] {
        let net = load(name);
        let info = net.infer_shapes_with(&hints);
        let blob = |layer: &str, i: usize| info.blobs(id(&net, layer)).and_then(|b| b.get(i)).map(|b| b.shape.clone());
        assert_eq!(blob("conv1", 0), Some(vec![20, 1, 5, 5]), "{name}");
        assert_eq!(blob("conv1", 1), Some(vec![20]), "{name}");
        assert_eq!(blob("conv2", 0), Some(vec![50, 20, 5, 5]), "{name}");
        assert_eq!(blob("ip1", 0), Some(vec![500, 800]), "{name}");
        assert_eq!(blob("ip2", 0), Some(vec![10, 500]), "{name}");
        assert_eq!(info.param_count(), 20 * 25 + 20 + 50 * 20 * 25 + 50 + 500 * 800 + 500 + 10 * 500 + 10);
    }
    let net = load("lenet.prototxt");
    let info = net.infer_shapes();
    assert_eq!(info.output(id(&net, "pool2"), 0), Some(&[1, 50, 4, 4][..]));
    assert_eq!(info.output(id(&net, "prob"), 0), Some(&[1, 10][..]));
    // Train batch 64 is reported for layers of both phases; the TEST accuracy is a scalar.
    let net = load("lenet_train_test.prototxt");
    let info = net.infer_shapes_with(&hints_for("lenet_train_test.prototxt"));
    assert_eq!(info.output(id(&net, "conv1"), 0), Some(&[64, 20, 24, 24][..]));
    assert_eq!(info.output(id(&net, "accuracy"), 0), Some(&[][..]));
    assert_eq!(info.output(id(&net, "loss"), 0), Some(&[][..]));
}

#[test]
fn shapes_of_alexnet() {
    let net = load("alexnet.prototxt");
    let info = net.infer_shapes_with(&hints_for("alexnet.prototxt"));
    let weight = |layer: &str| info.blobs(id(&net, layer)).and_then(|b| b.first()).map(|b| b.shape.clone());
    assert_eq!(weight("conv1"), Some(vec![96, 3, 5, 5]));
    assert_eq!(weight("conv2"), Some(vec![256, 48, 5, 5]));
    assert_eq!(weight("conv3"), Some(vec![384, 256, 3, 3]));
    assert_eq!(weight("conv4"), Some(vec![384, 192, 3, 3]));
    assert_eq!(weight("conv5"), Some(vec![256, 192, 3, 3]));
    assert_eq!(weight("fc6"), Some(vec![1024, 256 * 4 * 4]));
    assert_eq!(weight("fc7"), Some(vec![1024, 1024]));
    assert_eq!(weight("fc8"), Some(vec![10, 1024]));
    assert_eq!(info.output(id(&net, "pool1"), 0), Some(&[128, 96, 16, 16][..]));
    assert_eq!(info.output(id(&net, "pool2"), 0), Some(&[128, 256, 8, 8][..]));
    assert_eq!(info.output(id(&net, "pool5"), 0), Some(&[128, 256, 4, 4][..]));
    // Without the dims hint, conv1 and fc6 are unknown, the rest is still known.
    let plain = net.infer_shapes();
    assert!(plain.blobs(id(&net, "conv1")).is_none());
    assert!(plain.blobs(id(&net, "fc6")).is_none());
    assert_eq!(plain.blobs(id(&net, "conv2")).map(<[_]>::len), Some(2));
    assert_eq!(plain.blobs(id(&net, "fc7")).map(<[_]>::len), Some(2));
    let mut filled = net.clone();
    filled.set_inferred_blobs();
    assert!(filled.node(id(&filled, "conv1")).is_some_and(|n| n.blobs.is_empty()));
    assert!(filled.node(id(&filled, "fc8")).is_some_and(|n| n.blobs.len() == 2));
}

#[test]
fn legacy_v1_parses_and_round_trips() {
    let net = load("legacy_v1.prototxt");
    assert_eq!(net.layer_form, LayerForm::LegacyV1);
    let types: Vec<&str> = net.nodes().map(|n| n.layer_type.as_str()).collect();
    assert_eq!(types, ["Data", "Data", "Convolution", "Pooling", "ReLU", "InnerProduct", "Accuracy", "SoftmaxWithLoss"]);
    let text = net.to_prototxt();
    assert!(text.contains("layers {\n  name: \"conv1\"\n  type: CONVOLUTION\n"), "{text}");
    assert!(!text.contains("layer {"));
    assert_eq!(Net::from_prototxt(&text, "printed").ok(), Some(net.clone()));
    // The JSON form keeps the legacy form too.
    let json = net.to_json();
    assert!(json.contains(r#""layer_form":"v1""#));
    assert_eq!(Net::from_json(&json).ok(), Some(net.clone()));
    let conv = net.find("conv1").and_then(|c| net.node(c)).map(|n| n.params.get_all("blobs_lr").count());
    assert_eq!(conv, Some(2));
    let info = net.infer_shapes_with(&hints_for("legacy_v1.prototxt"));
    let ip1 = info.blobs(id(&net, "ip1")).and_then(|b| b.first()).map(|b| b.shape.clone());
    assert_eq!(ip1, Some(vec![10, 32 * 16 * 16]));
}

#[test]
fn solvers_parse_and_round_trip() {
    for name in SOLVERS {
        let text = read(name);
        let msg = textformat::parse(&text, name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(textformat::parse(&textformat::print(&msg), "printed").ok(), Some(msg.clone()));
        assert_eq!(msg.get("solver_mode"), Some(&Value::Enum("CPU".into())));
        assert!(msg.get("base_lr").and_then(Value::as_f64).is_some());
    }
    let lenet = textformat::parse(&read("lenet_solver.prototxt"), "s").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lenet.get("lr_policy"), Some(&Value::Str("inv".into())));
    assert_eq!(lenet.get("power"), Some(&Value::Float(0.75)));
    let alex = textformat::parse(&read("alexnet_solver.prototxt"), "s").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(alex.get("stepsize"), Some(&Value::Int(20000)));
}

fn error_of(src: &str) -> String {
    match Net::from_prototxt(src, "bad.prototxt") {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_prototxt_errors_point_at_the_token() {
    assert_eq!(
        error_of("name: \"x\"\nlayer {\n  name: \"conv1\n}\n"),
        "bad.prototxt:3:9: unterminated string: expected a closing quote before end of line"
    );
    assert_eq!(
        error_of("layer {\n  name: \"a\"\n  type: \"ReLU\"\n"),
        "bad.prototxt:4:1: expected '}' to close 'layer' opened at line 1 column 7, found end of input"
    );
    assert_eq!(error_of("layer { name: }"), "bad.prototxt:1:15: expected a value for field 'name', found '}'");
    assert_eq!(
        error_of("layer {\n\tname: \"a\"\n\tbottom \"b\"\n}"),
        "bad.prototxt:3:9: expected ':' or '{' after field name 'bottom', found a string"
    );
    assert_eq!(error_of("layer { name: 'a' }}"), "bad.prototxt:1:20: expected a field name, found '}'");
    assert_eq!(
        error_of("layer {\n  convolution_param { num_output: 2x }\n}"),
        "bad.prototxt:2:35: invalid number `2x`: expected an integer or a float"
    );
    // Columns count characters, not bytes.
    assert_eq!(error_of("# é\nname: \"é\" x"), "bad.prototxt:2:12: expected ':' or '{' after field name 'x', found end of input");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["layer {", "a: {", "a <"] {
        let src = open.repeat(1_000_000);
        let e = error_of(&src);
        assert!(e.contains("nested deeper than 60 levels"), "{e}");
    }
    // The deepest nesting the parser accepts, in a layer and in the header, fits the JSON form.
    let depth = textformat::MAX_DEPTH;
    let inner = format!("{}x: 1.5{}", "m { ".repeat(depth), " }".repeat(depth));
    let src = format!("{inner}\nlayer {{ name: 'a' {} x: 1 {} }}", "p { ".repeat(depth - 1), " }".repeat(depth - 1));
    let net = Net::from_prototxt(&src, "deep").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Net::from_json(&net.to_json()).map_err(|e| e.to_string()), Ok(net.clone()));
    assert_eq!(Net::from_prototxt(&net.to_prototxt(), "printed").ok(), Some(net));
    let deep_json = format!(r#"{{"name":"x","nodes":[],"header":{}{}}}"#, "[[\"a\",".repeat(10_000), "]]".repeat(10_000));
    assert!(Net::from_json(&deep_json).is_err());
}

#[test]
fn unknown_layer_types_are_kept() {
    let src = r#"layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "m" layer: "L" } }
                 layer { name: "z" type: "ReLU" bottom: "y" top: "y" }"#;
    let net = Net::from_prototxt(src, "t").unwrap_or_else(|e| panic!("{e}"));
    let py = id(&net, "py");
    assert_eq!(net.node(py).map(|n| n.layer_type.as_str()), Some("Python"));
    assert_eq!(net.next(py), [id(&net, "z")]);
    assert_eq!(Net::from_prototxt(&net.to_prototxt(), "t").ok(), Some(net.clone()));
    assert!(net.infer_shapes().output(py, 0).is_none());
}
