//! A commit killed at any moment leaves no visible partial version, and the repository stays
//! consistent and usable.

use std::time::Duration;

use crate::Scratch;

/// ~48 MiB of float tensors, so that a commit takes long enough to be interrupted. Round `k`
/// moves a quarter of the weights a little (a training snapshot), so commits code deltas and
/// re-code their parent (reverse deltas) while they may be killed.
fn snapshot(k: u32) -> Vec<u8> {
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = (0..12)
        .map(|i| {
            let mut x = 0x1234_5678u32 ^ (i as u32);
            let data: Vec<u8> = (0..(1u32 << 20))
                .flat_map(|j| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let moved = if j % 4 == (k % 4) { k as f32 * 1e-4 } else { 0.0 };
                    (x as f32 / u32::MAX as f32 + moved).to_le_bytes()
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
    let mut committed: Vec<(String, Vec<u8>)> = Vec::new();
    // Kill at a random moment, many times: whatever the moment, the invariants below hold. Round
    // k draws its delay from the k-th of these spans, so that every run kills early and late in
    // a commit (from opening the store to writing the version); the seed is printed, and
    // DLV_CRASH_SEED replays it. A commit that is not killed in time becomes the parent of the
    // next round.
    let edges = [0u64, 15, 40, 80, 150, 250, 400, 700, 1000, 1500, 2000];
    let seed = std::env::var("DLV_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("crash test seed {seed} (DLV_CRASH_SEED={seed} replays these kill moments)");
    let mut x = seed | 1;
    let delays: Vec<u64> = edges
        .windows(2)
        .map(|span| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            span[0] + x % (span[1] - span[0])
        })
        .collect();
    for (k, &delay_ms) in delays.iter().enumerate() {
        let bytes = snapshot(k as u32);
        s.write("big.safetensors", &bytes);
        s.ok(&["add", "big.safetensors"]);
        let msg = format!("round {k}");
        let mut child = s.dlv_std().args(["commit", "-m", &msg, "--name", "big"]).spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let status = child.wait().expect("wait");

        let list: serde_json::Value = serde_json::from_str(&s.ok(&["list", "--json"])).expect("json");
        let listed = list.as_array().cloned().unwrap_or_default();
        let this_round = listed.iter().find(|v| v["message"] == msg.as_str()).map(|v| v["id"].as_str().unwrap_or("").to_string());
        if status.success() {
            assert!(this_round.is_some(), "a finished commit is listed");
        }
        if let Some(id) = this_round {
            committed.push((id, bytes));
        }
        // No partial version: exactly the commits that finished are listed.
        assert_eq!(listed.len(), committed.len(), "after kill at {delay_ms} ms (seed {seed})");
        // Every listed version is complete: fsck verifies all its objects against their ids.
        let fsck: serde_json::Value = serde_json::from_str(&s.ok(&["fsck", "--json"])).expect("json");
        assert_eq!(fsck["problems"].as_array().map(Vec::len), Some(0), "after kill at {delay_ms} ms (seed {seed}): {fsck}");
        // The lock died with the process: a new writer gets in.
        s.ok(&["gc"]);
    }
    let bytes = snapshot(99);
    s.write("big.safetensors", &bytes);
    s.ok(&["add", "big.safetensors"]);
    let out = s.ok(&["commit", "-m", "finally", "--name", "big", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    committed.push((v["id"].as_str().unwrap_or("").to_string(), bytes));
    assert!(committed.len() >= 2, "some rounds should finish: {}", committed.len());
    // Every version ever committed checks out bit-exact.
    for (i, (id, bytes)) in committed.iter().enumerate() {
        let to = format!("out{i}");
        s.ok(&["checkout", id, "--to", &to]);
        assert!(std::fs::read(s.path().join(&to).join("big.safetensors")).expect("out") == *bytes, "version {id}");
    }
}
