//! Maintenance: `fsck` (verify every record, reference and object) and `gc` (remove objects no
//! version references).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::record::VersionRecord;
use crate::repo::{short, Repository};
use crate::{Result, StoreError};

/// One problem fsck found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The version concerned, if any.
    pub version: Option<String>,
    /// The object concerned, if any.
    pub object: Option<String>,
    pub msg: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct FsckReport {
    pub versions: usize,
    pub objects_checked: usize,
    pub bytes_checked: u64,
    /// Objects present that no version references (gc would remove them).
    pub unreferenced: usize,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct GcReport {
    pub kept: usize,
    pub removed: usize,
    pub bytes_freed: u64,
    pub temp_files_removed: usize,
}

impl Repository {
    /// Verifies every version record (validation, id), its parents and name index entries, and
    /// every object it references (present, decodes, hashes to its id).
    pub fn fsck(&self) -> Result<FsckReport> {
        let mut report = FsckReport::default();
        let mut referenced = BTreeSet::new();
        let mut checked = BTreeSet::new();
        for item in self.versions.iter() {
            let (k, v) = item?;
            let id = String::from_utf8_lossy(&k).to_string();
            report.versions += 1;
            let record = match VersionRecord::decode(&format!("version {id}"), &v) {
                Ok(r) => r,
                Err(e) => {
                    report.problems.push(Problem { version: Some(id), object: None, msg: e.to_string() });
                    continue;
                }
            };
            let vid = Some(id.clone());
            if record.id() != id {
                report.problems.push(Problem {
                    version: vid.clone(),
                    object: None,
                    msg: format!("record hashes to {}, not to its id", short(&record.id())),
                });
            }
            for p in &record.parents {
                if !self.contains(p)? {
                    report.problems.push(Problem { version: vid.clone(), object: None, msg: format!("parent {} is missing", short(p)) });
                }
            }
            for obj in record.objects() {
                referenced.insert(obj.to_string());
                if !checked.insert(obj.to_string()) {
                    continue;
                }
                match self.objects().verify(obj) {
                    Ok(n) => {
                        report.objects_checked += 1;
                        report.bytes_checked += n;
                    }
                    Err(e) => {
                        let msg = match &e {
                            StoreError::MissingObject { .. } => "object is missing".to_string(),
                            StoreError::CorruptObject { msg, .. } => format!("object is corrupt: {msg}"),
                            other => other.to_string(),
                        };
                        report.problems.push(Problem {
                            version: Some(format!("{}@{}", record.name, short(&id))),
                            object: Some(obj.to_string()),
                            msg,
                        });
                    }
                }
            }
        }
        for item in self.log.iter() {
            let (_, id) = item?;
            let id = String::from_utf8_lossy(&id).to_string();
            if !self.contains(&id)? {
                report.problems.push(Problem { version: Some(id), object: None, msg: "listed in the log but has no record".into() });
            }
        }
        for obj in self.objects().list()? {
            if !referenced.contains(&obj) {
                report.unreferenced += 1;
            }
        }
        Ok(report)
    }

    /// Every object any version references.
    pub fn referenced_objects(&self) -> Result<BTreeSet<String>> {
        let mut set = BTreeSet::new();
        for item in self.versions.iter() {
            let (k, v) = item?;
            let record = VersionRecord::decode(&format!("version {}", String::from_utf8_lossy(&k)), &v)?;
            set.extend(record.objects().into_iter().map(str::to_string));
        }
        Ok(set)
    }

    /// Removes unreferenced objects (and leftovers of interrupted writes). Refuses to run when a
    /// record cannot be read, since its objects could not be told apart from garbage.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let keep = self.referenced_objects()?;
        let mut report = GcReport::default();
        for obj in self.objects().list()? {
            if keep.contains(&obj) {
                report.kept += 1;
                continue;
            }
            report.removed += 1;
            report.bytes_freed += if dry_run { self.objects().stored_size(&obj)? } else { self.objects().remove(&obj)? };
        }
        if !dry_run {
            report.temp_files_removed = self.objects().clean_tmp()?;
        }
        Ok(report)
    }
}
