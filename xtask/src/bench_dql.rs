//! `cargo xtask bench dql [SIZES…]`: DQL latency over generated repositories.
//!
//! Repositories of 1,000 and 10,000 versions (and 100,000, or the sizes given) of mixed
//! AlexNet / VGG / LeNet-style networks with varied names, dates and metadata are written through
//! the store's library API (not the CLI), in a RAM-backed folder when `/dev/shm` exists. Each
//! network family has a pool of distinct DAGs (AlexNet: random ReLUs removed and pool kinds
//! changed), as a repository of fine-tuned variants and checkpoints shares networks.
//!
//! Figures: median latency of SPEC Query 1 (name + date + graph predicate) and of a
//! metadata-only select, for our planner (pushdown to the indexes, candidates read from the
//! summary index, full records decoded only when a predicate or the result needs them, graphs
//! loaded only for survivors, parsed and evaluated once per DAG object) and for the naive plan
//! (read every record, load and parse every graph, then filter), measured in the same run, with
//! the ratio; `recs` is how many full records our plan decoded. Run it with
//! `--release` for meaningful numbers: `cargo run --release -p xtask -- bench dql`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use dlv_graph::Net;
use dlv_store::{HyperEntry, NetworkRef, Repository, TensorEntry, VersionRecord};
use dql_exec::{ExecOptions, Executor, StoreCatalog};

use crate::testdata::Rng;

const Q1: &str = r#"select m1
where m1.name like "alexnet_%" and
      m1.creation_time > "2015-11-22" and
      m1["conv[1,3,5]"].next has POOL("MAX")"#;

const META: &str = r#"select m where m.accuracy > 0.99 and m.base_lr <= 0.01"#;

/// Distinct networks per family.
const DAGS_PER_FAMILY: usize = 64;

