//! `dlv train` and `dlv eval`: the trainer-candle backend wired to the repository and the
//! terminal.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use dlv_store::{short, Repository};
use serde_json::json;
use trainer_candle::{
    commit_child, commit_eval, data, device, evaluate, load_version, solver_config, write_safetensors, BuildOptions, CommitInfo,
    EvalStats, Init, Model, Session, SessionOptions, StoreBackend, VarBuilder,
};

use crate::Cli;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Version to start from (its network, weights and hyper-parameters).
    pub rev: String,
    /// Data folder: MNIST-style IDX files (optionally .gz) or CIFAR-10 binary batches.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Solver prototxt or TOML training config; overrides the version's hyper-parameters.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Iterations to train (default: the solver's max_iter).
    #[arg(long, alias = "max_iter", alias = "max-iter")]
    pub iters: Option<u64>,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Snapshot every K iterations (default: the solver's snapshot, 0 = none).
    #[arg(long, value_name = "K")]
    pub snapshot: Option<u64>,
    /// Commit snapshots as versions (otherwise they are written to --snapshot-dir).
    #[arg(long, alias = "commit_snapshots")]
    pub commit_snapshots: bool,
    /// Folder for snapshot files that are not committed.
    #[arg(long, alias = "snapshot_dir", value_name = "DIR", default_value = "snapshots")]
    pub snapshot_dir: PathBuf,
    /// Seed for initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Base learning rate (overrides base_lr).
    #[arg(long, alias = "base_lr", alias = "base-lr")]
    pub lr: Option<f64>,
    /// Batch size of every data layer.
    #[arg(long, alias = "batch_size")]
    pub batch_size: Option<usize>,
    /// Any other hyper-parameter, KEY=VALUE (repeatable): --set momentum=0.95.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Name of the new version (default: the name of REF).
    #[arg(long)]
    pub name: Option<String>,
    /// Commit message (default: a summary of the run).
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author (default: $DLV_AUTHOR, else $USER).
    #[arg(long)]
    pub author: Option<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Versions to test.
    pub revs: Vec<String>,
    /// More versions (the paper's spellings; comma-separated).
    #[arg(long = "versions", alias = "model_names", alias = "model-names", value_delimiter = ',')]
    pub versions: Vec<String>,
    /// Solver prototxt or TOML config (batch_size, test_iter, input_data).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data folder (default: the config's input_data).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Also report per-blob activation statistics on the first test batch.
    #[arg(long)]
    pub activations: bool,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Only the first N test examples.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Do not record the results in the repository.
    #[arg(long, alias = "no_record")]
    pub no_record: bool,
}

