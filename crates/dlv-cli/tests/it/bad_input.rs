//! Bad input: clear errors naming the file and position, non-zero exit, nothing lost.

use crate::{safetensors_bytes, tensors, Scratch};

#[test]
fn outside_a_repository_hints_at_init() {
    let s = Scratch::new();
    let err = s.fails(&["list"], 1);
    assert!(err.contains("not a dlv repository"), "{err}");
    assert!(err.contains("hint: run `dlv init`"), "{err}");
    s.ok(&["init"]);
    let err = s.fails(&["init"], 1);
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn commit_with_nothing_staged() {
    let s = Scratch::new();
    s.ok(&["init"]);
    let err = s.fails(&["commit", "-m", "x", "--name", "n"], 1);
    assert!(err.contains("nothing staged") && err.contains("dlv add"), "{err}");
}

#[test]
fn malformed_prototxt_names_line_and_column() {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.write("bad.prototxt", "name: \"x\"\nlayer {\n  name: \"conv1\"\n  type: \"Convolution\"\n  convolution_param { num_output: }\n}\n");
    let err = s.fails(&["add", "bad.prototxt"], 1);
    assert!(err.contains("bad.prototxt:5:"), "{err}");
    assert!(s.ok(&["status"]).contains("nothing staged"));
}

#[test]
fn truncated_and_lying_safetensors_are_refused() {
    let s = Scratch::new();
    s.ok(&["init"]);
    let good = safetensors_bytes(&tensors(1));
    s.write("cut.safetensors", &good[..good.len() - 100]);
    let err = s.fails(&["add", "cut.safetensors"], 1);
    assert!(err.contains("cut.safetensors"), "{err}");

    s.write("tiny.safetensors", &good[..5]);
    let err = s.fails(&["add", "tiny.safetensors"], 1);
    assert!(err.contains("tiny.safetensors"), "{err}");

    // Header length claims more than the file holds.
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    s.write("lying.safetensors", &lying);
    let err = s.fails(&["add", "lying.safetensors"], 1);
    assert!(err.contains("lying.safetensors"), "{err}");

    // Offsets in the header point past the data.
    let hlen = u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8(good[8..8 + hlen].to_vec()).expect("utf8");
    let bad_header = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[99999999,", 1);
    assert_ne!(bad_header, header, "fixture header format changed: {header}");
    let mut bytes = (bad_header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(bad_header.as_bytes());
    bytes.extend_from_slice(&good[8 + hlen..]);
    s.write("offsets.safetensors", &bytes);
    let err = s.fails(&["add", "offsets.safetensors"], 1);
    assert!(err.contains("offsets.safetensors"), "{err}");
    assert!(s.ok(&["status"]).contains("nothing staged"));
}

fn committed() -> Scratch {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.copy_testdata("nets/lenet.prototxt", "lenet.prototxt");
    s.write("lenet.safetensors", safetensors_bytes(&tensors(1)));
    s.ok(&["add", "lenet.prototxt", "lenet.safetensors"]);
    s.ok(&["commit", "-m", "first", "--name", "lenet"]);
    s
}

#[test]
fn corrupted_object_is_named_by_fsck_and_checkout() {
    let s = committed();
    let desc: serde_json::Value = serde_json::from_str(&s.ok(&["desc", "lenet", "--json"])).expect("json");
    let obj = desc["tensors"][4]["object"].as_str().expect("object id").to_string();
    let path = s.path().join(".dlv/objects").join(&obj[..2]).join(&obj[2..]);
    let mut bytes = std::fs::read(&path).expect("object file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).expect("corrupt it");

    let out = s.dlv().arg("fsck").output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&obj) && stdout.contains("corrupt"), "{stdout}");
    assert!(stdout.contains("lenet@"), "{stdout}");

    let err = s.fails(&["checkout", "lenet", "--to", "out"], 3);
    assert!(err.contains(&obj), "{err}");
    assert!(!s.path().join("out/lenet.safetensors").exists(), "no partial weights file left behind");

    std::fs::remove_file(&path).expect("remove");
    let out = s.dlv().arg("fsck").output().expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
}

#[test]
fn a_second_writer_gets_a_clear_lock_error() {
    let s = committed();
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path().join(".dlv/lock"))
        .expect("lock file");
    lock.try_lock().expect("take the lock as another writer would");
    std::fs::write(s.path().join(".dlv/lock"), "pid 4242 (`dlv commit`) since now").expect("holder");
    s.write("x.txt", "x");
    let err = s.fails(&["add", "x.txt"], 4);
    assert!(err.contains("locked") && err.contains("pid 4242"), "{err}");
    drop(lock);
    s.ok(&["add", "x.txt"]);
}

#[test]
fn bad_arguments_are_user_errors() {
    let s = committed();
    let err = s.fails(&["checkout", "lenet", "--precision", "int3"], 1);
    assert!(err.contains("precision"), "{err}");
    let err = s.fails(&["commit", "-m", "x", "--name", "n", "--date", "yesterday"], 1);
    assert!(err.contains("date"), "{err}");
    let err = s.fails(&["desc", "lenet", "--output", "yaml"], 1);
    assert!(err.contains("yaml"), "{err}");
    s.fails(&["add", "does-not-exist.bin"], 1);
}
