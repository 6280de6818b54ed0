//! `cargo xtask bench train`: training throughput of `dlv train` (candle, CPU) against PyTorch on
//! the same machine, the same networks and shapes, in the same run.
//!
//! Workloads: LeNet (1x28x28) at batch 64 and 256, and the CIFAR-size AlexNet-style net of
//! testdata/nets/alexnet.prototxt (3x32x32) at batch 64 and 256, SGD with momentum, on synthetic
//! data written as MNIST IDX files and CIFAR-10 batches. Our figure is the steady-state
//! images/s that `dlv train --json` reports (training steps after the first three, data feeding
//! included, not loading or the final test; the every-step rate is printed beside it);
//! PyTorch's comes from benches/train_pytorch.py after three warm-up steps, and is skipped with
//! a note where `import torch` fails. `DLV_BENCH_QUICK=1` runs fewer iterations; `DLV_BENCH_DEVICE=cuda`
//! runs both on the GPU (with a dlv built with `--features cuda`); `DLV_BIN` names a dlv binary to
//! use instead of building one.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::testdata::Rng;

fn idx(path: &Path, dims: &[u32], data: &[u8]) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&[0, 0, 8, dims.len() as u8])?;
    for d in dims {
        f.write_all(&d.to_be_bytes())?;
    }
    f.write_all(data)?;
    Ok(())
}

fn bytes(n: usize, rng: &mut Rng) -> Vec<u8> {
    (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()
}

fn labels(n: usize, rng: &mut Rng) -> Vec<u8> {
    (0..n).map(|_| (rng.next_u64() % 10) as u8).collect()
}

/// Synthetic MNIST-style and CIFAR-10 folders.
fn synthetic(dir: &Path) -> Result<()> {
    let mut rng = Rng::new(5);
    let m = dir.join("mnist");
    std::fs::create_dir_all(&m)?;
    let (n, t) = (4096usize, 256usize);
    idx(&m.join("train-images-idx3-ubyte"), &[n as u32, 28, 28], &bytes(n * 784, &mut rng))?;
    idx(&m.join("train-labels-idx1-ubyte"), &[n as u32], &labels(n, &mut rng))?;
    idx(&m.join("t10k-images-idx3-ubyte"), &[t as u32, 28, 28], &bytes(t * 784, &mut rng))?;
    idx(&m.join("t10k-labels-idx1-ubyte"), &[t as u32], &labels(t, &mut rng))?;
    let c = dir.join("cifar");
    std::fs::create_dir_all(&c)?;
    for (name, count) in [("data_batch_1.bin", 2048usize), ("test_batch.bin", 200)] {
        let mut rec = Vec::with_capacity(count * 3073);
        for _ in 0..count {
            rec.push((rng.next_u64() % 10) as u8);
            rec.extend(bytes(3072, &mut rng));
        }
        std::fs::write(c.join(name), rec)?;
    }
    Ok(())
}

fn dlv(bin: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin).current_dir(dir).args(args).output().with_context(|| format!("running dlv {args:?}"))?;
    if !out.status.success() {
        bail!("dlv {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn torch_available() -> bool {
    Command::new("python3").args(["-c", "import torch"]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn torch_ips(model: &str, batch: usize, iters: usize, device: &str) -> Result<f64> {
    let script = crate::root().join("benches/train_pytorch.py");
    let out = Command::new("python3").arg(&script).args([model, &batch.to_string(), &iters.to_string(), device]).output()?;
    if !out.status.success() {
        bail!("PyTorch twin failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["images_per_s"].as_f64().context("no images_per_s from the PyTorch twin")
}

pub fn run(_args: &[String]) -> Result<()> {
    // DLV_BIN: a dlv built elsewhere (a `--features cuda` build on a GPU machine).
    let bin = match std::env::var_os("DLV_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => crate::build_dlv(true)?,
    };
    let root = crate::root();
    let quick = std::env::var("DLV_BENCH_QUICK").is_ok();
    let device = std::env::var("DLV_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let work = std::env::temp_dir().join(format!("dlv-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    synthetic(&work)?;
    for f in ["lenet_train_test.prototxt", "alexnet.prototxt"] {
        std::fs::copy(root.join("testdata/nets").join(f), work.join(f))?;
    }
    dlv(&bin, &work, &["init"])?;
    dlv(&bin, &work, &["add", "lenet_train_test.prototxt"])?;
    dlv(&bin, &work, &["commit", "-m", "bench", "--name", "lenet"])?;
    dlv(&bin, &work, &["add", "alexnet.prototxt"])?;
    dlv(&bin, &work, &["commit", "-m", "bench", "--name", "alexnet"])?;
    let torch = torch_available();
    let scale = |n: usize| if quick { (n / 4).max(2) } else { n };
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("training throughput, {device}, {cpus} CPU threads, synthetic data, SGD momentum 0.9 (images/s, higher is better)");
    println!("{:<28} {:>12} {:>12} {:>8} {:>12}", "workload", "dlv (candle)", "PyTorch", "ratio", "dlv, all");
    println!("(dlv and PyTorch: steps after three warm-up steps; dlv, all: every step, warm-up included)");
    let cases: [(&str, &str, &str, usize, usize); 4] = [
        ("LeNet 1x28x28, batch 64", "lenet", "mnist", 64, scale(150)),
        ("LeNet 1x28x28, batch 256", "lenet", "mnist", 256, scale(40)),
        ("AlexNet-CIFAR 3x32x32, b64", "alexnet", "cifar", 64, scale(12)),
        ("AlexNet-CIFAR 3x32x32, b256", "alexnet", "cifar", 256, scale(6)),
    ];
    // The machines are shared: each side runs `rounds` times, alternating, and keeps its best.
    let rounds: usize = std::env::var("DLV_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2).max(1);
    println!("(best of {rounds} alternating runs of each side; DLV_BENCH_ROUNDS changes it)");
    for (label, model, data, batch, iters) in cases {
        let (mut ours, mut all, mut theirs) = (0f64, 0f64, None::<f64>);
        for _ in 0..rounds {
            let out = dlv(
                &bin,
                &work,
                &[
                    "train", model, "--data", data, "--iters", &iters.to_string(), "--batch-size", &batch.to_string(), "--set",
                    "base_lr=0.001", "--device", &device, "--json", "-q",
                ],
            )?;
            let v: serde_json::Value = serde_json::from_str(out.trim()).with_context(|| format!("dlv train output: {out}"))?;
            let ips = v["images_per_s"].as_f64().context("no images_per_s")?;
            ours = ours.max(ips);
            all = all.max(v["images_per_s_all"].as_f64().unwrap_or(ips));
            if torch {
                let t = torch_ips(model, batch, iters, &device)?;
                theirs = Some(theirs.map_or(t, |b: f64| b.max(t)));
            }
        }
        match theirs {
            Some(t) => println!("{label:<28} {ours:>12.0} {t:>12.0} {:>7.2}x {all:>12.0}", ours / t),
            None => println!("{label:<28} {ours:>12.0} {:>12} {:>8} {all:>12.0}", "n/a", "-"),
        }
    }
    if !torch {
        println!("note: PyTorch is not installed here (`import torch` fails); run benches/train_pytorch.py where it is for the baseline");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
