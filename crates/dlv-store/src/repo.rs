//! Opening a repository: `.dlv/` layout, config, the writer lock, sled trees, refs and listing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::objects::ObjectStore;
use crate::record::VersionRecord;
use crate::{Result, StoreError};

/// Name of the repository folder inside a working folder.
pub const DOT_DIR: &str = ".dlv";
/// Layout version of `.dlv/` (config, trees, object files).
pub const REPO_FORMAT: u32 = 1;

const T_VERSIONS: &str = "versions";
const T_NAMES: &str = "names";
const T_LOG: &str = "log";
const T_CHILDREN: &str = "children";
const T_STAGING: &str = "staging";
const T_SAVED: &str = "saved_queries";
/// Query indexes (see `Repository::index_pending`): creation time, numeric metadata, metadata
/// keys, and the log position up to which they are complete.
const T_IDX_CREATED: &str = "idx_created";
const T_IDX_NUM: &str = "idx_num";
const T_IDX_KEYS: &str = "idx_keys";
const T_IDX_META: &str = "idx_meta";
const T_IDX_SUMMARY: &str = "idx_summary";
const IDX_WATERMARK: &[u8] = b"watermark";
/// `idx_meta` key: layout of the indexes (absent before the summary tree existed). A commit
/// into a repository whose indexes are older re-indexes every version once.
const IDX_LAYOUT: &[u8] = b"layout";
const IDX_LAYOUT_VERSION: u8 = 2;
/// Encoding version of a summary value.
const SUMMARY_FORMAT: u8 = 1;

/// An open repository. Opened for writing, it holds the writer lock until dropped.
pub struct Repository {
    work: PathBuf,
    dot: PathBuf,
    db: sled::Db,
    pub(crate) versions: sled::Tree,
    /// `name \0 seq(u64 BE)` -> id: versions of a name in commit order.
    pub(crate) names: sled::Tree,
    /// `seq(u64 BE)` -> id: every version in commit order.
    pub(crate) log: sled::Tree,
    /// `parent \0 child` -> ().
    pub(crate) children: sled::Tree,
    pub(crate) staging: sled::Tree,
    pub(crate) saved: sled::Tree,
    /// `created_ms (sortable u64 BE) ++ id` -> ().
    idx_created: sled::Tree,
    /// `key \0 value (sortable f64 BE) ++ id` -> (): numeric hyper-parameters, extra metadata
    /// and the last value of each metric series.
    idx_num: sled::Tree,
    /// metadata key -> (): every hyper, extra and series key of an indexed version.
    idx_keys: sled::Tree,
    /// `watermark` -> log seq (u64 BE) up to which every version is indexed; `layout` -> u8.
    idx_meta: sled::Tree,
    /// id -> [`VersionSummary`] (compact encoding, see `VersionSummary::encode`).
    idx_summary: sled::Tree,
    objects: ObjectStore,
    _lock: Option<WriterLock>,
}

/// A version with its id, as listed.
#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub record: VersionRecord,
}

/// Filters of `dlv list`.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Exact name, or a glob with `*`/`?`, or a substring.
    pub model_name: Option<String>,
    /// Substring of the message.
    pub commit_msg: Option<String>,
    /// Keep the last N versions (in commit order).
    pub last: Option<usize>,
}

impl Repository {
    /// Creates `.dlv/` in `work` (which must exist).
    pub fn init(work: &Path) -> Result<Repository> {
        let work = fs::canonicalize(work).map_err(|e| StoreError::io(work, e))?;
        let dot = work.join(DOT_DIR);
        if dot.exists() {
            return Err(StoreError::AlreadyExists(dot));
        }
        fs::create_dir_all(dot.join("objects")).map_err(|e| StoreError::io(&dot, e))?;
        let config = format!("# dlv repository configuration\nformat = {REPO_FORMAT}\n");
        fs::write(dot.join("config.toml"), config).map_err(|e| StoreError::io(dot.join("config.toml"), e))?;
        Repository::open_at(work, dot, true)
    }

