//! `dlv query`: the SPEC §6 queries as written against AlexNet variants committed with
//! `dlv commit --date`, table and JSON output, --commit, --save, -f, and errors.

use std::collections::HashMap;

use dlv_graph::Net;

use crate::{read_tensors, testdata, Scratch};

fn layer_block(text: &str, name: &str) -> (usize, usize) {
    let start = text.find(&format!("layer {{\n  name: \"{name}\"\n")).unwrap_or_else(|| panic!("no layer {name}"));
    (start, start + text[start..].find("\n}\n").expect("block end") + 3)
}

fn remove_layer(text: &str, name: &str) -> String {
    let (a, b) = layer_block(text, name);
    format!("{}{}", &text[..a], &text[b..])
}

fn edit_layer(text: &str, name: &str, from: &str, to: &str) -> String {
    let (a, b) = layer_block(text, name);
    format!("{}{}{}", &text[..a], text[a..b].replacen(from, to, 1), &text[b..])
}

/// A small AlexNet (few channels, so that its weights are small) and the two edited copies.
fn nets() -> (String, String, String) {
    let base = std::fs::read_to_string(testdata("nets/alexnet.prototxt")).expect("alexnet");
    let base = base
        .replace("num_output: 96", "num_output: 4")
        .replace("num_output: 256", "num_output: 4")
        .replace("num_output: 384", "num_output: 4")
        .replace("num_output: 1024", "num_output: 8");
    let no_relu5 = remove_layer(&base, "relu5");
    let avg = remove_layer(&base, "relu1");
    let avg = remove_layer(&avg, "norm1");
    let avg = edit_layer(&avg, "pool1", "bottom: \"norm1\"", "bottom: \"conv1\"");
    let avg = edit_layer(&avg, "pool1", "pool: MAX", "pool: AVE");
    let avg = remove_layer(&avg, "relu5");
    let avg = edit_layer(&avg, "pool5", "pool: MAX", "pool: AVE");
    (base, no_relu5, avg)
}

/// Weights for every learnable layer of `prototxt`: inferred shapes, with conv1 and fc6 (whose
/// input sizes the Data layer does not tell) given by hand.
fn weights(prototxt: &str, seed: u32) -> Vec<u8> {
    let mut net = Net::from_prototxt(prototxt, "n").expect("net");
    net.set_inferred_blobs();
    let mut ts: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    for n in net.nodes() {
        let shapes: Vec<(String, Vec<usize>)> = match (n.name.as_str(), n.blobs.is_empty()) {
            ("conv1", _) => vec![("weight".into(), vec![4, 3, 5, 5]), ("bias".into(), vec![4])],
            ("fc6", _) => vec![("weight".into(), vec![8, 16]), ("bias".into(), vec![8])],
            (_, false) => n.blobs.iter().map(|b| (b.name.clone(), b.shape.clone())).collect(),
            _ => continue,
        };
        for (blob, shape) in shapes {
            let count: usize = shape.iter().product();
            let data = (0..count)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    (state as f32 / u32::MAX as f32).to_le_bytes()
                })
                .collect();
            ts.push((format!("{}.{blob}", n.name), shape, data));
        }
    }
    crate::safetensors_bytes(&ts)
}

fn commit(s: &Scratch, name: &str, date: &str, prototxt: &str, seed: u32) {
    s.write("net.prototxt", prototxt);
    s.write("w.safetensors", weights(prototxt, seed));
    s.ok(&["add", "net.prototxt", "w.safetensors"]);
    s.ok(&["commit", "-m", &format!("{name} trained"), "--name", name, "--date", date]);
}

fn repo() -> Scratch {
    let s = Scratch::new();
    s.ok(&["init"]);
    let (base, no_relu5, avg) = nets();
    commit(&s, "alexnet-origin", "2015-11-23", &base, 1);
    commit(&s, "alexnet_v1", "2015-11-25", &no_relu5, 2);
    commit(&s, "alexnet_v2", "2015-11-22", &no_relu5, 3);
    commit(&s, "alexnet_v3", "2015-12-01", &base, 4);
    commit(&s, "alexnet-avgv1", "2015-11-24", &avg, 5);
    commit(&s, "alexnet", "2015-12-02", &no_relu5, 6);
    s.copy_testdata("nets/lenet.prototxt", "lenet.prototxt");
    s.ok(&["add", "lenet.prototxt"]);
    s.ok(&["commit", "-m", "lenet", "--name", "lenet", "--date", "2015-12-01"]);
    s
}

const Q1: &str = r#"select m1
where m1.name like "alexnet_%" and
      m1.creation_time > "2015-11-22" and
      m1["conv[1,3,5]"].next has POOL("MAX")"#;

