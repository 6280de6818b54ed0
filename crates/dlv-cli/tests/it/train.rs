//! `dlv train` and `dlv eval` on the bundled digits (a few iterations, debug build).

use crate::{testdata, Scratch};

fn repo_with_lenet() -> Scratch {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.copy_testdata("nets/lenet_train_test.prototxt", "lenet_train_test.prototxt");
    s.copy_testdata("nets/lenet_solver.prototxt", "lenet_solver.prototxt");
    s.ok(&["add", "lenet_train_test.prototxt", "lenet_solver.prototxt"]);
    s.ok(&["commit", "-m", "untrained", "--name", "lenet"]);
    s
}

fn digits() -> String {
    testdata("data/digits").display().to_string()
}

#[test]
fn train_commits_a_child_with_series_and_eval_records_accuracy() {
    let s = repo_with_lenet();
    let parent: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
    let parent_id = parent[0]["id"].as_str().expect("id").to_string();
    let out = s.ok(&["train", "lenet", "--data", &digits(), "--iters", "6", "--batch-size", "16", "--seed", "3", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("train json");
    assert_eq!(v["parent"], parent_id.as_str());
    assert_eq!(v["iters"], 6);
    assert!(v["accuracy"].as_f64().is_some(), "{out}");
    let id = v["id"].as_str().expect("id");

    let desc: serde_json::Value = serde_json::from_str(&s.ok(&["desc", id, "--output", "json"])).expect("desc json");
    assert_eq!(desc["parents"][0], parent_id.as_str());
    assert_eq!(desc["name"], "lenet");
    let series: Vec<&str> = desc["series"].as_array().expect("series").iter().filter_map(|x| x["name"].as_str()).collect();
    assert!(series.contains(&"train/loss") && series.contains(&"test/accuracy"), "{series:?}");
    assert_eq!(desc["tensors"].as_array().expect("tensors").len(), 8);
    let hyper = desc["hyper"].as_array().expect("hyper");
    assert!(hyper.iter().any(|h| h["key"] == "max_iter" && h["num"] == 6.0), "{hyper:?}");
    assert!(desc["extra"].as_array().expect("extra").iter().any(|e| e["key"] == "accuracy"));

    let text = s.ok(&["eval", id, "--data", &digits(), "--limit", "50"]);
    assert!(text.contains("accuracy 0.") || text.contains("accuracy 1.0"), "{text}");
    assert!(text.contains("(50 examples"), "{text}");
    assert!(text.contains("recorded as lenet@"), "{text}");
    let list: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
    assert_eq!(list.as_array().expect("array").len(), 3, "untrained, trained, eval record");

    let j: serde_json::Value =
        serde_json::from_str(&s.ok(&["eval", id, "--data", &digits(), "--limit", "20", "--json", "--no-record", "--activations"])).expect("eval json");
    assert_eq!(j[0]["examples"], 20);
    assert!(j[0]["recorded"].is_null());
    assert!(j[0]["activations"].as_array().expect("activations").iter().any(|a| a["blob"] == "conv1"));
}

#[test]
fn snapshots_are_committed_as_a_chain() {
    let s = repo_with_lenet();
    let out = s.ok(&["train", "lenet", "--data", &digits(), "--iters", "4", "--batch-size", "8", "--snapshot", "2", "--commit-snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let snaps = v["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 1, "{out}");
    assert_eq!(v["parent"], snaps[0]["id"], "the result's parent is the last snapshot");
    let out = s.ok(&["train", "lenet", "--data", &digits(), "--iters", "2", "--batch-size", "8", "--snapshot", "1", "--snapshot-dir", "snaps"]);
    assert!(out.contains("snaps/lenet_iter_1.safetensors"), "{out}");
    let t = crate::read_tensors(&s.path().join("snaps/lenet_iter_1.safetensors"));
    assert_eq!(t["conv1.weight"].0, vec![20, 1, 5, 5]);
}

#[test]
fn unsupported_layer_and_bad_data_are_clear_errors() {
    let s = Scratch::new();
    s.ok(&["init"]);
    let text = std::fs::read_to_string(testdata("nets/lenet_train_test.prototxt")).expect("read");
    s.write("net.prototxt", text.replace("name: \"relu1\"\n  type: \"ReLU\"", "name: \"relu1\"\n  type: \"Swish\""));
    s.ok(&["add", "net.prototxt"]);
    s.ok(&["commit", "-m", "odd", "--name", "odd"]);
    let err = s.fails(&["train", "odd", "--data", &digits(), "--iters", "1"], 1);
    assert!(err.contains("'relu1'") && err.contains("Swish"), "{err}");

    let s = repo_with_lenet();
    s.write("bad/train-images-idx3-ubyte", [0u8, 0, 8, 3, 0, 0, 0, 9]);
    s.write("bad/train-labels-idx1-ubyte", [0u8, 0, 8, 1, 0, 0, 0, 9]);
    s.write("bad/t10k-images-idx3-ubyte", [0u8; 3]);
    s.write("bad/t10k-labels-idx1-ubyte", [0u8; 3]);
    let err = s.fails(&["train", "lenet", "--data", "bad", "--iters", "1"], 1);
    assert!(err.contains("train-images-idx3-ubyte") && err.contains("truncated"), "{err}");
    let err = s.fails(&["eval", "lenet"], 1);
    assert!(err.contains("--data"), "{err}");
    let err = s.fails(&["train", "lenet", "--data", &digits(), "--device", "tpu"], 1);
    assert!(err.contains("tpu"), "{err}");
}
