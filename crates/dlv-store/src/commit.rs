//! Staging (`dlv add`, `dlv status`) and committing a version from the staged files.
//!
//! A file is classified and validated when it is added (a malformed prototxt is refused then,
//! with its line and column); its content is read again and stored at commit. Commit streams
//! weights tensor by tensor into objects, syncs them, and only then records the version in one
//! sled transaction, so an interrupted commit leaves no visible version.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use dlv_graph::Net;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codec::{StorageConfig, TensorLayout};
use crate::formats::{self, HyperValue, MatchReport, Series};
use crate::objects::sync_dir;

use crate::record::{FileEntry, HyperEntry, NetworkRef, SeriesEntry, TensorEntry, VersionRecord};
use crate::repo::Repository;
use crate::{Result, StoreError, TensorInfo};

/// What dlv understood a staged file as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A network definition (Caffe prototxt, or our DAG JSON).
    Network,
    /// Weights (safetensors, PyTorch, NumPy, Caffe).
    Weights,
    /// Caffe solver hyper-parameters.
    Solver,
    /// A TOML training configuration.
    Config,
    /// A training log (Caffe log or our JSON-lines metrics).
    Log,
    /// Anything else, kept as an associated file.
    File,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Network => "network",
            Role::Weights => "weights",
            Role::Solver => "solver",
            Role::Config => "config",
            Role::Log => "log",
            Role::File => "file",
        }
    }
}

/// One staged file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedFile {
    /// Path relative to the working folder, forward slashes.
    pub path: String,
    pub role: Role,
    pub size: u64,
}