    /// Finds the nearest `.dlv` from `start` upward.
    pub fn discover(start: &Path) -> Result<PathBuf> {
        let start = fs::canonicalize(start).map_err(|e| StoreError::io(start, e))?;
        let mut cur: Option<&Path> = Some(&start);
        while let Some(dir) = cur {
            if dir.join(DOT_DIR).is_dir() {
                return Ok(dir.to_path_buf());
            }
            cur = dir.parent();
        }
        Err(StoreError::NotARepository(start))
    }

    /// Opens for reading (no lock; fails cleanly while a writer holds the database).
    pub fn open(start: &Path) -> Result<Repository> {
        let work = Repository::discover(start)?;
        let dot = work.join(DOT_DIR);
        Repository::open_at(work, dot, false)
    }

    /// Opens for writing: takes the writer lock first, with an error naming the holder.
    pub fn open_writer(start: &Path) -> Result<Repository> {
        let work = Repository::discover(start)?;
        let dot = work.join(DOT_DIR);
        Repository::open_at(work, dot, true)
    }

    fn open_at(work: PathBuf, dot: PathBuf, write: bool) -> Result<Repository> {
        check_config(&dot)?;
        let lock = if write { Some(WriterLock::acquire(&dot)?) } else { None };
        let meta = dot.join("meta");
        let db = sled::Config::new().path(&meta).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                StoreError::Locked { holder: WriterLock::holder(&dot) }
            }
            other => StoreError::Db(format!("{}: {other}", meta.display())),
        })?;
        let tree = |name: &str| db.open_tree(name).map_err(StoreError::from);
        Ok(Repository {
            versions: tree(T_VERSIONS)?,
            names: tree(T_NAMES)?,
            log: tree(T_LOG)?,
            children: tree(T_CHILDREN)?,
            staging: tree(T_STAGING)?,
            saved: tree(T_SAVED)?,
            idx_created: tree(T_IDX_CREATED)?,
            idx_num: tree(T_IDX_NUM)?,
            idx_keys: tree(T_IDX_KEYS)?,
            idx_meta: tree(T_IDX_META)?,
            idx_summary: tree(T_IDX_SUMMARY)?,
            objects: ObjectStore::new(dot.join("objects")),
            db,
            work,
            dot,
            _lock: lock,
        })
    }

    /// The working folder (parent of `.dlv`).
    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    pub fn dot_dir(&self) -> &Path {
        &self.dot
    }

    pub fn objects(&self) -> &ObjectStore {
        &self.objects
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Durably writes pending metadata.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Reads and validates one version record.
    pub fn get(&self, id: &str) -> Result<VersionRecord> {
        match self.versions.get(id.as_bytes())? {
            Some(bytes) => VersionRecord::decode(&format!("version {id}"), &bytes),
            None => Err(StoreError::UnknownRef(id.to_string())),
        }
    }

    pub fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.versions.contains_key(id.as_bytes())?)
    }

    /// Number of versions.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Ids of every version in commit order.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for item in self.log.iter() {
            let (_, id) = item?;
            v.push(String::from_utf8_lossy(&id).to_string());
        }
        Ok(v)
    }

    /// Ids of the versions of `name`, in commit order.
    pub fn ids_of_name(&self, name: &str) -> Result<Vec<String>> {
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let mut v = Vec::new();
        for item in self.names.scan_prefix(&prefix) {
            let (_, id) = item?;
            v.push(String::from_utf8_lossy(&id).to_string());
        }
        Ok(v)
    }

    /// Distinct model names, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for item in self.names.iter() {
            let (k, _) = item?;
            let name = k.split(|&b| b == 0).next().unwrap_or(&[]);
            let name = String::from_utf8_lossy(name).to_string();
            if out.last() != Some(&name) {
                out.push(name);
            }
        }
        Ok(out)
    }

    /// Children of a version (versions that name it as a parent).
    pub fn children_of(&self, id: &str) -> Result<Vec<String>> {
        let mut prefix = id.as_bytes().to_vec();
        prefix.push(0);
        let mut v = Vec::new();
        for item in self.children.scan_prefix(&prefix) {
            let (k, _) = item?;
            v.push(String::from_utf8_lossy(&k[prefix.len()..]).to_string());
        }
        Ok(v)
    }

    /// A version and all its ancestors, parents before children. Fails once more than `max`
    /// versions are collected (a bound for callers serving untrusted requests).
    pub fn lineage(&self, head: &str, max: usize) -> Result<Vec<(String, VersionRecord)>> {
        let mut out = Vec::new();
        let mut done = std::collections::HashSet::new();
        // (id, record once its parents have been pushed)
        let mut stack: Vec<(String, Option<VersionRecord>)> = vec![(head.to_string(), None)];
        while let Some((id, rec)) = stack.pop() {
            if done.contains(&id) {
                continue;
            }
            match rec {
                Some(r) => {
                    done.insert(id.clone());
                    out.push((id, r));
                    if out.len() > max {
                        return Err(StoreError::Invalid(format!(
                            "lineage of {} has more than {max} versions",
                            short(head)
                        )));
                    }
                }
                None => {
                    let r = self.get(&id)?;
                    let parents = r.parents.clone();
                    stack.push((id, Some(r)));
                    stack.extend(parents.into_iter().rev().filter(|p| !done.contains(p)).map(|p| (p, None)));
                }
            }
        }
        Ok(out)
    }

    /// Resolves `NAME`, `NAME~N`, `NAME@PREFIX` or an id prefix (at least 4 hex digits).
    pub fn resolve(&self, rev: &str) -> Result<String> {
        let rev = rev.trim();
        if rev.is_empty() {
            return Err(StoreError::UnknownRef(rev.to_string()));
        }
        if let Some((base, n)) = rev.rsplit_once('~') {
            if let Ok(n) = n.parse::<usize>() {
                let mut id = self.resolve(base)?;
                for step in 0..n {
                    let rec = self.get(&id)?;
                    id = rec.parents.first().cloned().ok_or_else(|| {
                        StoreError::UnknownRef(format!("{rev} (version {} has no parent at step {})", short(&id), step + 1))
                    })?;
                }
                return Ok(id);
            }
        }
        if let Some((name, prefix)) = rev.split_once('@') {
            let ids = self.ids_of_name(name)?;
            let hits: Vec<&String> = ids.iter().filter(|id| id.starts_with(prefix)).collect();
            return match hits.as_slice() {
                [one] => Ok((*one).clone()),
                [] => Err(StoreError::UnknownRef(rev.to_string())),
                many => Err(ambiguous(prefix, many.iter().map(|s| s.as_str()))),
            };
        }
        if let Some(last) = self.ids_of_name(rev)?.pop() {
            return Ok(last);
        }
        if rev.len() >= 4 && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            let prefix = rev.to_ascii_lowercase();
            let mut hits = Vec::new();
            for item in self.versions.scan_prefix(prefix.as_bytes()) {
                let (k, _) = item?;
                hits.push(String::from_utf8_lossy(&k).to_string());
                if hits.len() > 5 {
                    break;
                }
            }
            return match hits.len() {
                1 => Ok(hits.remove(0)),
                0 => Err(StoreError::UnknownRef(rev.to_string())),
                _ => Err(ambiguous(&prefix, hits.iter().map(|s| s.as_str()))),
            };
        }
        Err(StoreError::UnknownRef(rev.to_string()))
    }

    /// Versions in commit order, filtered.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Version>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let record = self.get(&id)?;
            if let Some(pat) = &filter.model_name {
                if !name_matches(pat, &record.name) {
                    continue;
                }
            }
            if let Some(text) = &filter.commit_msg {
                if !record.message.contains(text.as_str()) {
                    continue;
                }
            }
            out.push(Version { id, record });
        }
        if let Some(n) = filter.last {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        Ok(out)
    }

    /// Saves a named query text (DQL `from "NAME"`).
    pub fn save_query(&self, name: &str, text: &str) -> Result<()> {
        self.saved.insert(name.as_bytes(), text.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn saved_query(&self, name: &str) -> Result<Option<String>> {
        Ok(self.saved.get(name.as_bytes())?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    pub fn saved_queries(&self) -> Result<Vec<(String, String)>> {
        let mut v = Vec::new();
        for item in self.saved.iter() {
            let (k, val) = item?;
            v.push((String::from_utf8_lossy(&k).to_string(), String::from_utf8_lossy(&val).to_string()));
        }
        Ok(v)
    }
}

/// Query indexes. They let a query planner (DQL) find candidate versions by creation time,
/// numeric metadata or name prefix without reading every record.
///
/// Maintenance: `insert_version` calls [`Repository::index_pending`] after its transaction,
/// which indexes every logged version past the watermark (normally just the new one). A crash
/// between the two leaves versions past the watermark; [`Repository::unindexed`] lists them
/// and a planner treats them as candidates of every index lookup, and the next commit catches
/// up. Repositories made before the indexes existed have no watermark: everything is
/// unindexed until [`Repository::rebuild_index`] (`dlv query --reindex`) or the next commit.
impl Repository {
    /// Indexes every version logged after the watermark; returns how many.
    pub fn index_pending(&self) -> Result<usize> {
        // Indexes of an older layout lack trees (the summary): index everything again once
        // (every insert is idempotent).
        let current = self.idx_meta.get(IDX_LAYOUT)?.is_some_and(|v| v.as_ref() == [IDX_LAYOUT_VERSION]);
        let start = match self.index_watermark()? {
            Some(w) if current => w.saturating_add(1),
            _ => 0,
        };
        if !current {
            self.idx_meta.insert(IDX_LAYOUT, &[IDX_LAYOUT_VERSION])?;
        }
        let mut n = 0;
        for item in self.log.range(start.to_be_bytes()..) {
            let (seq, id) = item?;
            let id = String::from_utf8_lossy(&id).to_string();
            let record = self.get(&id)?;
            self.index_one(&id, &record)?;
            self.idx_meta.insert(IDX_WATERMARK, seq.as_ref())?;
            n += 1;
        }
        Ok(n)
    }

    fn index_one(&self, id: &str, record: &VersionRecord) -> Result<()> {
        let mut created = sortable_i64(record.created_ms).to_vec();
        created.extend_from_slice(id.as_bytes());
        self.idx_created.insert(created, &[])?;
        let series_last = record.series.iter().filter_map(|s| Some((s.name.as_str(), *s.values.last()?)));
        let numbers = record
            .hyper
            .iter()
            .chain(&record.extra)
            .filter_map(|h| Some((h.key.as_str(), h.num?)))
            .chain(series_last);
        for (key, value) in numbers {
            if value.is_nan() {
                continue;
            }
            let mut k = num_prefix(key);
            k.extend_from_slice(&sortable_f64(value));
            k.extend_from_slice(id.as_bytes());
            self.idx_num.insert(k, &[])?;
        }
        let keys = record.hyper.iter().chain(&record.extra).map(|h| h.key.as_str()).chain(record.series.iter().map(|s| s.name.as_str()));
        for key in keys {
            self.idx_keys.insert(key.as_bytes(), &[])?;
        }
        self.idx_summary.insert(id.as_bytes(), VersionSummary::of(record).encode())?;
        Ok(())
    }

    /// The summary of a version: from the summary index when it has it, else from the full
    /// record (a version past the watermark, or a summary that fails to decode), so the
    /// answer is always right, only slower off the index.
    pub fn summary(&self, id: &str) -> Result<VersionSummary> {
        if let Some(bytes) = self.idx_summary.get(id.as_bytes())? {
            if let Some(s) = VersionSummary::decode(&bytes) {
                return Ok(s);
            }
            tracing::warn!(version = %short(id), "summary index entry does not decode; reading the record");
        }
        Ok(VersionSummary::of(&self.get(id)?))
    }

    /// Summaries of `ids`, in that order (see [`Repository::summary`]).
    pub fn summaries(&self, ids: &[String]) -> Result<Vec<VersionSummary>> {
        ids.iter().map(|id| self.summary(id)).collect()
    }

    /// The network stored in DAG object `dag` (a [`crate::NetworkRef::dag`]), without the record
    /// that names it.
    pub fn network_object(&self, dag: &str) -> Result<dlv_graph::Net> {
        let bytes = self.objects().get_bytes(dag)?;
        let text = String::from_utf8(bytes).map_err(|_| StoreError::CorruptObject {
            id: dag.to_string(),
            msg: "network object is not UTF-8".into(),
        })?;
        Ok(dlv_graph::Net::from_json(&text)?)
    }

    /// Log position up to which every version is indexed; `None` before the first indexing.
    pub fn index_watermark(&self) -> Result<Option<u64>> {
        Ok(self.idx_meta.get(IDX_WATERMARK)?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes))
    }

    /// Versions that the indexes do not cover yet (logged after the watermark), in commit order.
    pub fn unindexed(&self) -> Result<Vec<String>> {
        let start = self.index_watermark()?.map_or(0, |w| w.saturating_add(1));
        let mut v = Vec::new();
        for item in self.log.range(start.to_be_bytes()..) {
            let (_, id) = item?;
            v.push(String::from_utf8_lossy(&id).to_string());
        }
        Ok(v)
    }

    /// Drops and rebuilds the query indexes from the records; returns how many versions were
    /// indexed.
    pub fn rebuild_index(&self) -> Result<usize> {
        self.clear_index()?;
        let n = self.index_pending()?;
        self.flush()?;
        Ok(n)
    }

    /// Drops the query indexes, leaving the repository as one made before they existed (every
    /// version unindexed, still found by queries through [`Repository::unindexed`]).
    pub fn clear_index(&self) -> Result<()> {
        self.idx_created.clear()?;
        self.idx_num.clear()?;
        self.idx_keys.clear()?;
        self.idx_summary.clear()?;
        self.idx_meta.clear()?;
        self.flush()
    }

    /// Indexed versions created within the bounds (milliseconds since the epoch), oldest first.
    pub fn ids_created(&self, lo: std::ops::Bound<i64>, hi: std::ops::Bound<i64>) -> Result<Vec<String>> {
        use std::ops::Bound;
        let start = match lo {
            Bound::Included(t) => sortable_i64(t),
            Bound::Excluded(t) if t == i64::MAX => return Ok(Vec::new()),
            Bound::Excluded(t) => sortable_i64(t + 1),
            Bound::Unbounded => [0; 8],
        };
        let mut out = Vec::new();
        for item in self.idx_created.range(start.to_vec()..) {
            let (k, _) = item?;
            let Some((t, id)) = split_key(&k) else { continue };
            let t = (u64::from_be_bytes(t) ^ (1 << 63)) as i64;
            let inside = match hi {
                Bound::Included(h) => t <= h,
                Bound::Excluded(h) => t < h,
                Bound::Unbounded => true,
            };
            if !inside {
                break;
            }
            out.push(id);
        }
        Ok(out)
    }

    /// Indexed versions whose numeric metadata `key` (hyper-parameter, extra entry, or last
    /// value of the series of that name) lies within the bounds.
    pub fn ids_by_number(&self, key: &str, lo: std::ops::Bound<f64>, hi: std::ops::Bound<f64>) -> Result<Vec<String>> {
        use std::ops::Bound;
        let prefix = num_prefix(key);
        let mut start = prefix.clone();
        match lo {
            Bound::Included(v) | Bound::Excluded(v) if !v.is_nan() => start.extend_from_slice(&sortable_f64(v)),
            _ => {}
        }
        let mut out = Vec::new();
        for item in self.idx_num.range(start..) {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(prefix.as_slice()) else { break };
            let Some((v, id)) = split_key(rest) else { continue };
            let v = unsortable_f64(v);
            let above = match lo {
                Bound::Included(l) => v >= l,
                Bound::Excluded(l) => v > l,
                Bound::Unbounded => true,
            };
            let below = match hi {
                Bound::Included(h) => v <= h,
                Bound::Excluded(h) => v < h,
                Bound::Unbounded => true,
            };
            if !below {
                break;
            }
            if above {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Versions whose name starts with `prefix`, in commit order per name.
    pub fn ids_by_name_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for item in self.names.scan_prefix(prefix.as_bytes()) {
            let (_, id) = item?;
            v.push(String::from_utf8_lossy(&id).to_string());
        }
        Ok(v)
    }

    /// Every metadata key (hyper-parameter, extra entry, series) of an indexed version, sorted.
    pub fn metadata_keys(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for item in self.idx_keys.iter() {
            let (k, _) = item?;
            v.push(String::from_utf8_lossy(&k).to_string());
        }
        Ok(v)
    }
}

/// What a query planner needs to know about a version without decoding its record (whose
/// tensor list makes it large): kept in the `idx_summary` tree, a few dozen bytes per version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSummary {
    pub name: String,
    pub created_ms: i64,
    pub message: String,
    pub author: String,
    /// DAG object of the network ([`crate::NetworkRef::dag`]), if the version has one.
    pub dag: Option<String>,
    /// Layer count of that network ([`crate::NetworkRef::layers`]).
    pub layers: Option<u32>,
    /// Number of tensor entries.
    pub tensors: u32,
    /// Learnable values ([`VersionRecord::param_count`]).
    pub parameters: u64,
}

impl VersionSummary {
    pub fn of(r: &VersionRecord) -> VersionSummary {
        VersionSummary {
            name: r.name.clone(),
            created_ms: r.created_ms,
            message: r.message.clone(),
            author: r.author.clone(),
            dag: r.network.as_ref().map(|n| n.dag.clone()),
            layers: r.network.as_ref().map(|n| n.layers),
            tensors: u32::try_from(r.tensors.len()).unwrap_or(u32::MAX),
            parameters: r.param_count(),
        }
    }

    /// `format u8, has_net u8, created i64 LE, tensors u32 LE, parameters u64 LE, layers u32 LE`,
    /// then `name`, `message`, `author` and (with a network) `dag`, each as `len u32 LE ++ UTF-8`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + 16 + self.name.len() + self.message.len() + self.author.len() + 64);
        out.push(SUMMARY_FORMAT);
        out.push(u8::from(self.dag.is_some()));
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.tensors.to_le_bytes());
        out.extend_from_slice(&self.parameters.to_le_bytes());
        out.extend_from_slice(&self.layers.unwrap_or(0).to_le_bytes());
        let strings = [Some(&self.name), Some(&self.message), Some(&self.author), self.dag.as_ref()];
        for s in strings.into_iter().flatten() {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Decodes [`VersionSummary::encode`]'s bytes; `None` for anything else (wrong format,
    /// truncated, trailing bytes, bad UTF-8). Never panics.
    pub fn decode(b: &[u8]) -> Option<VersionSummary> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Some(head)
        }
        fn string(b: &mut &[u8]) -> Option<String> {
            let len = u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize;
            String::from_utf8(take(b, len)?.to_vec()).ok()
        }
        let mut b = b;
        let head = take(&mut b, 2)?;
        if head[0] != SUMMARY_FORMAT || head[1] > 1 {
            return None;
        }
        let has_net = head[1] == 1;
        let created_ms = i64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let tensors = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let parameters = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
        let layers = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let name = string(&mut b)?;
        let message = string(&mut b)?;
        let author = string(&mut b)?;
        let dag = if has_net { Some(string(&mut b)?) } else { None };
        if !b.is_empty() {
            return None;
        }
        Some(VersionSummary { name, created_ms, message, author, layers: dag.as_ref().map(|_| layers), dag, tensors, parameters })
    }
}

fn sortable_i64(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// Big-endian bytes that sort as the floats do (NaN excluded by the callers).
fn sortable_f64(v: f64) -> [u8; 8] {
    let v = if v == 0.0 { 0.0 } else { v };
    let bits = v.to_bits();
    let bits = if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) };
    bits.to_be_bytes()
}

