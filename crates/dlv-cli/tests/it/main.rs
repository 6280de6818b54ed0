//! Integration tests: the `dlv` binary run in temporary folders.

mod archival;
mod bad_input;
mod crash;
mod query;
mod explore;
mod hub;
mod version_control;
mod train;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// A scratch working folder with a repository helper.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn dlv(&self) -> Command {
        let mut c = Command::cargo_bin("dlv").expect("dlv binary");
        c.current_dir(self.path()).env("DLV_AUTHOR", "tester").env_remove("RUST_LOG");
        c
    }

    /// The same command as a std process, for tests that need to spawn and kill it.
    pub fn dlv_std(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("dlv"));
        c.current_dir(self.path())
            .env("DLV_AUTHOR", "tester")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    }

    /// Runs dlv, asserting success, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.dlv().args(args).output().expect("run dlv");
        assert!(
            out.status.success(),
            "dlv {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs dlv, asserting failure with `code`, returning stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.dlv().args(args).output().expect("run dlv");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(code), "dlv {args:?}: stderr {stderr}");
        assert!(!stderr.contains("panicked"), "dlv {args:?} panicked: {stderr}");
        assert!(stderr.starts_with("error: "), "dlv {args:?}: stderr {stderr}");
        stderr
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, bytes).expect("write");
        p
    }

    pub fn copy_testdata(&self, rel: &str, name: &str) -> PathBuf {
        let bytes = std::fs::read(testdata(rel)).expect("testdata file");
        self.write(name, bytes)
    }
}

pub fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel)
}

/// LeNet's learnable tensors (names and shapes as in testdata/nets/lenet*.prototxt).
pub const LENET: &[(&str, &[usize])] = &[
    ("conv1.weight", &[20, 1, 5, 5]),
    ("conv1.bias", &[20]),
    ("conv2.weight", &[50, 20, 5, 5]),
    ("conv2.bias", &[50]),
    ("ip1.weight", &[500, 800]),
    ("ip1.bias", &[500]),
    ("ip2.weight", &[10, 500]),
    ("ip2.bias", &[10]),
];

/// Deterministic f32 tensors; `seed` changes every value.
pub fn tensors(seed: u32) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    LENET
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    ((state as f32 / u32::MAX as f32 - 0.5) * 0.1).to_le_bytes()
                })
                .collect();
            (name.to_string(), shape.to_vec(), data)
        })
        .collect()
}

pub fn safetensors_bytes(ts: &[(String, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = ts
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).expect("view"))
        })
        .collect();
    safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize")
}

/// Name -> raw bytes of every tensor in a safetensors file.
pub fn read_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).expect("read safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}
