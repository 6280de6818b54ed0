//! init, add, commit with lineage, list, desc, checkout bit for bit, fsck, gc.

use crate::{read_tensors, safetensors_bytes, tensors, Scratch};

fn repo_with_two_versions() -> Scratch {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.copy_testdata("nets/lenet.prototxt", "lenet.prototxt");
    s.copy_testdata("nets/lenet_solver.prototxt", "solver.prototxt");
    s.write("lenet.safetensors", safetensors_bytes(&tensors(1)));
    s.write("notes/readme.md", "trained on MNIST\n");
    let added = s.ok(&["add", "lenet.prototxt", "solver.prototxt", "lenet.safetensors", "notes/readme.md"]);
    assert!(added.contains("network"), "{added}");
    assert!(added.contains("weights"), "{added}");
    assert!(added.contains("solver"), "{added}");
    let status = s.ok(&["status"]);
    assert!(status.contains("lenet.safetensors"), "{status}");
    s.ok(&["commit", "-m", "first", "--name", "lenet", "--date", "2015-11-20"]);
    assert!(s.ok(&["status"]).contains("nothing staged"));
    s.write("lenet.safetensors", safetensors_bytes(&tensors(2)));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors"]);
    s.ok(&["commit", "-m", "fine-tuned", "--name", "lenet", "--date", "2015-11-23"]);
    s
}

