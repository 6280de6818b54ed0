//! `cargo xtask …`: test data generation, the demo, benchmarks, layering checks.

mod bench;
mod bench_dql;
mod bench_train;
mod bench_hub;
mod demo;
mod testdata;

use anyhow::{bail, Result};

// Tensor coding allocates chunk-sized buffers over and over; the system allocator returns them
// to the kernel each time and page-faults them back (a fifth of the codec's time, measured).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo                 build dlv and run the demo on bundled data (a scratch repository)
  gen-testdata         regenerate the deterministic weights under testdata/weights
  bench [commit|storage|dql|train|hub|all]
                       benchmarks: commit/checkout of 1 GiB vs cp; archival storage of
                       checkpoint series (ratios vs git-lfs/DVC, zstd, reference recipe)
  fuzz [SECONDS]       fuzz smoke run of every parser (DQL, prototxt, weights readers): cargo fuzz
                       for SECONDS each (default 30) when a nightly toolchain and cargo-fuzz are
                       installed; otherwise the deterministic no-panic corpora at 20x scale
  deps                 check that crates only depend downward (docs/ARCHITECTURE.md)";

/// mimalloc's `purge_delay` option (its position in `mi_option_t`, mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in this process, as `dlv` does (see `keep_freed_memory` in dlv-cli's
/// main.rs), so the bench's in-memory codec figures match what the binary does.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: stores an integer option; mimalloc is the global allocator and initialised.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> Result<()> {
    keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("gen-testdata") => testdata::generate(),
        Some("bench") => bench::run(&args[1..]),
        Some("deps") => deps(),
        Some("fuzz") => fuzz(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown xtask command '{other}'\n\n{USAGE}"),
    }
}

/// Workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(|p| p.to_path_buf()).unwrap_or(here)
}

/// Builds the dlv binary (release) and returns its path.
pub fn build_dlv(release: bool) -> Result<std::path::PathBuf> {
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).args(["build", "--quiet", "-p", "dlv-cli", "--bin", "dlv"]);
    if release {
        cmd.arg("--release");
    }
    if !cmd.status()?.success() {
        bail!("building dlv failed");
    }
    let dir = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| root().join("target"));
    Ok(dir.join(if release { "release" } else { "debug" }).join("dlv"))
}

/// Allowed workspace edges: each crate may depend only on crates below it.
const ALLOWED: &[(&str, &[&str])] = &[
    ("dlv-graph", &[]),
    ("dql-parse", &[]),
    ("dlv-store", &["dlv-graph"]),
    ("dql-exec", &["dql-parse", "dlv-store", "dlv-graph"]),
    ("trainer-candle", &["dlv-store", "dlv-graph", "dql-exec"]),
    ("hub-server", &["dql-exec", "dlv-store", "dlv-graph", "dql-parse"]),
    ("dlv-cli", &["dql-exec", "trainer-candle", "dlv-store", "dlv-graph", "dql-parse", "hub-server"]),
];

fn deps() -> Result<()> {
    let out = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    if !out.status.success() {
        bail!("cargo metadata failed");
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: Vec<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    let mut bad = Vec::new();
    for pkg in meta["packages"].as_array().into_iter().flatten() {
        let Some(name) = pkg["name"].as_str() else { continue };
        let Some((_, allowed)) = ALLOWED.iter().find(|(n, _)| *n == name) else { continue };
        for dep in pkg["dependencies"].as_array().into_iter().flatten() {
            let Some(d) = dep["name"].as_str() else { continue };
            if dep["kind"].is_null() && names.contains(&d) && !allowed.contains(&d) {
                bad.push(format!("{name} -> {d}"));
            }
        }
    }
    if bad.is_empty() {
        println!("layering ok: every workspace edge points down");
        Ok(())
    } else {
        bail!("edges not allowed by docs/ARCHITECTURE.md: {}", bad.join(", "))
    }
}

/// Fuzz targets: (fuzz dir relative to the root, target names).
const FUZZ: &[(&str, &[&str])] = &[
    ("crates/dql-parse/fuzz", &["parse"]),
    ("crates/dlv-graph/fuzz", &["prototxt"]),
    ("crates/dlv-store/fuzz", &["safetensors", "caffemodel", "torch", "npz"]),
];

fn fuzz(args: &[String]) -> Result<()> {
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(30);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let have_fuzz = std::process::Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if have_fuzz {
        for (dir, targets) in FUZZ {
            for t in *targets {
                println!("fuzzing {dir} {t} for {secs} s");
                let status = std::process::Command::new("cargo")
                    .current_dir(root().join(dir))
                    .args(["+nightly", "fuzz", "run", t, "--", &format!("-max_total_time={secs}")])
                    .status()?;
                if !status.success() {
                    bail!("fuzz target {t} in {dir} found a crash (see its artifacts/ folder)");
                }
            }
        }
        return Ok(());
    }
    println!("note: no nightly toolchain with cargo-fuzz here; running the deterministic no-panic corpora at 20x scale instead");
    let status = std::process::Command::new(&cargo)
        .current_dir(root())
        .env("DQL_NO_PANIC_SCALE", "20")
        .args(["test", "--quiet", "-p", "dql-parse", "--test", "it", "no_panic"])
        .status()?;
    if !status.success() {
        bail!("dql-parse no-panic corpus failed");
    }
    for (pkg, test, filter) in [("dlv-graph", "it", "never_panic"), ("dlv-store", "formats", "never_panic")] {
        let status = std::process::Command::new(&cargo)
            .current_dir(root())
            .args(["test", "--quiet", "-p", pkg, "--test", test, filter])
            .status()?;
        if !status.success() {
            bail!("{pkg} no-panic tests failed");
        }
    }
    Ok(())
}