fn author(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("DLV_AUTHOR").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn overrides(args: &TrainArgs) -> Result<Vec<(String, String)>> {
    let mut v = Vec::new();
    for s in &args.set {
        let Some((k, val)) = s.split_once('=') else { bail!("--set takes KEY=VALUE, got '{s}'") };
        v.push((k.trim().to_string(), val.trim().to_string()));
    }
    if let Some(lr) = args.lr {
        v.push(("base_lr".into(), lr.to_string()));
    }
    if let Some(b) = args.batch_size {
        v.push(("batch_size".into(), b.to_string()));
    }
    if let Some(i) = args.iters {
        v.push(("max_iter".into(), i.to_string()));
    }
    if let Some(k) = args.snapshot {
        v.push(("snapshot".into(), k.to_string()));
    }
    Ok(v)
}

fn bar(enabled: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let b = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("training [{bar:30}] {pos}/{len} it {per_sec} eta {eta} {msg}") {
        b.set_style(style.progress_chars("=> "));
    }
    Some(b)
}

fn extra_num(k: &str, v: f64) -> (String, String, Option<f64>) {
    (k.to_string(), format!("{v}"), Some(v))
}

pub fn train(cli: &Cli, start: &Path, args: &TrainArgs, out: &mut dyn Write) -> Result<()> {
    let dev = device(&args.device)?;
    let datasets = data::load_dir(&args.data)?;
    // The repository is open only to read the version and to commit, not while training, so
    // that other dlv commands work in the meantime.
    let (loaded, mut session, config) = {
        let repo = Repository::open(start)?;
        let loaded = load_version(&repo, &args.rev)?;
        let config = solver_config(&loaded.record, args.config.as_deref(), &overrides(args)?)?;
        let backend = StoreBackend::new(&repo, &loaded.record);
        let slot = backend.error_slot();
        let vb = VarBuilder::from_backend(Box::new(backend), trainer_candle::DType::F32, dev.clone());
        let opts = SessionOptions { device: dev.clone(), dtype: trainer_candle::DType::F32, seed: args.seed };
        let session = match Session::new(&loaded.net, Init::Backend(&vb), config.clone(), datasets, &opts) {
            Ok(s) => s,
            Err(e) => {
                if let Some(se) = slot.lock().ok().and_then(|mut s| s.take()) {
                    return Err(se.into());
                }
                return Err(e.into());
            }
        };
        (loaded, session, config)
    };
    let name = args.name.clone().unwrap_or_else(|| loaded.record.name.clone());
    let who = author(&args.author);
    let total = config.max_iter;
    let pb = bar(!cli.quiet && !cli.json && std::io::stderr().is_terminal(), total);
    let mut parent_id = loaded.id.clone();
    let mut parent_rec = loaded.record.clone();
    let mut snapshots: Vec<serde_json::Value> = Vec::new();
    let snapshot_every = config.snapshot;
    let mut failure: Option<anyhow::Error> = None;
    session.run(total, &mut |s, sess| {
        if let Some(b) = &pb {
            b.set_position(s.iter);
            b.set_message(format!("loss {:.4} lr {:.2e}", s.loss, s.lr));
        }
        if snapshot_every > 0 && s.iter % snapshot_every == 0 && s.iter < total {
            let tensors = sess.tensors()?;
            if args.commit_snapshots {
                let info = CommitInfo {
                    name: name.clone(),
                    message: format!("snapshot at iteration {} of {total}", s.iter),
                    author: who.clone(),
                    hyper: config.to_hyper(),
                    series: sess.series().to_vec(),
                    extra: vec![extra_num("train.iters", s.iter as f64), ("train.snapshot".into(), "true".into(), None)],
                    ..CommitInfo::default()
                };
                let committed = Repository::open_writer(start)
                    .map_err(trainer_candle::TrainError::from)
                    .and_then(|repo| commit_child(&repo, &parent_id, &parent_rec, &tensors, &info).map(|id| (id, repo)));
                match committed {
                    Ok((id, repo)) => {
                        parent_rec = repo.get(&id)?;
                        snapshots.push(json!({ "iter": s.iter, "id": id }));
                        parent_id = id;
                    }
                    Err(e) => {
                        failure = Some(e.into());
                        return Ok(false);
                    }
                }
            } else {
                let path = args.snapshot_dir.join(format!("{name}_iter_{}.safetensors", s.iter));
                write_safetensors(&path, &tensors)?;
                snapshots.push(json!({ "iter": s.iter, "file": path }));
            }
        }
        Ok(true)
    })?;
    if let Some(e) = failure {
        return Err(e.context("cannot commit a snapshot"));
    }
    if let Some(b) = &pb {
        b.set_message("testing");
    }
    let test = session.test()?;
    if let Some(b) = pb {
        b.finish_and_clear();
    }
    let (images, seconds) = session.throughput();
    let rate = |(i, s): (u64, f64)| if s > 0.0 { i as f64 / s } else { 0.0 };
    let ips_all = rate((images, seconds));
    // Steady state (after the warm-up steps) where there was one: what a longer run gets.
    let ips = session.steady_throughput().map_or(ips_all, rate);
    let mut extra = vec![
        extra_num("train.iters", session.iter() as f64),
        extra_num("train.batch_size", session.batch_size() as f64),
        extra_num("train.seconds", seconds),
        extra_num("train.images_per_s", ips),
        extra_num("train.images_per_s_all", ips_all),
        extra_num("train.seed", args.seed as f64),
        ("train.device".into(), args.device.clone(), None),
        ("train.data".into(), session.datasets().source.clone(), None),
        extra_num("test.examples", test.examples as f64),
    ];
    if let Some(a) = test.accuracy {
        extra.push(extra_num("accuracy", a));
    }
    if let Some(l) = test.loss {
        extra.push(extra_num("loss", l));
    }
    let message = args.message.clone().unwrap_or_else(|| {
        let acc = test.accuracy.map(|a| format!(", test accuracy {a:.4}")).unwrap_or_default();
        format!("trained {} iterations from {}@{} on {}{acc}", session.iter(), loaded.record.name, short(&loaded.id), session.datasets().source)
    });
    let info = CommitInfo {
        name: name.clone(),
        message,
        author: who,
        hyper: config.to_hyper(),
        series: session.series().to_vec(),
        extra,
        ..CommitInfo::default()
    };
    let tensors = session.tensors()?;
    let repo = Repository::open_writer(start)?;
    let id = commit_child(&repo, &parent_id, &parent_rec, &tensors, &info)?;
    if cli.json {
        let v = json!({
            "id": id,
            "name": name,
            "parent": parent_id,
            "from": loaded.id,
            "iters": session.iter(),
            "accuracy": test.accuracy,
            "loss": test.loss,
            "train_seconds": seconds,
            "images_per_s": ips,
            "images_per_s_all": ips_all,
            "snapshots": snapshots,
        });
        writeln!(out, "{v}")?;
    } else if !cli.quiet {
        for s in &snapshots {
            if let Some(id) = s["id"].as_str() {
                writeln!(out, "snapshot {name}@{} at iteration {}", short(id), s["iter"])?;
            } else if let Some(f) = s["file"].as_str() {
                writeln!(out, "snapshot {f}")?;
            }
        }
        let acc = test.accuracy.map(|a| format!(", test accuracy {a:.4}")).unwrap_or_default();
        let loss = test.loss.map(|l| format!(", test loss {l:.4}")).unwrap_or_default();
        writeln!(
            out,
            "trained {name}@{} from {}@{}: {} iterations in {seconds:.1} s ({ips:.0} images/s){acc}{loss}",
            short(&id),
            loaded.record.name,
            short(&loaded.id),
            session.iter()
        )?;
    }
    Ok(())
}

fn eval_data_dir(args: &EvalArgs) -> Result<PathBuf> {
    if let Some(d) = &args.data {
        return Ok(d.clone());
    }
    if let Some(cfg) = &args.config {
        let text = std::fs::read_to_string(cfg).with_context(|| format!("cannot read {}", cfg.display()))?;
        let pairs = if cfg.extension().is_some_and(|e| e == "toml") {
            dlv_store::formats::read_toml_config(&text, &cfg.display().to_string())?
        } else {
            dlv_store::formats::read_solver(&text, &cfg.display().to_string())?
        };
        if let Some((_, v)) = pairs.iter().find(|(k, _)| k == "input_data" || k == "data") {
            let p = PathBuf::from(v.to_string());
            // Relative to the config file.
            return Ok(if p.is_relative() { cfg.parent().map(|d| d.join(&p)).unwrap_or(p) } else { p });
        }
    }
    bail!("no test data: pass --data DIR (MNIST IDX files or CIFAR-10 batches) or a --config with input_data")
}

fn stats_json(s: &EvalStats) -> serde_json::Value {
    json!({
        "examples": s.examples,
        "accuracy": s.accuracy,
        "loss": s.loss,
        "outputs": s.outputs.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "seconds": s.seconds,
        "activations": s.activations.iter().map(|a| json!({
            "blob": a.blob, "shape": a.shape, "mean": a.mean, "std": a.std, "min": a.min, "max": a.max, "zeros": a.zeros,
        })).collect::<Vec<_>>(),
    })
}

pub fn eval(cli: &Cli, start: &Path, args: &EvalArgs, out: &mut dyn Write) -> Result<()> {
    let revs: Vec<&String> = args.revs.iter().chain(args.versions.iter()).collect();
    if revs.is_empty() {
        bail!("name at least one version to evaluate");
    }
    let dir = eval_data_dir(args)?;
    let dev = device(&args.device)?;
    let datasets = data::load_dir(&dir)?;
    let overrides: Vec<(String, String)> = Vec::new();
    let mut results = Vec::new();
    {
        let repo = Repository::open(start)?;
        for rev in revs {
            let loaded = load_version(&repo, rev)?;
            let config = solver_config(&loaded.record, args.config.as_deref(), &overrides)?;
            if loaded.record.tensors.is_empty() {
                tracing::warn!(version = %short(&loaded.id), "the version has no weights; testing the fillers' initial values");
            }
            let backend = StoreBackend::new(&repo, &loaded.record);
            let slot = backend.error_slot();
            let vb = VarBuilder::from_backend(Box::new(backend), trainer_candle::DType::F32, dev.clone());
            let opts = BuildOptions {
                device: dev.clone(),
                dtype: trainer_candle::DType::F32,
                seed: config.random_seed.unwrap_or(1),
                data_dims: Some(datasets.test.dims),
                batch_size: config.batch_size,
            };
            let mut model = match Model::build(&loaded.net, &opts, Init::Backend(&vb)) {
                Ok(m) => m,
                Err(e) => {
                    if let Some(se) = slot.lock().ok().and_then(|mut s| s.take()) {
                        return Err(se.into());
                    }
                    return Err(e.into());
                }
            };
            model.set_data_means(&datasets.train);
            let stats = evaluate(&model, &datasets.test, args.limit, args.activations)?;
            results.push((loaded, stats));
        }
    }
    let mut recorded: Vec<Option<String>> = vec![None; results.len()];
    if !args.no_record {
        let repo = Repository::open_writer(start)?;
        for (i, (loaded, stats)) in results.iter().enumerate() {
            let mut extra = vec![
                extra_num("eval.examples", stats.examples as f64),
                ("eval.data".into(), datasets.source.clone(), None),
            ];
            if let Some(a) = stats.accuracy {
                extra.push(extra_num("accuracy", a));
            }
            if let Some(l) = stats.loss {
                extra.push(extra_num("loss", l));
            }
            let acc = stats.accuracy.map(|a| format!("accuracy {a:.4}")).unwrap_or_else(|| "no accuracy".into());
            let info = CommitInfo {
                name: loaded.record.name.clone(),
                message: format!("eval of {}@{} on {}: {acc}", loaded.record.name, short(&loaded.id), datasets.source),
                author: std::env::var("DLV_AUTHOR").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into()),
                extra,
                ..CommitInfo::default()
            };
            recorded[i] = Some(commit_eval(&repo, &loaded.id, &loaded.record, &info)?);
        }
    }
    if cli.json {
        let arr: Vec<serde_json::Value> = results
            .iter()
            .zip(&recorded)
            .map(|((l, s), r)| {
                let mut v = stats_json(s);
                if let Some(o) = v.as_object_mut() {
                    o.insert("id".into(), json!(l.id));
                    o.insert("name".into(), json!(l.record.name));
                    o.insert("recorded".into(), json!(r));
                }
                v
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&arr)?)?;
        return Ok(());
    }
    for ((l, s), r) in results.iter().zip(&recorded) {
        let acc = s.accuracy.map(|a| format!("accuracy {a:.4}")).unwrap_or_else(|| "accuracy n/a".into());
        let loss = s.loss.map(|v| format!("loss {v:.4}")).unwrap_or_else(|| "loss n/a".into());
        writeln!(out, "{}@{}  {acc}  {loss}  ({} examples, {:.2} s)", l.record.name, short(&l.id), s.examples, s.seconds)?;
        if let Some(r) = r {
            writeln!(out, "  recorded as {}@{}", l.record.name, short(r))?;
        }
        if !s.activations.is_empty() {
            writeln!(out, "  {:<16} {:<18} {:>10} {:>10} {:>10} {:>10} {:>7}", "blob", "shape", "mean", "std", "min", "max", "zeros")?;
            for a in &s.activations {
                writeln!(
                    out,
                    "  {:<16} {:<18} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>6.1}%",
                    a.blob,
                    format!("{:?}", a.shape),
                    a.mean,
                    a.std,
                    a.min,
                    a.max,
                    a.zeros * 100.0
                )?;
            }
        }
    }
    Ok(())
}