#[test]
fn two_versions_with_lineage_list_and_desc() {
    let s = repo_with_two_versions();
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
    let arr = json.as_array().expect("array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["name"], "lenet");
    assert_eq!(arr[1]["parents"][0], arr[0]["id"], "second version's parent is the first");
    assert_eq!(arr[0]["parameters"], 431_080);

    let text = s.ok(&["list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("lenet@") && lines[0].contains("first"), "{text}");
    assert!(lines[1].starts_with("└─ lenet@") && lines[1].contains("fine-tuned"), "{text}");

    assert_eq!(s.ok(&["list", "--commit_msg", "fine", "--json"]).matches("\"id\"").count(), 1);
    assert_eq!(s.ok(&["list", "--last", "1", "--json"]).matches("\"id\"").count(), 1);
    assert_eq!(s.ok(&["list", "--model_name", "vgg*", "--json"]).trim(), "[]");

    let desc: serde_json::Value = serde_json::from_str(&s.ok(&["desc", "lenet~1", "--output", "json"])).expect("json");
    assert_eq!(desc["message"], "first");
    assert_eq!(desc["tensors"][0]["layer"], "conv1");
    let base_lr = desc["hyper"].as_array().expect("hyper").iter().find(|h| h["key"] == "base_lr").expect("base_lr");
    assert_eq!(base_lr["num"], 0.01);
    let text = s.ok(&["desc", "lenet"]);
    assert!(text.contains("fine-tuned") && text.contains("conv1.weight"), "{text}");
    assert!(text.contains("parent   lenet@"), "{text}");
}

#[test]
fn checkout_is_bit_identical() {
    let s = repo_with_two_versions();
    s.ok(&["checkout", "lenet~1", "--to", "v1"]);
    s.ok(&["checkout", "lenet", "--to", "v2"]);
    let want1 = tensors(1);
    let got1 = read_tensors(&s.path().join("v1/lenet.safetensors"));
    let got2 = read_tensors(&s.path().join("v2/lenet.safetensors"));
    for (name, shape, data) in &want1 {
        assert_eq!(&got1[name].0, shape);
        assert!(got1[name].1 == *data, "{name} differs");
    }
    for (name, _, data) in &tensors(2) {
        assert!(got2[name].1 == *data, "{name} differs in v2");
    }
    let proto = std::fs::read(s.path().join("lenet.prototxt")).expect("orig");
    assert_eq!(std::fs::read(s.path().join("v1/lenet.prototxt")).expect("checked out"), proto);
    assert_eq!(std::fs::read(s.path().join("v1/notes/readme.md")).expect("file"), b"trained on MNIST\n");
    assert_eq!(
        std::fs::read(s.path().join("v1/solver.prototxt")).expect("solver"),
        std::fs::read(s.path().join("solver.prototxt")).expect("orig solver")
    );
    // A second checkout into the same folder refuses to overwrite, --force replaces.
    s.fails(&["checkout", "lenet", "--to", "v1"], 1);
    s.ok(&["checkout", "lenet", "--to", "v1", "--force"]);
    assert!(read_tensors(&s.path().join("v1/lenet.safetensors"))["ip1.weight"].1 == tensors(2)[4].2);
}

#[test]
fn checkout_bf16_keeps_the_high_bytes() {
    let s = repo_with_two_versions();
    s.ok(&["checkout", "lenet", "--to", "half", "--precision", "bf16"]);
    let bytes = std::fs::read(s.path().join("half/lenet.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid");
    let t = st.tensor("conv1.weight").expect("tensor");
    assert_eq!(t.dtype(), safetensors::Dtype::BF16);
    let full = &tensors(2)[0].2;
    for (i, pair) in t.data().chunks(2).enumerate().take(100) {
        assert_eq!(pair, &full[i * 4 + 2..i * 4 + 4]);
    }
}

#[test]
fn refs_resolve_by_name_ancestor_and_prefix() {
    let s = repo_with_two_versions();
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
    let first = json[0]["id"].as_str().expect("id").to_string();
    let d: serde_json::Value = serde_json::from_str(&s.ok(&["desc", &first[..8], "--json"])).expect("json");
    assert_eq!(d["message"], "first");
    let d: serde_json::Value = serde_json::from_str(&s.ok(&["desc", &format!("lenet@{}", &first[..6]), "--json"])).expect("json");
    assert_eq!(d["id"], first.as_str());
    let err = s.fails(&["desc", "lenet~5"], 1);
    assert!(err.contains("no parent"), "{err}");
    let err = s.fails(&["desc", "resnet"], 1);
    assert!(err.contains("unknown revision 'resnet'") && err.contains("hint: "), "{err}");
}

#[test]
fn explicit_parent_and_new_name() {
    let s = repo_with_two_versions();
    s.write("lenet.safetensors", safetensors_bytes(&tensors(3)));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors"]);
    s.ok(&["commit", "-m", "branch", "--name", "lenet-small", "--parent", "lenet~1"]);
    let json: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
    assert_eq!(json[2]["parents"][0], json[0]["id"]);
    let tree = s.ok(&["list"]);
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[1].starts_with("├─ ") || lines[1].starts_with("└─ "), "{tree}");
    assert_eq!(lines.len(), 3, "{tree}");
}

#[test]
fn fsck_and_gc_keep_everything_referenced() {
    let s = repo_with_two_versions();
    let fsck = s.ok(&["fsck"]);
    assert!(fsck.contains("checked 2 version(s)") && fsck.contains("0 problem(s)"), "{fsck}");
    // An orphan object, as an interrupted commit leaves one, goes; the versions' objects stay.
    let orphan = s.path().join(".dlv/objects/ff").join("f".repeat(62));
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"DLVO orphan").expect("orphan");
    let dry: serde_json::Value = serde_json::from_str(&s.ok(&["gc", "--dry-run", "--json"])).expect("json");
    assert_eq!(dry["removed"], 1);
    assert!(orphan.exists(), "dry run removes nothing");
    let report: serde_json::Value = serde_json::from_str(&s.ok(&["gc", "--json"])).expect("json");
    assert_eq!(report["removed"], 1, "{report}");
    assert!(!orphan.exists());
    let kept = report["kept"].as_u64().expect("kept");
    assert!(kept >= 8 + 8 + 3, "objects of both versions kept: {report}");
    s.ok(&["checkout", "lenet~1", "--to", "after-gc"]);
    assert!(read_tensors(&s.path().join("after-gc/lenet.safetensors"))["conv2.weight"].1 == tensors(1)[2].2);
    let fsck = s.ok(&["fsck", "--json"]);
    let fsck: serde_json::Value = serde_json::from_str(&fsck).expect("json");
    assert_eq!(fsck["problems"].as_array().map(Vec::len), Some(0));
}

#[test]
fn identical_tensors_are_stored_once() {
    let s = repo_with_two_versions();
    // Re-committing the same weights under another name writes no new tensor object.
    s.ok(&["add", "lenet.safetensors"]);
    let out: serde_json::Value =
        serde_json::from_str(&s.ok(&["commit", "-m", "copy", "--name", "lenet-copy", "--json"])).expect("json");
    assert_eq!(out["objects_written"], 0, "{out}");
}
