//! DQL `select` over the hub catalogue: dql-exec's [`Catalog`] implemented over the versions
//! of the models a caller may see. Read-only: only `select` runs, and the write methods of
//! the trait refuse.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dlv_graph::Net;
use dlv_store::VersionRecord;
use dql_exec::{Catalog, ErrorKind, ExecError, ExecOptions, Executor, Pushdown};
use serde_json::{json, Value};

use crate::catalog::ModelView;
use crate::error::{HubError, Result};
use crate::Hub;

/// Longest query text accepted.
const MAX_QUERY: usize = 16 << 10;

struct HubCatalog<'h> {
    hub: &'h Hub,
    /// Visible version ids in catalogue order, each with the first model that lists it.
    ids: Vec<String>,
    allowed: HashSet<String>,
}

fn read_only() -> ExecError {
    ExecError::Plan("the hub catalogue is read-only: only `select` runs here".into())
}

impl Catalog for HubCatalog<'_> {
    fn candidates(&self, _pushdown: &Pushdown) -> std::result::Result<Vec<String>, ExecError> {
        // No index over the hub's visible subset: every visible version is a candidate, and
        // the executor checks every predicate on the record.
        Ok(self.ids.clone())
    }

    fn record(&self, id: &str) -> std::result::Result<VersionRecord, ExecError> {
        if !self.allowed.contains(id) {
            return Err(ExecError::Catalog(format!("unknown version {id}")));
        }
        Ok(self.hub.repo.get(id)?)
    }

    fn network(
        &self,
        _id: &str,
        record: &VersionRecord,
    ) -> std::result::Result<Option<Net>, ExecError> {
        Ok(self.hub.repo.network(record)?)
    }

    fn saved_query(&self, _name: &str) -> std::result::Result<Option<String>, ExecError> {
        Ok(None)
    }

    fn save_query(&self, _name: &str, _text: &str) -> std::result::Result<(), ExecError> {
        Err(read_only())
    }

    fn object(&self, _id: &str) -> std::result::Result<Vec<u8>, ExecError> {
        Err(read_only())
    }

    fn put_object(&self, _bytes: &[u8]) -> std::result::Result<String, ExecError> {
        Err(read_only())
    }

    fn create_version(&self, _record: &VersionRecord) -> std::result::Result<String, ExecError> {
        Err(read_only())
    }
}

/// Runs a DQL `select` over the versions of `models`; one JSON row per matching version.
pub fn select(hub: &Hub, models: &[Arc<ModelView>], text: &str) -> Result<Vec<Value>> {
    if text.len() > MAX_QUERY {
        return Err(HubError::BadRequest(format!(
            "DQL text longer than {MAX_QUERY} bytes"
        )));
    }
    if !text.trim_start().to_ascii_lowercase().starts_with("select") {
        return Err(HubError::BadRequest(
            "only DQL `select` queries run on the hub".into(),
        ));
    }
    let mut owner_of: HashMap<String, String> = HashMap::new();
    let mut ids = Vec::new();
    for m in models {
        for v in &m.entry.versions {
            if !owner_of.contains_key(v) {
                owner_of.insert(v.clone(), m.key());
                ids.push(v.clone());
            }
        }
    }
    let allowed: HashSet<String> = ids.iter().cloned().collect();
    let catalog = HubCatalog { hub, ids, allowed };
    let exec = Executor::new(&catalog, ExecOptions::default());
    let out = exec.run_text(text).map_err(|e| match e.kind() {
        ErrorKind::User => HubError::BadRequest(format!("DQL: {e}")),
        _ => HubError::Internal(format!("DQL: {e}")),
    })?;
    if out.statement != "select" {
        return Err(HubError::BadRequest(
            "only DQL `select` queries run on the hub".into(),
        ));
    }
    Ok(out
        .rows
        .iter()
        .filter_map(|r| {
            let id = r.id.as_ref()?;
            let metrics: serde_json::Map<String, Value> = r
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            Some(json!({
                "model": owner_of.get(id),
                "id": id,
                "name": r.name,
                "message": r.message,
                "created": crate::api::time_iso(r.created_ms),
                "matched": r.matched,
                "metrics": metrics,
            }))
        })
        .collect())
}
