//! Integration tests of dlv-graph: the test data nets, round trips, errors, shapes, properties.

mod mutations;
mod nets;
mod props;

use std::path::PathBuf;

use dlv_graph::Net;

/// The folder of test data nets, `testdata/nets` at the workspace root.
pub fn nets_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/nets")
}

/// Network definitions among the test data (solvers are not networks).
pub const NETS: &[&str] = &[
    "lenet.prototxt",
    "lenet_train_test.prototxt",
    "alexnet.prototxt",
    "legacy_v1.prototxt",
];

pub const SOLVERS: &[&str] = &["lenet_solver.prototxt", "alexnet_solver.prototxt"];

pub fn read(name: &str) -> String {
    let path = nets_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn load(name: &str) -> Net {
    Net::from_prototxt(&read(name), name).unwrap_or_else(|e| panic!("{e}"))
}
