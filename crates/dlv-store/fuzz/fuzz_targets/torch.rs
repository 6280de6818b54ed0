//! Fuzz target: arbitrary bytes as a .pt file must open and drain without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("input.pt");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut src) = dlv_store::formats::open_weights(&path) {
        for i in 0..src.tensors().len() {
            let _ = src.read_tensor(i, &mut std::io::sink());
        }
    }
});
