//! `cargo xtask bench hub`: ModelHub over loopback, each figure beside its baseline.
//!
//! 1. publish and pull of a generated model (1 GiB by default, `DLV_BENCH_MB`) against a plain
//!    file copy of the same bytes (`cp`); the pulled version is checked out and compared bit for
//!    bit; the server's peak memory (VmHWM) shows that transfers stream.
//! 2. re-publish of a fine-tuned variant whose last 1/16 of the tensors changed (a head-only
//!    fine-tune): bytes sent against the full size.
//! 3. search latency p50/p99 under 64 concurrent keep-alive clients for 30 s
//!    (`DLV_BENCH_SEARCH_SECS`, `DLV_BENCH_CLIENTS`) over a catalogue of 1000 models
//!    (`DLV_BENCH_MODELS`), with the error count (must be 0) and the server's memory.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::testdata::Rng;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn build_hub() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(crate::root())
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "hub-server",
            "--bin",
            "hub-server",
        ])
        .status()?
        .success();
    if !ok {
        bail!("building hub-server failed");
    }
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::root().join("target"));
    Ok(dir.join("release/hub-server"))
}

/// A safetensors file of `mb` MiB in 16 MiB F32 tensors (normal, std 0.02). Tensor `i` is
/// drawn from seed `i`, or `1000 + i` when `changed(i)`, so variants share unchanged tensors.
pub(crate) fn generate(path: &Path, mb: usize, changed: &dyn Fn(usize, usize) -> bool) -> Result<usize> {
    let per_tensor = 16usize << 20;
    let n = (mb << 20).div_ceil(per_tensor).max(1);
    let elems = per_tensor / 4;
    let mut header = serde_json::Map::new();
    for i in 0..n {
        header.insert(
            format!("layer{i:03}.weight"),
            serde_json::json!({"dtype": "F32", "shape": [elems / 1024, 1024], "data_offsets": [i * per_tensor, (i + 1) * per_tensor]}),
        );
    }
    let mut h = serde_json::to_vec(&header)?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..n {
        let mut rng = Rng::new(if changed(i, n) {
            1000 + i as u64
        } else {
            i as u64
        });
        for _ in 0..elems / (1 << 18) {
            buf.clear();
            for _ in 0..(1 << 18) {
                buf.extend_from_slice(&((rng.normal() * 0.02) as f32).to_le_bytes());
            }
            w.write_all(&buf)?;
        }
    }
    w.flush()?;
    Ok(n)
}

fn timed(cmd: &mut Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed");
    }
    Ok((secs, String::from_utf8_lossy(&out.stdout).to_string()))
}

/// Peak and current resident memory of a process, KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}


fn mibps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

