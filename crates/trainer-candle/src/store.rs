//! Between the trainer and the repository: load a version's network, weights and
//! hyper-parameters; commit a trained model (or a snapshot) as a child version.

use std::io::Write;
use std::path::Path;

use dlv_graph::Net;
use dlv_store::{formats, HyperEntry, Repository, SeriesEntry, VersionRecord};

use crate::error::{Result, TrainError};
use crate::session::Series;
use crate::solver::SolverConfig;
use crate::weights::{store_tensors, NamedTensor};

/// A version resolved for training or evaluation.
#[derive(Debug, Clone)]
pub struct LoadedVersion {
    pub id: String,
    pub record: VersionRecord,
    pub net: Net,
}

/// Resolves `rev` and reads its network.
pub fn load_version(repo: &Repository, rev: &str) -> Result<LoadedVersion> {
    let id = repo.resolve(rev)?;
    let record = repo.get(&id)?;
    let net = repo
        .network(&record)?
        .ok_or_else(|| TrainError::Network(format!("version {} ({}) has no network to train or test", dlv_store::short(&id), record.name)))?;
    Ok(LoadedVersion { id, record, net })
}

/// Hyper-parameters as `(key, text, number)`: the version's, then a solver prototxt or TOML
/// config file's, then `overrides` (later wins).
pub fn hyper_items(record: &VersionRecord, config: Option<&Path>, overrides: &[(String, String)]) -> Result<Vec<(String, String, Option<f64>)>> {
    let mut items: Vec<(String, String, Option<f64>)> = record.hyper.iter().map(|h| (h.key.clone(), h.text.clone(), h.num)).collect();
    if let Some(path) = config {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        let file = path.display().to_string();
        let pairs = if path.extension().is_some_and(|e| e == "toml") {
            formats::read_toml_config(&text, &file)?
        } else {
            formats::read_solver(&text, &file)?
        };
        items.extend(pairs.into_iter().map(|(k, v)| {
            let n = v.as_f64();
            (k, v.to_string(), n)
        }));
    }
    items.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone(), v.trim().parse::<f64>().ok())));
    Ok(items)
}

/// The solver config of a version with a config file and overrides applied.
pub fn solver_config(record: &VersionRecord, config: Option<&Path>, overrides: &[(String, String)]) -> Result<SolverConfig> {
    let items = hyper_items(record, config, overrides)?;
    SolverConfig::from_hyper(items.iter().map(|(k, t, n)| (k.as_str(), t.as_str(), *n)))
}

/// What to record on a trained version besides its weights.
#[derive(Debug, Clone, Default)]
pub struct CommitInfo {
    pub name: String,
    pub message: String,
    pub author: String,
    /// Milliseconds since the epoch; now when `None`.
    pub created_ms: Option<i64>,
    pub hyper: Vec<(String, String, Option<f64>)>,
    pub series: Vec<Series>,
    /// Extra metadata (`accuracy`, `loss`, `train.*`, `eval.*`).
    pub extra: Vec<(String, String, Option<f64>)>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keys a child version does not inherit from its parent's extra metadata: results that
/// describe the parent's weights, not the child's.
fn inherited_extra(key: &str) -> bool {
    !(key == "accuracy" || key == "loss" || key.starts_with("train.") || key.starts_with("eval.") || key.starts_with("test."))
}

fn merge(base: &[HyperEntry], over: &[(String, String, Option<f64>)], keep: impl Fn(&str) -> bool) -> Vec<HyperEntry> {
    let mut out: Vec<HyperEntry> = base.iter().filter(|h| keep(&h.key) && !over.iter().any(|(k, _, _)| *k == h.key)).cloned().collect();
    out.extend(over.iter().map(|(k, t, n)| HyperEntry { key: k.clone(), text: t.clone(), num: n.filter(|v| v.is_finite()) }));
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}

/// Records a child of `parent` with `tensors` as its weights (stored through the repository's
/// object writer) and the same network and associated files. Returns the new id.
pub fn commit_child(repo: &Repository, parent_id: &str, parent: &VersionRecord, tensors: &[NamedTensor], info: &CommitInfo) -> Result<String> {
    let entries = store_tensors(repo, tensors)?;
    let record = VersionRecord {
        name: info.name.clone(),
        parents: vec![parent_id.to_string()],
        message: info.message.clone(),
        author: info.author.clone(),
        created_ms: info.created_ms.unwrap_or_else(now_ms),
        network: parent.network.clone(),
        tensors: entries,
        weights_file: parent.weights_file.clone().or_else(|| Some(format!("{}.safetensors", info.name))),
        weights_header: None,
        hyper: merge(&parent.hyper, &info.hyper, |_| true),
        series: {
            let mut s: Vec<SeriesEntry> = info
                .series
                .iter()
                .map(|s| SeriesEntry {
                    name: s.name.clone(),
                    iters: s.points.iter().map(|p| p.0).collect(),
                    values: s.points.iter().map(|p| p.1).collect(),
                })
                .collect();
            s.sort_by(|a, b| a.name.cmp(&b.name));
            s
        },
        files: parent.files.clone(),
        extra: merge(&parent.extra, &info.extra, inherited_extra),
    };
    let id = repo.insert_version(&record)?;
    tracing::info!(%id, name = %record.name, "committed trained version");
    Ok(id)
}

/// Records an evaluation of `parent` as a child version that shares its network, weights and
/// files and adds the results (`accuracy`, `loss`, `eval.*`) to its metadata. Versions are
/// immutable and content-addressed, so results live on a version of their own.
pub fn commit_eval(repo: &Repository, parent_id: &str, parent: &VersionRecord, info: &CommitInfo) -> Result<String> {
    let mut record = parent.clone();
    record.parents = vec![parent_id.to_string()];
    record.message = info.message.clone();
    record.author = info.author.clone();
    record.created_ms = info.created_ms.unwrap_or_else(now_ms);
    record.extra = merge(&parent.extra, &info.extra, |k| k != "accuracy" && k != "loss" && !k.starts_with("eval."));
    Ok(repo.insert_version(&record)?)
}

/// Writes tensors as a safetensors file (fp32), for snapshots that are not committed.
pub fn write_safetensors(path: &Path, tensors: &[NamedTensor]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let len = t.data.len() * 4;
        header.insert(
            t.name(),
            serde_json::json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let io = |source| TrainError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(f);
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for t in tensors {
        for v in &t.data {
            w.write_all(&v.to_le_bytes()).map_err(io)?;
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}
