//! The hub's catalogue: which models exist (`owner/name`), who owns them, whether they are
//! private, and which versions (of the shared dlv-store repository) each one lists.
//!
//! Persisted in a sled database of its own (`DATA/catalog`, tree `models`: `owner/name` ->
//! JSON [`ModelEntry`]); held in memory as [`ModelView`]s with the figures of each model's
//! latest version precomputed, so that search and listing never read records.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use dlv_store::{Repository, VersionRecord};
use serde::{Deserialize, Serialize};

use crate::error::{HubError, Result};

/// A model as stored in the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    pub owner: String,
    pub name: String,
    pub private: bool,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Version ids in publish order; the last is the model's `main`.
    pub versions: Vec<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl ModelEntry {
    pub fn key(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    pub fn latest(&self) -> Option<&str> {
        self.versions.last().map(String::as_str)
    }
}

/// Figures of one version that search and listing use.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub id: String,
    pub message: String,
    pub author: String,
    pub created_ms: i64,
    pub params: u64,
    pub weight_bytes: u64,
    pub layers: u32,
    pub network: String,
    /// Numeric metadata: hyper-parameters, extra entries, last value of each series.
    pub numbers: Vec<(String, f64)>,
}

impl Summary {
    pub fn of(id: &str, r: &VersionRecord) -> Summary {
        let mut numbers: Vec<(String, f64)> = Vec::new();
        for h in r.hyper.iter().chain(&r.extra) {
            if let Some(n) = h.num {
                numbers.push((h.key.clone(), n));
            }
        }
        for s in &r.series {
            if let Some(v) = s.values.last() {
                numbers.push((s.name.clone(), *v));
            }
        }
        Summary {
            id: id.to_string(),
            message: r.message.clone(),
            author: r.author.clone(),
            created_ms: r.created_ms,
            params: r.param_count(),
            weight_bytes: r.weight_bytes(),
            layers: r.network.as_ref().map_or(0, |n| n.layers),
            network: r
                .network
                .as_ref()
                .map(|n| n.name.clone())
                .unwrap_or_default(),
            numbers,
        }
    }

    /// A numeric figure by key: built-ins, then exact metadata key, then `test/KEY`, `train/KEY`
    /// (as DQL resolves `m.accuracy`).
    pub fn number(&self, key: &str) -> Option<f64> {
        match key {
            "params" | "parameters" => return Some(self.params as f64),
            "layers" => return Some(self.layers as f64),
            "bytes" | "weight_bytes" | "size" => return Some(self.weight_bytes as f64),
            "created" | "created_ms" => return Some(self.created_ms as f64),
            _ => {}
        }
        let find = |k: &str| self.numbers.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
        find(key)
            .or_else(|| find(&format!("test/{key}")))
            .or_else(|| find(&format!("train/{key}")))
    }
}

/// A catalogue entry with its latest version's summary and the lowercase text searched.
#[derive(Debug, Clone)]
pub struct ModelView {
    pub entry: ModelEntry,
    pub latest: Option<Summary>,
    pub haystack: String,
}

impl ModelView {
    fn new(entry: ModelEntry, latest: Option<Summary>) -> ModelView {
        let mut hay = format!(
            "{}/{} {} {}",
            entry.owner,
            entry.name,
            entry.description,
            entry.tags.join(" ")
        );
        if let Some(l) = &latest {
            hay.push(' ');
            hay.push_str(&l.message);
            hay.push(' ');
            hay.push_str(&l.network);
        }
        ModelView {
            haystack: hay.to_lowercase(),
            entry,
            latest,
        }
    }

    pub fn key(&self) -> String {
        self.entry.key()
    }

    pub fn visible_to(&self, user: Option<&str>) -> bool {
        !self.entry.private || user == Some(self.entry.owner.as_str())
    }
}