const Q2: &str = r#"slice m2 from m1
where m1.name like "alexnet-origin%"
mutate m2.input = m1["conv1"] and
       m2.output = m1["fc7"]"#;

const Q3: &str = r#"construct m2 from m1
where m1.name like "alexnet-avgv1%" and
      m1["conv*($1)"].next has POOL("AVG")
mutate m1["conv*($1)"].insert = RELU("relu$1")"#;

const Q4: &str = r#"evaluate m
from "query3"
with config = "path to config"
vary config.base_lr in [0.1, 0.01, 0.001] and
     config.net["conv*"].lr auto and
     config.input_data in ["path1", "path2"]
keep top(5, m["loss"], 100)"#;

fn json(s: &Scratch, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&s.ok(args)).expect("json output")
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v["rows"].as_array().expect("rows").iter().map(|r| r["name"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn spec_queries_run_as_written() {
    let s = repo();
    // Query 1: only alexnet_v1 (newer than 2015-11-22, conv5 straight into a MAX pool).
    let q1 = json(&s, &["query", "--json", Q1]);
    assert_eq!(names(&q1), ["alexnet_v1"]);
    assert_eq!(q1["rows"][0]["matched"][0], "pool5");
    assert_eq!(q1["plan"]["candidates"], 5, "lenet and alexnet_v2 never read: {q1}");
    let table = s.ok(&["query", Q1]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("VERSION") && lines[0].contains("CREATED") && lines[0].contains("MATCHED"), "{table}");
    assert!(lines[1].starts_with("alexnet_v1@") && lines[1].contains("2015-11-25") && lines[1].ends_with("pool5"), "{table}");
    assert_eq!(lines[0].find("CREATED"), lines[1].find("2015-11-25"), "aligned columns:\n{table}");

    // Query 2: shown, not committed; then committed with --commit.
    let before = s.ok(&["list"]).lines().count();
    let shown = s.ok(&["query", Q2]);
    assert!(shown.contains("alexnet-origin-slice (new)") && shown.contains("not committed"), "{shown}");
    assert_eq!(s.ok(&["list"]).lines().count(), before);
    let q2 = json(&s, &["query", "--json", "--commit", Q2]);
    let slice_id = q2["rows"][0]["id"].as_str().expect("committed id").to_string();
    let slice: serde_json::Value = serde_json::from_str(&s.ok(&["desc", &slice_id, "--output", "json"])).expect("desc");
    let origin: serde_json::Value = serde_json::from_str(&s.ok(&["desc", "alexnet-origin", "--output", "json"])).expect("desc");
    assert_eq!(slice["parents"][0], origin["id"]);
    let objects = |v: &serde_json::Value| -> HashMap<String, String> {
        v["tensors"].as_array().expect("tensors").iter().map(|t| (t["name"].as_str().unwrap_or("").to_string(), t["object"].as_str().unwrap_or("").to_string())).collect()
    };
    let (so, oo) = (objects(&slice), objects(&origin));
    assert_eq!(so.len(), 14, "conv1-5, fc6, fc7 weight and bias: {so:?}");
    for (name, obj) in &so {
        assert_eq!(oo.get(name), Some(obj), "{name} reuses the source's object");
    }
    assert!(!so.contains_key("fc8.weight"));
    s.ok(&["checkout", &slice_id, "--to", "sliced"]);
    let files: Vec<_> = std::fs::read_dir(s.path().join("sliced")).expect("dir").filter_map(|e| e.ok()).map(|e| e.path()).collect();
    let proto = files.iter().find(|p| p.extension().is_some_and(|e| e == "prototxt")).expect("prototxt written");
    let net = Net::from_prototxt(&std::fs::read_to_string(proto).expect("read"), "s").expect("valid prototxt");
    let layers: Vec<&str> = net.nodes().map(|n| n.name.as_str()).collect();
    assert_eq!(layers.first(), Some(&"conv1"));
    assert_eq!(layers.last(), Some(&"fc7"));
    assert_eq!(layers.len(), 19);
    s.ok(&["checkout", "alexnet-origin", "--to", "orig"]);
    let st = files.iter().find(|p| p.extension().is_some_and(|e| e == "safetensors")).expect("weights written");
    let (a, b) = (read_tensors(st), read_tensors(&s.path().join("orig/w.safetensors")));
    for (name, t) in &a {
        assert_eq!(b.get(name), Some(t), "{name} bit-identical");
    }

    // Query 3: relu1 and relu5 inserted, nothing else.
    let q3 = json(&s, &["query", "--json", "--commit", Q3]);
    assert_eq!(q3["rows"][0]["changes"], serde_json::json!(["insert relu1 after conv1", "insert relu5 after conv5"]));
    let id = q3["rows"][0]["id"].as_str().expect("id").to_string();
    let desc = s.ok(&["desc", &id]);
    let order: Vec<&str> = desc.lines().filter_map(|l| l.split_whitespace().next()).filter(|w| ["conv1", "relu1", "pool1", "conv5", "relu5", "pool5"].contains(w)).collect();
    assert_eq!(order, ["conv1", "relu1", "pool1", "conv5", "relu5", "pool5"], "{desc}");

    // Query 4 parses; without --data there is no trainer, and it says so.
    s.ok(&["query", "--save", "query3", Q3]);
    let err = s.fails(&["query", Q4], 1);
    assert!(err.contains("needs a trainer"), "{err}");
}

#[test]
fn saved_nested_file_and_explain() {
    let s = repo();
    let saved = s.ok(&["query", "--save", "q1", Q1]);
    assert!(saved.contains("saved query \"q1\""), "{saved}");
    assert_eq!(names(&json(&s, &["query", "--json", r#"select m from "q1""#])), ["alexnet_v1"]);
    let nested = r#"select m from (select x where x.name like "alexnet%") as m where m["conv5"].next has POOL("AVG")"#;
    assert_eq!(names(&json(&s, &["query", "--json", nested])), ["alexnet-avgv1"]);
    s.write("q.dql", "-- query 1 from a file\n".to_string() + Q1);
    let out = s.ok(&["query", "-f", "q.dql", "--explain"]);
    assert!(out.contains("alexnet_v1@") && out.contains("plan: name starts with \"alexnet\""), "{out}");
    assert!(out.contains("5 candidate(s)"), "{out}");
    let all = json(&s, &["query", "--json", "select m where m.creation_time >= 2015-12-01"]);
    assert_eq!(names(&all), ["alexnet_v3", "lenet", "alexnet"]);
}

#[test]
fn query_errors_are_clear_and_exit_1() {
    let s = repo();
    let err = s.fails(&["query", "select m\nwhere m.name like"], 1);
    assert!(err.contains("2:18: expected") && err.contains("where m.name like\n                 ^"), "{err}");
    let err = s.fails(&["query", "select m where m.name > 3"], 1);
    assert!(err.contains("type mismatch"), "{err}");
    let err = s.fails(&["query", r#"select m where m["conv1"] has FOO"#], 1);
    assert!(err.contains("unknown template `FOO`"), "{err}");
    let err = s.fails(&["query", r#"select m from "nope""#], 1);
    assert!(err.contains("unknown saved query"), "{err}");
    let err = s.fails(&["query", "--commit", r#"construct n from m where m.name = "alexnet_v1" mutate m["data"].delete"#], 1);
    assert!(err.contains("alexnet_v1@") && err.contains("layer 'conv1'"), "{err}");
}

/// `evaluate` from the CLI with `--data`: a LeNet version with the bundled weights, two learning
/// rates, a few iterations on the bundled digits (seconds in a debug build).
#[test]
fn evaluate_runs_with_data() {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.copy_testdata("nets/lenet_train_test.prototxt", "lenet_train_test.prototxt");
    s.copy_testdata("weights/lenet.safetensors", "lenet.safetensors");
    s.ok(&["add", "lenet_train_test.prototxt", "lenet.safetensors"]);
    s.ok(&["commit", "-m", "pretrained", "--name", "lenet"]);
    s.write("tiny.toml", "max_iter = 4\nbatch_size = 8\n");
    let q = r#"evaluate m
from (select x where x.name = "lenet")
with config = "tiny.toml"
vary config.base_lr in [0.01, 0.001]
keep top(1, m["loss"], 2)"#;
    let digits = testdata("data/digits").display().to_string();
    // Without --data: the clear error.
    let err = s.fails(&["query", q], 1);
    assert!(err.contains("needs a trainer") && err.contains("--data"), "{err}");
    let v = json(&s, &["query", "--json", "--data", &digits, "--test-limit", "40", q]);
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "top(1) keeps one run: {v}");
    let loss = rows[0]["metrics"].as_array().expect("metrics").iter().find(|m| m["name"] == "loss").expect("loss metric");
    assert!(loss["value"].as_f64().is_some_and(f64::is_finite), "{v}");
    assert!(rows[0]["params"].as_array().expect("params").iter().any(|p| p["key"] == "base_lr"), "{v}");
    assert_eq!(v["plan"]["runs"], 2, "{v}");
    let table = s.ok(&["query", "--data", &digits, "--test-limit", "40", q]);
    assert!(table.contains("METRICS") && table.contains("loss="), "{table}");
}
