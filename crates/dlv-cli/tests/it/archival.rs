//! Archival storage through the CLI: a series of training snapshots stored as deltas, checked
//! out bit-identical, read at bf16 from the high planes, and repacked.

use crate::{read_tensors, safetensors_bytes, tensors, Scratch};

/// Snapshot `step` of a slowly drifting model: the LeNet tensors of seed 1 nudged a little per
/// step, so consecutive snapshots share sign, exponent and high mantissa bits.
fn snapshot(step: u32) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    tensors(1)
        .into_iter()
        .map(|(name, shape, data)| {
            let moved: Vec<u8> = data
                .chunks_exact(4)
                .enumerate()
                .flat_map(|(i, c)| {
                    let w = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    let drift = (step as f32) * 1e-5 * ((i as f32) * 0.37).sin();
                    (w + drift).to_le_bytes()
                })
                .collect();
            (name, shape, moved)
        })
        .collect()
}

fn objects_size(s: &Scratch) -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        let m = e.metadata().expect("metadata");
                        if m.is_dir() {
                            walk(&e.path())
                        } else {
                            m.len()
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&s.path().join(".dlv/objects"))
}

#[test]
fn snapshot_series_is_stored_smaller_and_checks_out_bit_identical() {
    let s = Scratch::new();
    s.ok(&["init"]);
    let mut raw_total = 0u64;
    let steps = [0u32, 100, 200, 300, 400, 500];
    for &step in &steps {
        let bytes = safetensors_bytes(&snapshot(step));
        raw_total += bytes.len() as u64;
        s.write("w.safetensors", &bytes);
        s.ok(&["add", "w.safetensors"]);
        s.ok(&["commit", "-m", &format!("step {step}"), "--name", "lenet"]);
    }
    let stored = objects_size(&s);
    assert!(stored < raw_total * 3 / 4, "stored {stored} of {raw_total}");

    for (k, &step) in steps.iter().enumerate() {
        let back = steps.len() - 1 - k;
        let rev = format!("lenet~{back}");
        let out = format!("out{step}");
        s.ok(&["checkout", &rev, "--to", &out]);
        let expect = safetensors_bytes(&snapshot(step));
        let got = std::fs::read(s.path().join(&out).join("w.safetensors")).expect("checked out");
        assert_eq!(got, expect, "snapshot {step}");
    }

    // bf16: truncation of every value, read from fewer bytes than a full checkout.
    let full: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "checkout", "lenet", "--to", "full", "--force"])).expect("json");
    let half: serde_json::Value =
        serde_json::from_str(&s.ok(&["--json", "checkout", "lenet", "--to", "bf16", "--precision", "bf16"])).expect("json");
    let (fr, hr) = (full["object_bytes_read"].as_u64(), half["object_bytes_read"].as_u64());
    assert!(fr.is_some() && hr.is_some() && hr <= fr, "bf16 read {hr:?} vs full {fr:?}");
    let got = read_tensors(&s.path().join("bf16/w.safetensors"));
    for (name, _, data) in snapshot(500) {
        let expect: Vec<u8> = data.chunks_exact(4).flat_map(|c| [c[2], c[3]]).collect();
        assert_eq!(got[&name].1, expect, "{name}");
    }

    // Repack and gc keep everything readable, bit-identical, and fsck clean.
    s.ok(&["gc", "--repack"]);
    s.ok(&["fsck"]);
    s.ok(&["checkout", "lenet~2", "--to", "after", "--force"]);
    let got = std::fs::read(s.path().join("after/w.safetensors")).expect("checked out");
    assert_eq!(got, safetensors_bytes(&snapshot(300)));

    // The archival level, applied to what is already stored: every object rewritten.
    let config = s.path().join(".dlv/config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}\n[storage]\ncompression = \"max\"\n")).expect("config written");
    let v: serde_json::Value = serde_json::from_str(&s.ok(&["--json", "gc", "--repack", "--recode"])).expect("json");
    assert_eq!(v["repack"]["rewritten"], v["repack"]["tensors"], "{v}");
    s.ok(&["fsck"]);
    for (k, &step) in steps.iter().enumerate() {
        let out = format!("max{step}");
        s.ok(&["checkout", &format!("lenet~{}", steps.len() - 1 - k), "--to", &out]);
        let got = std::fs::read(s.path().join(&out).join("w.safetensors")).expect("checked out");
        assert_eq!(got, safetensors_bytes(&snapshot(step)), "snapshot {step} at max");
    }
    // --recode only means something with --repack.
    s.fails(&["gc", "--recode"], 2);
}
