//! A commit killed at any moment leaves no visible partial version, and the repository stays
//! consistent and usable.

use std::time::Duration;

use crate::Scratch;

/// ~48 MiB of float tensors, so that a commit takes long enough to be interrupted.
fn big_safetensors() -> Vec<u8> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..12)
        .map(|i| {
            let mut x = 0x1234_5678u32 ^ (i as u32);
            let data: Vec<u8> = (0..(1 << 20))
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x as f32 / u32::MAX as f32).to_le_bytes()
                })
                .collect();
            (format!("layer{i}.weight"), vec![1024, 1024], data)
        })
        .collect();
    crate::safetensors_bytes(&tensors)
}

#[test]
fn killed_commit_leaves_no_partial_version() {
    let s = Scratch::new();
    s.ok(&["init"]);
    s.write("big.safetensors", big_safetensors());
    // Kill after various delays: whatever the moment, the invariants below must hold.
    for delay_ms in [0u64, 20, 60, 150, 400] {
        s.ok(&["add", "big.safetensors"]);
        let mut child = s.dlv_std().args(["commit", "-m", "big", "--name", "big"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().expect("wait");

        let list: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
        let n = list.as_array().map(Vec::len).unwrap_or(0);
        if status.success() {
            assert!(n >= 1, "a finished commit is listed");
        }
        // Every listed version is complete: fsck verifies all its objects.
        let fsck: serde_json::Value = serde_json::from_str(&s.ok(&["fsck", "--json"])).expect("json");
        assert_eq!(fsck["problems"].as_array().map(Vec::len), Some(0), "after kill at {delay_ms} ms: {fsck}");
        // The lock died with the process: a new writer gets in.
        s.ok(&["gc"]);
    }
    s.ok(&["add", "big.safetensors"]);
    s.ok(&["commit", "-m", "finally", "--name", "big"]);
    s.ok(&["checkout", "big", "--to", "out"]);
    assert!(std::fs::read(s.path().join("out/big.safetensors")).expect("out") == std::fs::read(s.path().join("big.safetensors")).expect("in"));
}
