//! The model catalogue that the executor reads and writes, and its implementation over a
//! dlv-store repository.

use std::collections::{BTreeSet, HashSet};
use std::ops::Bound;

use dlv_graph::Net;
use dlv_store::{Repository, VersionRecord, VersionSummary};

use crate::ExecError;

/// A predicate the planner pushes down to the catalogue's indexes, before any record or graph
/// is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Restriction {
    /// The name is one of these.
    Names(Vec<String>),
    /// The name starts with this text.
    NamePrefix(String),
    /// Created within these bounds (milliseconds since the epoch, UTC).
    Created { lo: Bound<i64>, hi: Bound<i64> },
    /// The numeric metadata `key` lies within these bounds. The executor resolves a key to a
    /// hyper-parameter, an extra entry, or the last value of the series `key`, `test/key` or
    /// `train/key`; `keys` lists them all.
    Number { keys: Vec<String>, lo: Bound<f64>, hi: Bound<f64> },
    /// At least one of these holds.
    AnyOf(Vec<Restriction>),
}

/// A conjunction of [`Restriction`]s.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pushdown {
    pub all_of: Vec<Restriction>,
}

/// What the executor needs from a model repository. dql-exec owns it; [`StoreCatalog`]
/// implements it over dlv-store and the hub implements it over its own storage.
pub trait Catalog {
    /// Ids of the versions that may satisfy `pushdown`: a superset is fine (the executor checks
    /// every predicate again on the record), missing a version is not. An implementation
    /// without indexes may return every id.
    fn candidates(&self, pushdown: &Pushdown) -> Result<Vec<String>, ExecError>;
    /// One version record.
    fn record(&self, id: &str) -> Result<VersionRecord, ExecError>;
    /// The summary of a version (name, times, message, author, DAG object, counts), read
    /// without decoding its record; `None` when the catalogue has no such index, and the
    /// executor then reads the record. Must agree with [`VersionSummary::of`] of the record.
    fn summary(&self, _id: &str) -> Result<Option<VersionSummary>, ExecError> {
        Ok(None)
    }
    /// The network of a version, if it has one.
    fn network(&self, id: &str, record: &VersionRecord) -> Result<Option<Net>, ExecError>;
    /// The network stored in DAG object `dag` (a `NetworkRef::dag`), read without any record;
    /// `None` when the catalogue cannot, and the executor then uses [`Catalog::network`].
    fn network_object(&self, _dag: &str) -> Result<Option<Net>, ExecError> {
        Ok(None)
    }
    /// Every metadata key that some version has, to tell a typo from a key; `None` if unknown.
    fn metadata_keys(&self) -> Result<Option<HashSet<String>>, ExecError> {
        Ok(None)
    }
    /// The text of a saved query.
    fn saved_query(&self, name: &str) -> Result<Option<String>, ExecError>;
    /// Saves a query text under a name (replacing one of that name).
    fn save_query(&self, name: &str, text: &str) -> Result<(), ExecError>;
    /// The decoded bytes of an object (tensor data for the trainer).
    fn object(&self, id: &str) -> Result<Vec<u8>, ExecError>;
    /// Stores bytes as an object; returns its id.
    fn put_object(&self, bytes: &[u8]) -> Result<String, ExecError>;
    /// Records a version whose objects are stored; returns its id.
    fn create_version(&self, record: &VersionRecord) -> Result<String, ExecError>;
}

/// [`Catalog`] over a dlv-store [`Repository`] and its query indexes. Writing needs a
/// repository opened with `open_writer`.
pub struct StoreCatalog<'r> {
    repo: &'r Repository,
}