fn unsortable_f64(b: [u8; 8]) -> f64 {
    let bits = u64::from_be_bytes(b);
    f64::from_bits(if bits >> 63 == 1 { bits ^ (1 << 63) } else { !bits })
}

fn num_prefix(key: &str) -> Vec<u8> {
    let mut k = key.as_bytes().to_vec();
    k.push(0);
    k
}

/// `8 bytes ++ id` -> (the 8 bytes, the id).
fn split_key(k: &[u8]) -> Option<([u8; 8], String)> {
    let head: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some((head, String::from_utf8_lossy(&k[8..]).to_string()))
}

/// Abbreviated id, as shown to users.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}

fn ambiguous<'a>(prefix: &str, ids: impl Iterator<Item = &'a str>) -> StoreError {
    StoreError::AmbiguousRef {
        prefix: prefix.to_string(),
        candidates: ids.map(short).collect::<Vec<_>>().join(", "),
    }
}

/// `pattern` matches `name`: exactly, as a glob when it has `*`/`?`, or as a substring.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), name.as_bytes())
    } else {
        name.contains(pattern)
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

fn check_config(dot: &Path) -> Result<()> {
    let path = dot.join("config.toml");
    let text = fs::read_to_string(&path).map_err(|e| StoreError::io(&path, e))?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| StoreError::CorruptMeta {
        what: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let format = value.get("format").and_then(|v| v.as_integer()).unwrap_or(1);
    if format < 1 || format > REPO_FORMAT as i64 {
        return Err(StoreError::FormatVersion { found: format.max(0) as u32, supported: REPO_FORMAT });
    }
    Ok(())
}

/// The writer lock: an exclusive OS lock on `.dlv/lock`, whose content names the holder.
struct WriterLock {
    _file: File,
}

impl WriterLock {
    fn acquire(dot: &Path) -> Result<WriterLock> {
        let path = dot.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { holder: WriterLock::holder(dot) });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
        }
        let args: Vec<String> = std::env::args().take(3).collect();
        let holder = format!(
            "pid {} (`{}`) since {}",
            std::process::id(),
            args.join(" "),
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
        );
        file.set_len(0).map_err(|e| StoreError::io(&path, e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(&path, e))?;
        file.write_all(holder.as_bytes()).map_err(|e| StoreError::io(&path, e))?;
        Ok(WriterLock { _file: file })
    }

    fn holder(dot: &Path) -> String {
        let mut s = String::new();
        let _ = File::open(dot.join("lock")).and_then(|mut f| f.read_to_string(&mut s));
        if s.trim().is_empty() {
            "another dlv process".to_string()
        } else {
            s.trim().to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_floats_sort_as_floats() {
        let vals = [-1e300, -2.5, -0.0, 0.0, 1e-9, 0.5, 3.0, 1e300];
        for w in vals.windows(2) {
            assert!(sortable_f64(w[0]) <= sortable_f64(w[1]), "{w:?}");
            assert_eq!(unsortable_f64(sortable_f64(w[1])), w[1]);
        }
        assert!(sortable_i64(-5) < sortable_i64(3));
    }

    #[test]
    fn summaries_roundtrip_and_reject_garbage() {
        let mut s = VersionSummary {
            name: "alexnet_v1".into(),
            created_ms: -5,
            message: "fine-tuned ✓".into(),
            author: "me".into(),
            dag: Some("ab".repeat(32)),
            layers: Some(24),
            tensors: 16,
            parameters: 61_000_000,
        };
        for _ in 0..2 {
            let bytes = s.encode();
            assert_eq!(VersionSummary::decode(&bytes), Some(s.clone()));
            for cut in 0..bytes.len() {
                assert_eq!(VersionSummary::decode(&bytes[..cut]), None, "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(VersionSummary::decode(&longer), None);
            s.dag = None;
            s.layers = None;
        }
    }

    #[test]
    fn globbing() {
        assert!(name_matches("alexnet*", "alexnet-avgv1"));
        assert!(name_matches("a?ex*", "alexnet"));
        assert!(!name_matches("vgg*", "alexnet"));
        assert!(name_matches("net", "alexnet"));
        assert!(name_matches("*v1", "alexnet-avgv1"));
        assert!(!name_matches("*v2", "alexnet-avgv1"));
    }
}