pub fn run(_args: &[String]) -> Result<()> {
    let mb = env_num("DLV_BENCH_MB", 1024) as usize;
    let dlv = crate::build_dlv(true)?;
    let hub_bin = build_hub()?;
    let work = std::env::var("DLV_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::root().join("target/bench-hub"));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    for d in ["src", "dst", "cfg", "hub"] {
        std::fs::create_dir_all(work.join(d))?;
    }
    let data = work.join("hub");
    let out = Command::new(&hub_bin)
        .arg("--data")
        .arg(&data)
        .args(["user", "add", "bench"])
        .output()?;
    if !out.status.success() {
        bail!("hub-server user add failed");
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut child = Command::new(&hub_bin)
        .arg("--data")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(o) = child.stdout.take() {
        BufReader::new(o).read_line(&mut line)?;
    }
    let url = line.trim().trim_start_matches("listening on ").to_string();
    let server = Server {
        addr: url.trim_start_matches("http://").to_string(),
        child,
    };
    let pid = server.child.id();
    println!("hub-server {url} (pid {pid}), data in {}", data.display());

    let src = work.join("src");
    let big = src.join("big.safetensors");
    println!("generating {mb} MiB safetensors ...");
    let n_tensors = generate(&big, mb, &|_, _| false)?;
    let bytes = std::fs::metadata(&big)?.len();
    let cfg = work.join("cfg");
    let dlv_in = |dir: &Path| {
        let mut c = Command::new(&dlv);
        c.current_dir(dir)
            .env("DLV_CONFIG_DIR", &cfg)
            .env("DLV_AUTHOR", "bench")
            .env_remove("DLV_TOKEN");
        c
    };
    timed(dlv_in(&src).args(["init", "-q"]))?;
    timed(dlv_in(&src).args(["add", "big.safetensors", "-q"]))?;
    timed(dlv_in(&src).args(["commit", "-m", "base", "--name", "big", "-q"]))?;
    timed(dlv_in(&src).args(["remote", "add", "hub", &url, "-q"]))?;
    timed(dlv_in(&src).args(["login", "--token", &token, "-q"]))?;

    let (cp, _) = timed(
        Command::new("cp")
            .arg(&big)
            .arg(work.join("copy.safetensors")),
    )?;
    let (publish, p_out) = timed(dlv_in(&src).args(["publish", "big", "--json"]))?;
    let p: serde_json::Value = serde_json::from_str(p_out.trim()).context("publish output")?;
    let (hwm_publish, _) = memory(pid);
    let dst = work.join("dst");
    timed(dlv_in(&dst).args(["init", "-q"]))?;
    let (pull, _) = timed(dlv_in(&dst).args(["pull", "bench/big", "--json"]))?;
    let (hwm_pull, _) = memory(pid);
    let (cp2, _) = timed(
        Command::new("cp")
            .arg(&big)
            .arg(work.join("copy2.safetensors")),
    )?;
    timed(dlv_in(&dst).args(["checkout", "big", "--to", "out", "-q"]))?;
    let same = crate::bench::files_equal(&big, &dst.join("out/big.safetensors"))?;

    println!("\n== publish / pull of {} MiB ({n_tensors} tensors) over loopback; pulled checkout bit-identical: {same}", bytes >> 20);
    println!(
        "{:<30} {:>8} {:>12} {:>16}",
        "", "seconds", "MiB/s", "time vs cp"
    );
    for (label, secs) in [
        ("cp (baseline)", cp),
        ("dlv publish", publish),
        ("dlv pull", pull),
        ("cp again (noise check)", cp2),
    ] {
        println!(
            "{label:<30} {secs:>8.2} {:>12.1} {:>15.2}x",
            mibps(bytes, secs),
            secs / cp
        );
    }
    println!(
        "bytes sent by publish: {} of {}",
        p["bytes_sent"], p["full_bytes"]
    );
    println!(
        "hub-server peak RSS (VmHWM): {:.1} MiB after publish, {:.1} MiB after pull (model {} MiB)",
        hwm_publish as f64 / 1024.0,
        hwm_pull as f64 / 1024.0,
        bytes >> 20
    );
    if !same {
        bail!("the pulled version differs from the published file");
    }

    // Fine-tuned variant: the last 1/16 of the tensors change.
    generate(&big, mb, &|i, n| i >= n - (n / 16).max(1))?;
    timed(dlv_in(&src).args(["add", "big.safetensors", "-q"]))?;
    timed(dlv_in(&src).args(["commit", "-m", "fine-tuned head", "--name", "big", "-q"]))?;
    let (re, r_out) = timed(dlv_in(&src).args(["publish", "big", "--json"]))?;
    let r: serde_json::Value = serde_json::from_str(r_out.trim()).context("publish output")?;
    let sent = r["bytes_sent"].as_u64().unwrap_or(0);
    let full = r["full_bytes"].as_u64().unwrap_or(1);
    println!("\n== re-publish of a fine-tuned variant (last 1/16 of the tensors changed)");
    println!(
        "bytes sent {:.1} MiB of {:.1} MiB full size = {:.3}x (whole-file upload: 1.000x); {:.2} s",
        sent as f64 / (1 << 20) as f64,
        full as f64 / (1 << 20) as f64,
        sent as f64 / full as f64,
        re
    );
    drop(std::fs::remove_file(work.join("copy.safetensors")));
    drop(std::fs::remove_file(work.join("copy2.safetensors")));

    search_load(&server, &token, pid)?;
    drop(server);
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

/// One keep-alive HTTP/1.1 connection; returns (status, body).
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.exchange(method, path, token, body);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let s = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no connection"))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let w = s.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(body)?;
        let mut status_line = String::new();
        s.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut l = String::new();
            if s.read_line(&mut l)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        Ok((status, body))
    }
}

