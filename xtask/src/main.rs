//! `cargo xtask …`: test data generation, the demo, benchmarks, layering checks.

mod bench;
mod bench_dql;
mod bench_train;
mod bench_hub;
mod demo;
mod testdata;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo                 build dlv and run the demo on bundled data (a scratch repository)
  gen-testdata         regenerate the deterministic weights under testdata/weights
  bench [commit|storage|dql|train|hub|all]
                       benchmarks: commit/checkout of 1 GiB vs cp; archival storage of
                       checkpoint series (ratios vs git-lfs/DVC, zstd, reference recipe)
  deps                 check that crates only depend downward (docs/ARCHITECTURE.md)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("gen-testdata") => testdata::generate(),
        Some("bench") => bench::run(&args[1..]),
        Some("deps") => deps(),
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
