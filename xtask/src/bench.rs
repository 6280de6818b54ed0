//! Benchmarks. Each figure is printed beside a baseline measured in the same run, with the ratio.
//!
//! `commit`: commit and checkout of a generated safetensors file (1 GiB by default,
//! `DLV_BENCH_MB` to change) against `cp` of the same file; wall time, throughput, peak RSS.
//! `storage`: archival storage of checkpoint series from a real SGD trajectory (see
//! [`storage`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};


mod storage;

pub fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None | Some("commit") => commit_bench(),
        Some("storage") => storage::run(),
        Some("dql") => crate::bench_dql::run(&args[1..]),
        Some("train") => crate::bench_train::run(&args[1..]),
        Some("hub") => crate::bench_hub::run(&args[1..]),
        Some("all") => {
            commit_bench()?;
            storage::run()
        }
        Some(other) => bail!("unknown benchmark '{other}' (known: commit, storage, dql, train, hub, all)"),
    }
}

/// Wall time and peak RSS of one child process.
pub(crate) struct Measured {
    pub(crate) secs: f64,
    pub(crate) max_rss_kib: i64,
}

#[allow(unsafe_code)]
pub(crate) fn measure(cmd: &mut Command) -> Result<Measured> {
    let start = Instant::now();
    let child = cmd.spawn().context("spawning benchmark command")?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = start.elapsed().as_secs_f64();
    if r != pid {
        bail!("wait4 failed");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("benchmark command failed: {cmd:?}");
    }
    std::mem::forget(child);
    Ok(Measured { secs, max_rss_kib: usage.ru_maxrss })
}

/// Writes a safetensors file of `mb` MiB in 16 MiB F32 tensors, values like trained weights
/// (normal, std 0.02), streamed so the generator itself stays small.
fn generate_big(path: &Path, mb: usize) -> Result<()> {
    crate::bench_hub::generate(path, mb, &|_, _| false).map(|_| ())
}

fn row(label: &str, m: &Measured, bytes: u64, base: &Measured) {
    let mbps = bytes as f64 / (1 << 20) as f64 / m.secs;
    println!(
        "{label:<28} {:>8.2} s {:>9.1} MiB/s {:>9.1} MiB RSS   time ratio vs cp {:>6.2}x   RSS ratio {:>6.2}x",
        m.secs,
        mbps,
        m.max_rss_kib as f64 / 1024.0,
        m.secs / base.secs,
        m.max_rss_kib as f64 / base.max_rss_kib.max(1) as f64
    );
}

fn commit_bench() -> Result<()> {
    let mb: usize = std::env::var("DLV_BENCH_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dlv = crate::build_dlv(true)?;
    let work: PathBuf = std::env::var("DLV_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::root().join("target/bench-commit"));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let big = work.join("big.safetensors");
    println!("generating {mb} MiB safetensors in {} ...", work.display());
    generate_big(&big, mb)?;
    let bytes = std::fs::metadata(&big)?.len();

    let cp = measure(Command::new("cp").arg(&big).arg(work.join("copy.safetensors")))?;
    let run = |args: &[&str]| -> Result<Measured> { measure(Command::new(&dlv).current_dir(&work).args(args).arg("-q")) };
    run(&["init"])?;
    run(&["add", "big.safetensors"])?;
    let commit = run(&["commit", "-m", "bench", "--name", "big"])?;
    let checkout = run(&["checkout", "big", "--to", "out"])?;
    let cp2 = measure(Command::new("cp").arg(&big).arg(work.join("copy2.safetensors")))?;

    let same = files_equal(&big, &work.join("out/big.safetensors"))?;
    let stored = dir_size(&work.join(".dlv/objects"))?;
    println!("\nfile: {} MiB, {} tensors; checkout bit-identical: {same}", bytes >> 20, (bytes.saturating_sub(1 << 20)).div_ceil(16 << 20));
    println!("stored objects: {:.1} MiB ({:.3}x of the file)\n", stored as f64 / (1 << 20) as f64, stored as f64 / bytes as f64);
    row("cp (baseline)", &cp, bytes, &cp);
    row("dlv commit", &commit, bytes, &cp);
    row("dlv checkout", &checkout, bytes, &cp);
    row("cp again (noise check)", &cp2, bytes, &cp);
    if !same {
        bail!("checkout differs from the committed file");
    }
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

pub(crate) fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

pub(crate) fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() { dir_size(&e.path())? } else { m.len() };
    }
    Ok(total)
}