pub fn run(args: &[String]) -> Result<()> {
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000, 100_000];
    }
    if cfg!(debug_assertions) {
        println!("note: debug build; run `cargo run --release -p xtask -- bench dql` for real figures");
    }
    let base = if Path::new("/dev/shm").is_dir() { std::path::PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    println!("DQL latency, median of repeated runs (ours = pushdown + summaries + graphs of survivors only; naive = load every record and graph)");
    println!("{:>8}  {:<10} {:>10} {:>10} {:>8}  {:>7} {:>9} {:>7} {:>8}", "versions", "query", "ours ms", "naive ms", "ratio", "rows", "cands", "recs", "graphs");
    for n in sizes {
        let dir = tempfile_in(&base, n)?;
        let t = Instant::now();
        let repo = generate(&dir, n)?;
        let gen_s = t.elapsed().as_secs_f64();
        for (label, q) in [("query1", Q1), ("metadata", META)] {
            let reps = if n >= 100_000 { 3 } else { 7 };
            let (ours, rows, cands, recs, graphs) = measure(&repo, q, false, reps.max(5))?;
            let (naive, naive_rows, _, _, _) = measure(&repo, q, true, reps)?;
            anyhow::ensure!(rows == naive_rows, "plans disagree on {label}: {rows} vs {naive_rows} rows");
            println!(
                "{n:>8}  {label:<10} {:>10.2} {:>10.2} {:>7.1}x  {rows:>7} {cands:>9} {recs:>7} {graphs:>8}",
                ours * 1e3,
                naive * 1e3,
                naive / ours.max(1e-9)
            );
        }
        println!("          (generated in {gen_s:.1} s, {} distinct networks)", 3 * DAGS_PER_FAMILY);
        drop(repo);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn tempfile_in(base: &Path, n: usize) -> Result<std::path::PathBuf> {
    let dir = base.join(format!("dlv-bench-dql-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Median seconds, and rows / candidates / records read / graphs of the last run.
fn measure(repo: &Repository, q: &str, naive: bool, reps: usize) -> Result<(f64, usize, usize, usize, usize)> {
    let mut times = Vec::with_capacity(reps);
    let mut last = (0, 0, 0, 0);
    for _ in 0..reps {
        let cat = StoreCatalog::new(repo);
        let exec = Executor::new(&cat, ExecOptions { naive, ..Default::default() });
        let t = Instant::now();
        let out = exec.run_text(q)?;
        times.push(t.elapsed().as_secs_f64());
        last = (out.rows.len(), out.stats.candidates, out.stats.records_read, out.stats.graphs_loaded);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], last.0, last.1, last.2, last.3))
}

fn remove_layer(text: &str, name: &str) -> String {
    let Some(start) = text.find(&format!("layer {{\n  name: \"{name}\"\n")) else { return text.to_string() };
    let Some(len) = text[start..].find("\n}\n") else { return text.to_string() };
    format!("{}{}", &text[..start], &text[start + len + 3..])
}

fn alexnet_variant(rng: &mut Rng, k: usize) -> String {
    let mut t = std::fs::read_to_string(crate::root().join("testdata/nets/alexnet.prototxt")).unwrap_or_default();
    for r in ["relu1", "relu2", "relu3", "relu4", "relu5"] {
        if rng.uniform() < 0.3 {
            t = remove_layer(&t, r);
        }
    }
    let mut out = String::new();
    for (i, part) in t.split("pool: MAX").enumerate() {
        if i > 0 {
            out.push_str(if rng.uniform() < 0.3 { "pool: AVE" } else { "pool: MAX" });
        }
        out.push_str(part);
    }
    out.replacen("name: \"AlexNetCifar\"", &format!("name: \"AlexNet{k}\""), 1)
}

fn vgg_variant(rng: &mut Rng, k: usize) -> String {
    let mut s = format!("name: \"VGG{k}\"\ninput: \"data\"\ninput_shape {{ dim: 1 dim: 3 dim: 224 dim: 224 }}\n");
    let mut bottom = "data".to_string();
    let blocks = [2, 2, 3 + (k % 2), 3 + (k % 2), 3];
    let mut c = 0;
    for (b, n) in blocks.iter().enumerate() {
        for i in 0..*n {
            c += 1;
            let name = format!("conv{}_{}", b + 1, i + 1);
            s += &format!("layer {{ name: \"{name}\" type: \"Convolution\" bottom: \"{bottom}\" top: \"{name}\" convolution_param {{ num_output: {} kernel_size: 3 pad: 1 }} }}\n", 64 << b.min(3));
            s += &format!("layer {{ name: \"relu{c}\" type: \"ReLU\" bottom: \"{name}\" top: \"{name}\" }}\n");
            bottom = name;
        }
        let pool = if rng.uniform() < 0.2 { "AVE" } else { "MAX" };
        s += &format!("layer {{ name: \"pool{}\" type: \"Pooling\" bottom: \"{bottom}\" top: \"pool{}\" pooling_param {{ pool: {pool} kernel_size: 2 stride: 2 }} }}\n", b + 1, b + 1);
        bottom = format!("pool{}", b + 1);
    }
    for (i, out) in [4096, 4096, 1000].iter().enumerate() {
        s += &format!("layer {{ name: \"fc{}\" type: \"InnerProduct\" bottom: \"{bottom}\" top: \"fc{}\" inner_product_param {{ num_output: {out} }} }}\n", i + 6, i + 6);
        bottom = format!("fc{}", i + 6);
    }
    s
}

fn lenet_variant(k: usize) -> String {
    let t = std::fs::read_to_string(crate::root().join("testdata/nets/lenet.prototxt")).unwrap_or_default();
    t.replacen("name: \"LeNet\"", &format!("name: \"LeNet{k}\""), 1).replace("num_output: 500", &format!("num_output: {}", 100 + k))
}

struct Dag {
    id: String,
    name: String,
    layers: u32,
    learnable: Vec<String>,
}

fn store_net(repo: &Repository, text: &str) -> Result<Dag> {
    let mut net = Net::from_prototxt(text, "bench.prototxt")?;
    net.set_inferred_blobs();
    let id = repo.objects().put_bytes(net.to_json().as_bytes())?.id;
    let learnable = net.nodes().filter(|n| matches!(n.layer_type.as_str(), "Convolution" | "InnerProduct")).map(|n| n.name.clone()).collect();
    Ok(Dag { id, name: net.name.clone(), layers: net.len() as u32, learnable })
}

/// Writes `n` versions; returns the repository opened for reading.
fn generate(dir: &Path, n: usize) -> Result<Repository> {
    let repo = Repository::init(dir)?;
    let mut rng = Rng::new(n as u64);
    let mut families: Vec<Vec<Dag>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for k in 0..DAGS_PER_FAMILY {
        families[0].push(store_net(&repo, &alexnet_variant(&mut rng, k))?);
        families[1].push(store_net(&repo, &vgg_variant(&mut rng, k))?);
        families[2].push(store_net(&repo, &lenet_variant(k))?);
    }
    let tensor = repo.objects().put_bytes(b"shared tensor bytes of the benchmark")?.id;
    let names = [
        ["alexnet_v", "alexnet-origin", "alexnet-avgv", "alexnet_ft"],
        ["vgg16_", "vgg19-ft", "vgg_small", "vggnet"],
        ["lenet-", "lenet_mnist", "lenet5_", "mnist-lenet"],
    ];
    let start = 1_388_534_400_000i64; // 2014-01-01
    let span = 4 * 365 * 86_400_000i64;
    let lrs = [0.1, 0.05, 0.01, 0.005, 0.001, 0.0005];
    for i in 0..n {
        let fam = (rng.next_u64() % 3) as usize;
        let dag = &families[fam][(rng.next_u64() % DAGS_PER_FAMILY as u64) as usize];
        let name = format!("{}{}", names[fam][(rng.next_u64() % 4) as usize], i % 997);
        let lr = lrs[(rng.next_u64() % lrs.len() as u64) as usize];
        let acc = rng.uniform();
        let record = VersionRecord {
            name,
            parents: Vec::new(),
            message: format!("generated version {i}"),
            author: "bench".into(),
            created_ms: start + (rng.uniform() * span as f64) as i64,
            network: Some(NetworkRef { dag: dag.id.clone(), name: dag.name.clone(), layers: dag.layers, source: None }),
            tensors: dag
                .learnable
                .iter()
                .flat_map(|l| {
                    ["weight", "bias"].map(|b| TensorEntry {
                        name: format!("{l}.{b}"),
                        layer: Some(l.clone()),
                        blob: Some(b.into()),
                        dtype: "F32".into(),
                        shape: vec![36],
                        object: tensor.clone(),
                        bytes: 36,
                    })
                })
                .collect(),
            weights_file: None,
            weights_header: None,
            hyper: vec![
                HyperEntry { key: "base_lr".into(), text: lr.to_string(), num: Some(lr) },
                HyperEntry { key: "momentum".into(), text: "0.9".into(), num: Some(0.9) },
            ],
            series: Vec::new(),
            files: Vec::new(),
            extra: vec![HyperEntry { key: "accuracy".into(), text: format!("{acc:.4}"), num: Some(acc) }],
        };
        repo.insert_version(&record)?;
    }
    repo.flush()?;
    drop(repo);
    Ok(Repository::open(dir)?)
}