/// What a publish asks of one model.
pub struct Registration<'a> {
    pub owner: &'a str,
    pub id: &'a str,
    pub record: &'a VersionRecord,
    /// `Some` changes (or sets) the visibility; new models default to public.
    pub private: Option<bool>,
    pub description: Option<&'a str>,
    pub tags: Option<&'a [String]>,
}

pub struct Catalog {
    _db: sled::Db,
    models: sled::Tree,
    index: RwLock<BTreeMap<String, Arc<ModelView>>>,
    write: Mutex<()>,
}

impl Catalog {
    pub fn open(dir: &Path, repo: &Repository) -> Result<Catalog> {
        let db = sled::Config::new().path(dir).open()?;
        let models = db.open_tree("models")?;
        let mut index = BTreeMap::new();
        for item in models.iter() {
            let (k, v) = item?;
            let entry: ModelEntry = serde_json::from_slice(&v).map_err(|e| {
                HubError::Db(format!(
                    "model {}: unreadable entry: {e}",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            let latest = match entry.latest() {
                Some(id) => Some(Summary::of(id, &repo.get(id)?)),
                None => None,
            };
            index.insert(entry.key(), Arc::new(ModelView::new(entry, latest)));
        }
        Ok(Catalog {
            _db: db,
            models,
            index: RwLock::new(index),
            write: Mutex::new(()),
        })
    }

    pub fn get(&self, key: &str) -> Option<Arc<ModelView>> {
        self.index.read().ok()?.get(key).cloned()
    }

    /// The model if `user` may see it; a private model of someone else is "not found".
    pub fn visible(&self, owner: &str, name: &str, user: Option<&str>) -> Result<Arc<ModelView>> {
        let key = format!("{owner}/{name}");
        match self.get(&key) {
            Some(m) if m.visible_to(user) => Ok(m),
            _ => Err(HubError::not_found(format!("model {key}"))),
        }
    }

    /// Every model `user` may see, in key order.
    pub fn list_visible(&self, user: Option<&str>) -> Vec<Arc<ModelView>> {
        match self.index.read() {
            Ok(idx) => idx
                .values()
                .filter(|m| m.visible_to(user))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    /// Adds a version to `owner/<record name>` (creating the model), durably.
    pub fn register(&self, reg: &Registration<'_>) -> Result<Arc<ModelView>> {
        let _guard = self
            .write
            .lock()
            .map_err(|_| HubError::Internal("catalogue lock poisoned".into()))?;
        let key = format!("{}/{}", reg.owner, reg.record.name);
        let now = chrono::Utc::now().timestamp_millis();
        let mut entry = match self.models.get(key.as_bytes())? {
            Some(v) => serde_json::from_slice::<ModelEntry>(&v)
                .map_err(|e| HubError::Db(format!("model {key}: unreadable entry: {e}")))?,
            None => ModelEntry {
                owner: reg.owner.to_string(),
                name: reg.record.name.clone(),
                private: false,
                description: String::new(),
                tags: Vec::new(),
                versions: Vec::new(),
                created_ms: now,
                updated_ms: now,
            },
        };
        if let Some(p) = reg.private {
            entry.private = p;
        }
        if let Some(d) = reg.description {
            entry.description = d.to_string();
        }
        if let Some(t) = reg.tags {
            entry.tags = t.to_vec();
        }
        // Re-publishing a version moves it to the end: it becomes the model's `main` again.
        entry.versions.retain(|v| v != reg.id);
        entry.versions.push(reg.id.to_string());
        entry.updated_ms = now;
        let json = serde_json::to_vec(&entry).map_err(|e| HubError::Internal(e.to_string()))?;
        self.models.insert(key.as_bytes(), json)?;
        self.models.flush()?;
        let view = Arc::new(ModelView::new(entry, Some(Summary::of(reg.id, reg.record))));
        if let Ok(mut idx) = self.index.write() {
            idx.insert(key, view.clone());
        }
        Ok(view)
    }
}