/// Reports progress of long work; the CLI draws bars, libraries stay quiet.
pub trait Progress: Sync {
    fn begin(&self, _label: &str, _total_bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// One tensor as stored by a commit: its object, decoded length, and what storing it changed
/// (objects written, stored bytes added and removed by re-coding its parent).
struct StoredTensor {
    id: crate::ObjectId,
    len: u64,
    objects: usize,
    added: u64,
    removed: u64,
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Options of a commit.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub name: String,
    pub message: String,
    pub author: String,
    /// Parent refs; when empty, the newest version of the same name (if any) is the parent.
    pub parents: Vec<String>,
    /// Creation time (ms since epoch); now when `None`.
    pub created_ms: Option<i64>,
}

/// What a commit did.
#[derive(Debug)]
pub struct CommitOutcome {
    pub id: String,
    pub record: VersionRecord,
    /// How the weights matched the network's layers (when both were staged).
    pub matching: Option<MatchReport>,
    pub objects_written: usize,
    pub bytes_written: u64,
}

impl Repository {
    /// Classifies, validates and stages files. Nothing is staged if any of them is refused.
    pub fn add(&self, paths: &[PathBuf]) -> Result<Vec<StagedFile>> {
        let mut staged = Vec::new();
        for p in paths {
            staged.push(self.classify(p)?);
        }
        for s in &staged {
            let value = serde_json::to_vec(s).map_err(|e| StoreError::Invalid(e.to_string()))?;
            self.staging.insert(s.path.as_bytes(), value)?;
        }
        self.flush()?;
        Ok(staged)
    }

    /// Removes files from the staging area (all of them when `paths` is empty).
    pub fn unstage(&self, paths: &[PathBuf]) -> Result<usize> {
        if paths.is_empty() {
            let n = self.staging.len();
            self.staging.clear()?;
            self.flush()?;
            return Ok(n);
        }
        let mut n = 0;
        for p in paths {
            let rel = self.relative(p)?;
            if self.staging.remove(rel.as_bytes())?.is_some() {
                n += 1;
            }
        }
        self.flush()?;
        Ok(n)
    }

    /// The staging area, sorted by path.
    pub fn staged(&self) -> Result<Vec<StagedFile>> {
        let mut v = Vec::new();
        for item in self.staging.iter() {
            let (k, val) = item?;
            let s: StagedFile = serde_json::from_slice(&val).map_err(|e| StoreError::CorruptMeta {
                what: format!("staging entry {}", String::from_utf8_lossy(&k)),
                msg: e.to_string(),
            })?;
            v.push(s);
        }
        Ok(v)
    }

    fn relative(&self, p: &Path) -> Result<String> {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().map_err(|e| StoreError::io(".", e))?.join(p)
        };
        let abs = fs::canonicalize(&abs).map_err(|e| StoreError::io(p, e))?;
        let rel = abs.strip_prefix(self.work_dir()).map_err(|_| {
            StoreError::Invalid(format!(
                "{} is outside the repository at {}",
                p.display(),
                self.work_dir().display()
            ))
        })?;
        if rel.starts_with(crate::repo::DOT_DIR) {
            return Err(StoreError::Invalid(format!("{} is inside .dlv", p.display())));
        }
        let parts: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().to_string()),
                _ => None,
            })
            .collect();
        Ok(parts.join("/"))
    }

    fn classify(&self, p: &Path) -> Result<StagedFile> {
        let rel = self.relative(p)?;
        let abs = self.work_dir().join(&rel);
        let meta = fs::metadata(&abs).map_err(|e| StoreError::io(p, e))?;
        if !meta.is_file() {
            return Err(StoreError::Invalid(format!("{} is not a regular file", p.display())));
        }
        let role = classify_file(&abs, &rel)?;
        Ok(StagedFile { path: rel, role, size: meta.len() })
    }

    /// Stores tensor `i` of a weights file: coded against its planned base, and its parent
    /// re-coded against it when the plan is a reverse delta.
    fn store_tensor(
        &self,
        abs: &Path,
        src: &mut dyn formats::TensorSource,
        i: usize,
        info: &TensorInfo,
        planner: &DeltaPlanner,
        progress: &dyn Progress,
    ) -> Result<StoredTensor> {
        let plan = planner.plan(self, info);
        let base = match &plan {
            Plan::Forward(b) => b.clone(),
            Plan::Reverse(_) => None,
        };
        let mut w = self.objects().tensor_writer(TensorLayout::for_shape(info.dtype, &info.shape), info.byte_len(), base.as_deref(), planner.config.encoding(), false)?;
        let n = src.read_tensor(i, &mut ProgressWriter { inner: &mut w, progress })?;
        if n != info.byte_len() {
            return Err(StoreError::format(abs, None, format!("tensor '{}' yielded {n} bytes, expected {}", info.name, info.byte_len())));
        }
        let put = w.finish()?;
        let mut out = StoredTensor { id: put.id.clone(), len: put.len, objects: 0, added: 0, removed: 0 };
        if !put.existed {
            out.objects = 1;
            out.added = put.stored;
        }
        if let Plan::Reverse(parent) = &plan {
            if *parent != put.id {
                // The new object is durable; re-coding the parent in place (same id, same
                // content, atomic rename) keeps every version readable even if this commit
                // never completes (gc keeps bases of referenced objects).
                let (before, after) = self.objects().recode(parent, TensorLayout::for_shape(info.dtype, &info.shape), info.byte_len(), Some(&put.id), planner.config.encoding())?;
                out.removed = before;
                out.added += after;
            }
        }
        Ok(out)
    }

    /// Records a version from the staged files and clears the staging area.
    pub fn commit(&self, opts: &CommitOptions, progress: &dyn Progress) -> Result<CommitOutcome> {
        let staged = self.staged()?;
        if staged.is_empty() {
            return Err(StoreError::NothingStaged);
        }
        if opts.name.trim().is_empty() {
            return Err(StoreError::Invalid("a version needs a name (--name)".into()));
        }
        let mut parents = Vec::new();
        for r in &opts.parents {
            parents.push(self.resolve(r)?);
        }
        if opts.parents.is_empty() {
            if let Some(last) = self.ids_of_name(&opts.name)?.pop() {
                parents.push(last);
            }
        }
        parents.dedup();

        let mut record = VersionRecord {
            name: opts.name.clone(),
            parents,
            message: opts.message.clone(),
            author: opts.author.clone(),
            created_ms: opts.created_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
            network: None,
            tensors: Vec::new(),
            weights_file: None,
            weights_header: None,
            hyper: Vec::new(),
            series: Vec::new(),
            files: Vec::new(),
            extra: Vec::new(),
        };
        let mut written = (0usize, 0u64);
        let mut net: Option<(Net, FileEntry)> = None;
        let mut tensor_infos: Vec<TensorInfo> = Vec::new();

        for s in staged.iter().filter(|s| s.role != Role::Weights) {
            let abs = self.work_dir().join(&s.path);
            let entry = self.store_file(&abs, s, &mut written)?;
            match s.role {
                Role::Network => {
                    if net.is_some() {
                        return Err(StoreError::Invalid(format!(
                            "two networks staged ({} and {}); a version has one",
                            net.as_ref().map(|n| n.1.path.as_str()).unwrap_or(""),
                            s.path
                        )));
                    }
                    let text = read_text(&abs)?;
                    let parsed = parse_network(&text, &s.path)?;
                    net = Some((parsed, entry));
                    continue;
                }
                Role::Solver => {
                    let text = read_text(&abs)?;
                    push_hyper(&mut record.hyper, formats::read_solver(&text, &s.path)?);
                }
                Role::Config => {
                    let text = read_text(&abs)?;
                    push_hyper(&mut record.hyper, formats::read_toml_config(&text, &s.path)?);
                }
                Role::Log => {
                    let text = read_text(&abs)?;
                    let series = if s.path.ends_with(".jsonl") {
                        formats::read_jsonl_metrics(&text).map_err(|e| relabel(e, &abs))?
                    } else {
                        formats::read_caffe_log(&text)
                    };
                    push_series(&mut record.series, series);
                }
                Role::File | Role::Weights => {}
            }
            record.files.push(entry);
        }

        let weights: Vec<&StagedFile> = staged.iter().filter(|s| s.role == Role::Weights).collect();
        if let [only] = weights.as_slice() {
            let abs = self.work_dir().join(&only.path);
            if let Some(header) = safetensors_header(&abs)? {
                let put = self.objects().put_bytes(&header)?;
                if !put.existed {
                    written.0 += 1;
                    written.1 += put.stored;
                }
                record.weights_header = Some(put.id);
            }
        }
        let planner = DeltaPlanner::new(self, &record.parents)?;
        for s in weights {
            let abs = self.work_dir().join(&s.path);
            let infos = formats::open_weights(&abs)?.tensors().to_vec();
            let total: u64 = infos.iter().map(|t| t.byte_len()).sum();
            let mut seen: std::collections::HashSet<&str> = record.tensors.iter().map(|t| t.name.as_str()).collect();
            for info in &infos {
                if !seen.insert(info.name.as_str()) {
                    return Err(StoreError::Invalid(format!(
                        "tensor '{}' appears in two staged weights files",
                        info.name
                    )));
                }
            }
            progress.begin(&format!("storing {}", s.path), total);
            // Tensors are read, coded and stored in parallel (each task with its own reader of
            // the file, so memory stays one chunk and its base per task); the version lists
            // them in file order.
            let stored: Vec<StoredTensor> = infos
                .par_iter()
                .enumerate()
                .map_init(
                    || formats::open_weights(&abs),
                    |src, (i, info)| {
                        let src = src.as_mut().map_err(|e| StoreError::Invalid(e.to_string()))?;
                        self.store_tensor(&abs, &mut **src, i, info, &planner, progress)
                    },
                )
                .collect::<Result<_>>()?;
            for (info, t) in infos.iter().zip(stored) {
                written.0 += t.objects;
                written.1 = written.1.saturating_add(t.added).saturating_sub(t.removed);
                record.tensors.push(TensorEntry {
                    name: info.name.clone(),
                    layer: None,
                    blob: None,
                    dtype: info.dtype.as_str().to_string(),
                    shape: info.shape.iter().map(|&d| d as u64).collect(),
                    object: t.id,
                    bytes: t.len,
                });
                tensor_infos.push(info.clone());
            }
            progress.end();
            if record.weights_file.is_none() {
                let stem = Path::new(&s.path)
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| record.name.clone());
                record.weights_file = Some(format!("{stem}.safetensors"));
            }
        }

        let mut matching = None;
        if let Some((mut net, source)) = net {
            net.set_inferred_blobs();
            if !tensor_infos.is_empty() {
                let report = formats::match_tensors(&net, &tensor_infos);
                for m in &report.matched {
                    if let Some(t) = record.tensors.get_mut(m.tensor) {
                        t.layer = Some(m.layer.clone());
                        t.blob = Some(m.blob.clone());
                    }
                }
                attach_blobs(&mut net, &record.tensors);
                matching = Some(report);
            }
            let json = net.to_json();
            let dag = self.objects().put_bytes(json.as_bytes())?;
            if !dag.existed {
                written.0 += 1;
                written.1 += dag.stored;
            }
            record.network = Some(NetworkRef {
                dag: dag.id,
                name: net.name.clone(),
                layers: net.len() as u32,
                source: if source.role == "network-json" { None } else { Some(source) },
            });
        }
        record.hyper.sort_by(|a, b| a.key.cmp(&b.key));
        record.series.sort_by(|a, b| a.name.cmp(&b.name));
        record.files.sort_by(|a, b| a.path.cmp(&b.path));

        // Objects are durable (synced and renamed); the version becomes visible atomically now.
        sync_dir(self.objects().dir())?;
        let id = self.insert_version(&record)?;
        self.staging.clear()?;
        self.flush()?;
        tracing::info!(%id, name = %record.name, "committed");
        Ok(CommitOutcome { id, record, matching, objects_written: written.0, bytes_written: written.1 })
    }

    /// Inserts a record whose objects are already stored: the record, the name index, the log
    /// and the lineage, in one transaction. Returns its id.
    pub fn insert_version(&self, record: &VersionRecord) -> Result<String> {
        for p in &record.parents {
            if !self.contains(p)? {
                return Err(StoreError::UnknownRef(p.clone()));
            }
        }
        for obj in record.objects() {
            if !self.objects().contains(obj) {
                return Err(StoreError::MissingObject { id: obj.to_string() });
            }
        }
        let id = record.id();
        if self.contains(&id)? {
            return Ok(id);
        }
        let bytes = record.encode()?;
        let seq = self.db().generate_id()?;
        let mut name_key = record.name.as_bytes().to_vec();
        name_key.push(0);
        name_key.extend_from_slice(&seq.to_be_bytes());
        use sled::Transactional;
        (&self.versions, &self.names, &self.log, &self.children)
            .transaction(|(versions, names, log, children)| {
                versions.insert(id.as_bytes(), bytes.as_slice())?;
                names.insert(name_key.as_slice(), id.as_bytes())?;
                log.insert(&seq.to_be_bytes(), id.as_bytes())?;
                for p in &record.parents {
                    let mut k = p.as_bytes().to_vec();
                    k.push(0);
                    k.extend_from_slice(id.as_bytes());
                    children.insert(k, &[])?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Db(format!("commit transaction: {e:?}")))?;
        self.index_pending()?; // query indexes (repo.rs); rebuildable, so outside the transaction
        self.flush()?;
        Ok(id)
    }

    fn store_file(&self, abs: &Path, s: &StagedFile, written: &mut (usize, u64)) -> Result<FileEntry> {
        let mut f = fs::File::open(abs).map_err(|e| StoreError::io(abs, e))?;
        let put = self.objects().put_reader(&mut f)?;
        if !put.existed {
            written.0 += 1;
            written.1 += put.stored;
        }
        let role = if s.role == Role::Network && s.path.ends_with(".json") {
            "network-json".to_string()
        } else {
            s.role.as_str().to_string()
        };
        Ok(FileEntry { path: s.path.clone(), role, object: put.id, size: put.len })
    }
}

/// Chooses how each committed tensor is coded.
///
/// Reverse deltas (the default, `storage.reverse = true`): when the first parent is the tip of
/// a series (no other child yet) and its tensor of the same name, dtype and shape is stored
/// whole, the new tensor is stored whole and that parent tensor is then re-coded as a delta
/// against it, so the newest version reads in one step; this happens only while the chains
/// that end at the parent tensor leave room under `storage.max_chain`. Once they do not, the
/// parent stays a keyframe and the new tensor is a forward delta against it: the series goes
/// on forward until its chain is full, then a new keyframe starts the next reverse run. Each
/// keyframe thus sits in the middle of up to `2 * max_chain + 1` versions, as `gc --repack`
/// would place it. In every other case (a second child of a version, reverse deltas off) the
/// new tensor is a forward delta against the parent's tensor if that one's chain leaves room,
/// or a keyframe.
pub(crate) struct DeltaPlanner {
    pub(crate) config: StorageConfig,
    parents: Vec<Vec<TensorEntry>>,
    /// Whether reverse deltas may be planned: the parent has no child yet and they are on.
    reverse: bool,
    /// For reverse deltas: per object, the longest chain of links from an object of the
    /// lineage (the parent and its first-parent ancestors, up to `max_chain + 1` versions) that
    /// ends at it. Re-coding a whole object against a new one adds a link to every such chain,
    /// whichever tensor name it came through (tensors of equal content share objects).
    heights: std::collections::HashMap<String, usize>,
}

/// How one tensor is coded.
pub(crate) enum Plan {
    /// Stored against this base (or whole).
    Forward(Option<String>),
    /// Stored whole; then this parent object is re-coded against it.
    Reverse(String),
}

impl DeltaPlanner {
    pub(crate) fn new(repo: &Repository, parents: &[String]) -> Result<DeltaPlanner> {
        let config = StorageConfig::load(repo.dot_dir())?;
        let mut tensors = Vec::new();
        let mut lineage = Vec::new();
        if config.max_chain > 0 && config.delta != crate::codec::DeltaMode::Off {
            for p in parents {
                tensors.push(repo.get(p)?.tensors);
            }
            if let Some(first) = parents.first().filter(|_| config.reverse) {
                if repo.children_of(first)?.is_empty() {
                    let mut cur = Some(first.clone());
                    while let Some(id) = cur.take() {
                        if lineage.len() > config.max_chain {
                            break;
                        }
                        let r = repo.get(&id)?;
                        cur = r.parents.first().cloned();
                        lineage.push(r.tensors);
                    }
                }
            }
        }
        let heights = chain_heights(repo, &lineage, config.max_chain);
        Ok(DeltaPlanner { config, parents: tensors, reverse: !lineage.is_empty(), heights })
    }

    pub(crate) fn plan(&self, repo: &Repository, info: &TensorInfo) -> Plan {
        let dtype = info.dtype.as_str();
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let same = |t: &&TensorEntry| t.name == info.name && t.dtype == dtype && t.shape == shape;
        let Some(entry) = self.parents.iter().flatten().find(same) else { return Plan::Forward(None) };
        let objects = repo.objects();
        let Ok(base_info) = objects.info(&entry.object) else { return Plan::Forward(None) };
        if base_info.layout.is_none() {
            return Plan::Forward(None);
        }
        if base_info.base.is_none() && self.reverse {
            // The parent tensor is whole: how deep are the chains that end at it?
            let height = self.heights.get(&entry.object).copied().unwrap_or(0);
            if height < self.config.max_chain {
                return Plan::Reverse(entry.object.clone());
            }
            // The reverse run is full: the parent stays a keyframe and the series goes on as
            // forward deltas from it, so one keyframe serves max_chain versions on either side
            // (a new keyframe here would sit next to the old one and cost a whole tensor).
            return Plan::Forward(Some(entry.object.clone()));
        }
        match objects.chain_len(&entry.object) {
            Ok(depth) if depth < self.config.max_chain => Plan::Forward(Some(entry.object.clone())),
            Ok(_) => Plan::Forward(None),
            Err(e) => {
                tracing::warn!(object = %entry.object, error = %e, "not using a damaged delta chain as a base");
                Plan::Forward(None)
            }
        }
    }
}

/// For every object reachable along delta links from an object of `lineage` (at most
/// `max_chain + 1` links), the longest such chain ending at it. Each object's base is read once.
fn chain_heights(repo: &Repository, lineage: &[Vec<TensorEntry>], max_chain: usize) -> std::collections::HashMap<String, usize> {
    let objects = repo.objects();
    let mut base_of: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
    let mut heights = std::collections::HashMap::new();
    let starts: std::collections::BTreeSet<&str> = lineage.iter().flatten().map(|t| t.object.as_str()).collect();
    for start in starts {
        let mut cur = start.to_string();
        for links in 1..=max_chain + 1 {
            let base = base_of.entry(cur.clone()).or_insert_with(|| objects.base_of(&cur).ok().flatten()).clone();
            let Some(b) = base else { break };
            let h = heights.entry(b.clone()).or_insert(0);
            *h = (*h).max(links);
            cur = b;
        }
    }
    heights
}

/// The raw header (length prefix and JSON) of a safetensors file, or `None` for other formats.
fn safetensors_header(path: &Path) -> Result<Option<Vec<u8>>> {
    if formats::detect_weights_format(path)? != Some(formats::WeightsFormat::Safetensors) {
        return Ok(None);
    }
    let mut f = fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| StoreError::io(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(StoreError::format(path, Some(0), "safetensors header too large"));
    }
    let mut out = len.to_vec();
    f.take(n).read_to_end(&mut out).map_err(|e| StoreError::io(path, e))?;
    if out.len() as u64 != n + 8 {
        return Err(StoreError::format(path, Some(8), "truncated safetensors header"));
    }
    Ok(Some(out))
}

/// Reads a network from prototxt or our JSON, by extension.
pub fn parse_network(text: &str, file: &str) -> Result<Net> {
    if file.ends_with(".json") {
        Ok(Net::from_json(text)?)
    } else {
        Ok(Net::from_prototxt(text, file)?)
    }
}

/// Records tensor shapes on the nodes they were matched to, so the stored DAG carries `W`'s
/// structure even where shape inference could not tell.
fn attach_blobs(net: &mut Net, tensors: &[TensorEntry]) {
    let ids: Vec<_> = net.node_ids().to_vec();
    for id in ids {
        let Some(node) = net.node_mut(id) else { continue };
        for t in tensors.iter().filter(|t| t.layer.as_deref() == Some(node.name.as_str())) {
            let Some(blob) = &t.blob else { continue };
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            match node.blobs.iter_mut().find(|b| &b.name == blob) {
                Some(b) => b.shape = shape,
                None => node.blobs.push(dlv_graph::BlobSpec { name: blob.clone(), shape }),
            }
        }
        // Caffe blob order (weight before bias), whatever order the weights file used.
        let order = dlv_graph::learnable_blob_names(node);
        node.blobs.sort_by_key(|b| order.iter().position(|n| *n == b.name).unwrap_or(usize::MAX));
    }
}

fn push_hyper(out: &mut Vec<HyperEntry>, values: Vec<(String, HyperValue)>) {
    for (key, v) in values {
        let (text, num) = match v {
            HyperValue::Num(x) => (format!("{x}"), Some(x)),
            HyperValue::Int(i) => (i.to_string(), Some(i as f64)),
            HyperValue::Text(s) => (s, None),
            HyperValue::Bool(b) => (b.to_string(), None),
        };
        out.retain(|h| h.key != key);
        out.push(HyperEntry { key, text, num });
    }
}

fn push_series(out: &mut Vec<SeriesEntry>, series: Vec<Series>) {
    for s in series {
        let entry = match out.iter_mut().position(|e| e.name == s.name) {
            Some(i) => &mut out[i],
            None => {
                out.push(SeriesEntry { name: s.name.clone(), iters: vec![], values: vec![] });
                let last = out.len() - 1;
                &mut out[last]
            }
        };
        for (it, v) in s.points {
            entry.iters.push(it);
            entry.values.push(v);
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| StoreError::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        StoreError::format(path, Some(e.utf8_error().valid_up_to() as u64), "not valid UTF-8 text")
    })
}

fn relabel(e: StoreError, path: &Path) -> StoreError {
    match e {
        StoreError::Format { offset, msg, .. } => StoreError::Format { path: path.to_path_buf(), offset, msg },
        other => other,
    }
}

/// Decides what a file is, validating it on the way (errors name the file and position).
fn classify_file(abs: &Path, rel: &str) -> Result<Role> {
    let ext = abs
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let claims_weights = matches!(ext.as_str(), "safetensors" | "npz" | "pt" | "pth" | "caffemodel");
    if claims_weights || formats::is_weights_file(abs) {
        // Open it once now so a truncated or lying file is refused at `add`.
        formats::open_weights(abs)?;
        return Ok(Role::Weights);
    }
    match ext.as_str() {
        "prototxt" | "pbtxt" => {
            let text = read_text(abs)?;
            let msg = dlv_graph::textformat::parse(&text, rel)?;
            let has = |k: &str| msg.get(k).is_some();
            if has("layer") || has("layers") {
                Net::from_prototxt(&text, rel)?;
                Ok(Role::Network)
            } else if has("base_lr") || has("lr_policy") || has("max_iter") || has("net") || has("train_net") {
                formats::read_solver(&text, rel)?;
                Ok(Role::Solver)
            } else {
                Ok(Role::File)
            }
        }
        "json" => {
            let text = read_text(abs)?;
            if Net::from_json(&text).is_ok() {
                Ok(Role::Network)
            } else {
                Ok(Role::File)
            }
        }
        "toml" => {
            let text = read_text(abs)?;
            formats::read_toml_config(&text, rel)?;
            Ok(Role::Config)
        }
        "jsonl" => {
            let text = read_text(abs)?;
            formats::read_jsonl_metrics(&text).map_err(|e| relabel(e, abs))?;
            Ok(Role::Log)
        }
        "log" | "txt" => {
            let mut head = String::new();
            let mut f = fs::File::open(abs).map_err(|e| StoreError::io(abs, e))?;
            let _ = f.by_ref().take(64 * 1024).read_to_string(&mut head);
            if formats::is_caffe_log(&head) {
                Ok(Role::Log)
            } else {
                Ok(Role::File)
            }
        }
        _ => Ok(Role::File),
    }
}

struct ProgressWriter<'a> {
    inner: &'a mut dyn io::Write,
    progress: &'a dyn Progress,
}

impl io::Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