impl<'r> StoreCatalog<'r> {
    pub fn new(repo: &'r Repository) -> StoreCatalog<'r> {
        StoreCatalog { repo }
    }

    fn ids_for(&self, r: &Restriction) -> Result<Vec<String>, ExecError> {
        Ok(match r {
            Restriction::Names(names) => {
                let mut v = Vec::new();
                for n in names {
                    v.extend(self.repo.ids_of_name(n)?);
                }
                v
            }
            Restriction::NamePrefix(p) => self.repo.ids_by_name_prefix(p)?,
            Restriction::Created { lo, hi } => self.repo.ids_created(*lo, *hi)?,
            Restriction::Number { keys, lo, hi } => {
                let mut v = Vec::new();
                for k in keys {
                    v.extend(self.repo.ids_by_number(k, *lo, *hi)?);
                }
                v
            }
            Restriction::AnyOf(rs) => {
                let mut v = Vec::new();
                for r in rs {
                    v.extend(self.ids_for(r)?);
                }
                v
            }
        })
    }
}

impl Catalog for StoreCatalog<'_> {
    fn candidates(&self, pushdown: &Pushdown) -> Result<Vec<String>, ExecError> {
        if pushdown.all_of.is_empty() {
            return Ok(self.repo.ids()?);
        }
        let mut sets: Vec<Vec<String>> = Vec::new();
        for r in &pushdown.all_of {
            sets.push(self.ids_for(r)?);
        }
        sets.sort_by_key(Vec::len);
        let mut iter = sets.into_iter();
        let mut out: Vec<String> = iter.next().unwrap_or_default();
        for other in iter {
            let other: HashSet<String> = other.into_iter().collect();
            out.retain(|id| other.contains(id));
        }
        // Versions past the index watermark are not in the time/number indexes yet.
        let tail = self.repo.unindexed()?;
        if !tail.is_empty() {
            let mut seen: HashSet<String> = out.iter().cloned().collect();
            out.extend(tail.into_iter().filter(|id| seen.insert(id.clone())));
        }
        let mut seen = HashSet::new();
        out.retain(|id| seen.insert(id.clone()));
        Ok(out)
    }

    fn record(&self, id: &str) -> Result<VersionRecord, ExecError> {
        Ok(self.repo.get(id)?)
    }

    fn summary(&self, id: &str) -> Result<Option<VersionSummary>, ExecError> {
        Ok(Some(self.repo.summary(id)?))
    }

    fn network(&self, _id: &str, record: &VersionRecord) -> Result<Option<Net>, ExecError> {
        Ok(self.repo.network(record)?)
    }

    fn network_object(&self, dag: &str) -> Result<Option<Net>, ExecError> {
        Ok(Some(self.repo.network_object(dag)?))
    }

    fn metadata_keys(&self) -> Result<Option<HashSet<String>>, ExecError> {
        let mut keys: HashSet<String> = self.repo.metadata_keys()?.into_iter().collect();
        for id in self.repo.unindexed()? {
            let r = self.repo.get(&id)?;
            keys.extend(r.hyper.iter().chain(&r.extra).map(|h| h.key.clone()));
            keys.extend(r.series.iter().map(|s| s.name.clone()));
        }
        Ok(Some(keys))
    }

    fn saved_query(&self, name: &str) -> Result<Option<String>, ExecError> {
        Ok(self.repo.saved_query(name)?)
    }

    fn save_query(&self, name: &str, text: &str) -> Result<(), ExecError> {
        Ok(self.repo.save_query(name, text)?)
    }

    fn object(&self, id: &str) -> Result<Vec<u8>, ExecError> {
        Ok(self.repo.objects().get_bytes(id)?)
    }

    fn put_object(&self, bytes: &[u8]) -> Result<String, ExecError> {
        Ok(self.repo.objects().put_bytes(bytes)?.id)
    }

    fn create_version(&self, record: &VersionRecord) -> Result<String, ExecError> {
        Ok(self.repo.insert_version(record)?)
    }
}

/// Keys a metadata access `key` may resolve to, in the order the executor tries them after
/// hyper-parameters and extra entries.
pub(crate) fn key_variants(key: &str) -> Vec<String> {
    vec![key.to_string(), format!("test/{key}"), format!("train/{key}")]
}

/// Sorted, for messages.
pub(crate) fn sorted(keys: &HashSet<String>) -> Vec<&str> {
    keys.iter().map(String::as_str).collect::<BTreeSet<_>>().into_iter().collect()
}