fn search_load(server: &Server, token: &str, pid: u32) -> Result<()> {
    let models = env_num("DLV_BENCH_MODELS", 1000);
    let clients = env_num("DLV_BENCH_CLIENTS", 64) as usize;
    let secs = env_num("DLV_BENCH_SEARCH_SECS", 30);
    // Catalogue: small versions (metadata only, no objects) under distinct names.
    let mut conn = Conn {
        addr: server.addr.clone(),
        stream: None,
    };
    let words = [
        "resnet",
        "lenet",
        "alexnet",
        "vgg",
        "mobilenet",
        "bert",
        "unet",
        "yolo",
    ];
    for i in 0..models {
        let name = format!("{}-{i:04}", words[i as usize % words.len()]);
        let acc = 0.5 + (i % 50) as f64 / 100.0;
        let record = serde_json::json!({
            "name": name, "parents": [], "message": format!("run {i}"), "author": "bench",
            "created_ms": 1_700_000_000_000i64 + i as i64, "network": null, "tensors": [],
            "weights_file": null, "weights_header": null,
            "hyper": [{"key": "base_lr", "text": "0.01", "num": 0.01}],
            "series": [{"name": "test/accuracy", "iters": [1000], "values": [acc]}],
            "files": [], "extra": [],
        });
        // No `head`: the hub takes the last record as the version to publish.
        let req = serde_json::json!({ "records": [record], "description": format!("{} trained on set {}", words[i as usize % words.len()], i % 7), "tags": [words[i as usize % words.len()]] });
        let (status, body) = conn.request(
            "POST",
            "/api/v1/publish",
            Some(token),
            &serde_json::to_vec(&req)?,
        )?;
        if status != 200 {
            bail!(
                "registering model {name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    let queries: Vec<String> = vec![
        "/api/v1/search?q=resnet&per_page=20".into(),
        "/api/v1/search?filter=accuracy%3E0.9&sort=accuracy&per_page=20".into(),
        "/api/v1/search?q=trained+set&filter=base_lr%3C%3D0.01&page=3&per_page=10".into(),
        "/api/v1/search?q=lenet-00&sort=name".into(),
        "/api/models?search=yolo&limit=20".into(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (stop, errors, queries, addr) = (
                stop.clone(),
                errors.clone(),
                queries.clone(),
                server.addr.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = Conn { addr, stream: None };
                let mut lat: Vec<u32> = Vec::new();
                let mut k = c;
                while !stop.load(Ordering::Relaxed) {
                    let q = &queries[k % queries.len()];
                    k += 1;
                    let t = Instant::now();
                    match conn.request("GET", q, None, b"") {
                        Ok((200, _)) => {
                            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32)
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut all: Vec<u32> = Vec::new();
    for h in handles {
        all.extend(h.join().unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let (hwm, rss) = memory(pid);
    println!("\n== search under load: {clients} clients, {secs} s, catalogue of {models} models");
    println!(
        "requests {}  ({:.0}/s)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  errors {}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0) as f64 / 1000.0,
        errors.load(Ordering::Relaxed)
    );
    println!(
        "hub-server memory: VmHWM {:.1} MiB, VmRSS {:.1} MiB",
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    if errors.load(Ordering::Relaxed) > 0 {
        bail!("search load had errors");
    }
    Ok(())
}
