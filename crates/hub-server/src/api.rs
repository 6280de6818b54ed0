//! The dlv API under `/api/v1`: negotiation by id, object upload and download (streamed and
//! verified), publish, model pages as JSON, lineage, search.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use dlv_store::{is_valid_id, short, VersionRecord};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::{check_repo_id, valid_model_name, Caller};
use crate::catalog::{ModelView, Registration};
use crate::error::{HubError, Result};
use crate::search::{query_pairs, Search};
use crate::Hub;

/// Most ids one negotiation request may carry.
const MAX_IDS: usize = 1_000_000;
/// Most records one publish may carry (a lineage).
const MAX_RECORDS: usize = 100_000;
/// Chunks in flight between the network and the object file, each up to ~1 MiB.
const PIPE_DEPTH: usize = 4;

pub fn routes(hub: &Arc<Hub>) -> Router<Arc<Hub>> {
    let json_limit = DefaultBodyLimit::max(hub.cfg.max_json_bytes);
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/versions/missing", post(missing_versions))
        .route("/api/v1/objects/missing", post(missing_objects))
        .route("/api/v1/objects/{id}", put(put_object))
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/models/{owner}/{name}", get(model))
        .route(
            "/api/v1/models/{owner}/{name}/lineage/{rev}",
            get(lineage_of),
        )
        .route(
            "/api/v1/models/{owner}/{name}/objects/{vid}/{oid}",
            get(get_object),
        )
        .route("/api/v1/search", get(search))
        .layer(json_limit)
}

async fn whoami(caller: Caller) -> Result<Json<Value>> {
    Ok(Json(json!({ "name": caller.require()? })))
}

#[derive(Debug, Deserialize)]
struct IdList {
    ids: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Missing {
    missing: Vec<String>,
}

fn check_ids(ids: &[String]) -> Result<()> {
    if ids.len() > MAX_IDS {
        return Err(HubError::BadRequest(format!(
            "at most {MAX_IDS} ids per request"
        )));
    }
    if let Some(bad) = ids.iter().find(|id| !is_valid_id(id)) {
        return Err(HubError::BadRequest(format!(
            "'{}' is not an id (64 lowercase hex digits)",
            trunc(bad)
        )));
    }
    Ok(())
}

fn trunc(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Which of these version ids the hub lacks. Needs a token (only publishers negotiate).
async fn missing_versions(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<IdList>,
) -> Result<Json<Missing>> {
    caller.require()?;
    check_ids(&req.ids)?;
    let mut missing = Vec::new();
    for id in req.ids {
        if !hub.repo.contains(&id)? {
            missing.push(id);
        }
    }
    Ok(Json(Missing { missing }))
}

/// Which of these object ids the hub lacks.
async fn missing_objects(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<IdList>,
) -> Result<Json<Missing>> {
    caller.require()?;
    check_ids(&req.ids)?;
    let store = hub.repo.objects().clone();
    let missing = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        req.ids
            .into_iter()
            .filter(|id| seen.insert(id.clone()) && !store.contains(id))
            .collect::<Vec<_>>()
    })
    .await?;
    Ok(Json(Missing { missing }))
}

enum Piece {
    Data(Bytes),
    End,
}

/// Stores one object from the request body: streamed to a temporary file while hashing, kept
/// only if the body is complete (its `Content-Length`) and hashes to the id in the path.
async fn put_object(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let user = caller.require()?.to_string();
    if !is_valid_id(&id) {
        return Err(HubError::BadRequest(format!(
            "'{}' is not an object id (64 lowercase hex digits)",
            trunc(&id)
        )));
    }
    let limit = hub.cfg.max_object_bytes;
    let declared = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| HubError::BadRequest("unreadable Content-Length".into()))?,
        ),
        None => None,
    };
    if declared.is_some_and(|d| d > limit) {
        return Err(HubError::TooLarge { limit });
    }
    if hub.repo.objects().contains(&id) {
        return Ok((StatusCode::OK, Json(json!({ "id": id, "stored": false }))).into_response());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(PIPE_DEPTH);
    let store = hub.repo.objects().clone();
    let want = id.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<dlv_store::PutOutcome> {
        let mut w = store.writer()?;
        let mut hasher = blake3::Hasher::new();
        loop {
            match rx.blocking_recv() {
                Some(Piece::Data(b)) => {
                    hasher.update(&b);
                    w.write_all(&b)
                        .map_err(|e| HubError::io("writing object", e))?;
                }
                Some(Piece::End) => break,
                // The request side gave up (client error): dropping `w` removes the temp file.
                None => return Err(HubError::BadRequest("upload aborted".into())),
            }
        }
        let got = hasher.finalize().to_hex().to_string();
        if got != want {
            return Err(HubError::Unprocessable(format!(
                "object content does not match its id: {} bytes hash to {got}, not {want}",
                w.len()
            )));
        }
        Ok(w.finish()?)
    });
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    let mut refused: Option<HubError> = None;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => {
                total += bytes.len() as u64;
                if total > limit {
                    refused = Some(HubError::TooLarge { limit });
                    break;
                }
                if declared.is_some_and(|d| total > d) {
                    refused = Some(HubError::BadRequest(
                        "body longer than its Content-Length".into(),
                    ));
                    break;
                }
                if tx.send(Piece::Data(bytes)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(e) => {
                refused = Some(HubError::BadRequest(format!(
                    "upload truncated or interrupted after {total} bytes: {e}"
                )));
                break;
            }
        }
    }
    if refused.is_none() {
        if let Some(d) = declared {
            if total != d {
                refused = Some(HubError::BadRequest(format!(
                    "upload truncated: {total} of {d} bytes"
                )));
            }
        }
    }
    if let Some(err) = refused {
        drop(tx);
        let _ = writer.await;
        tracing::warn!(%user, object = %id, error = %err, "upload refused");
        return Err(err);
    }
    let _ = tx.send(Piece::End).await;
    drop(tx);
    let outcome = writer.await??;
    tracing::info!(%user, object = %id, bytes = outcome.len, "object stored");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": outcome.id, "stored": !outcome.existed, "bytes": outcome.len })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct PublishRequest {
    /// The version to publish; its record name is the model name. Default: the last record.
    #[serde(default)]
    head: Option<String>,
    /// Records the hub lacks, parents before children (the head's included).
    records: Vec<VersionRecord>,
    #[serde(default)]
    private: Option<bool>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

/// Records versions whose objects are all stored and registers each under `USER/<its name>`.
async fn publish(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Json(req): Json<PublishRequest>,
) -> Result<Json<Value>> {
    let user = caller.require()?.to_string();
    if req.head.as_ref().is_some_and(|h| !is_valid_id(h)) {
        return Err(HubError::BadRequest("head is not a version id".into()));
    }
    if req.records.len() > MAX_RECORDS {
        return Err(HubError::BadRequest(format!(
            "at most {MAX_RECORDS} records per publish"
        )));
    }
    if let Some(tags) = &req.tags {
        if tags.len() > 64 || tags.iter().any(|t| t.is_empty() || t.len() > 64) {
            return Err(HubError::BadRequest(
                "at most 64 tags of 1 to 64 characters".into(),
            ));
        }
    }
    if req.description.as_ref().is_some_and(|d| d.len() > 64 << 10) {
        return Err(HubError::BadRequest(
            "description longer than 64 KiB".into(),
        ));
    }
    let hub2 = hub.clone();
    let result = tokio::task::spawn_blocking(move || publish_blocking(&hub2, &user, req)).await??;
    Ok(Json(result))
}

fn publish_blocking(hub: &Hub, user: &str, req: PublishRequest) -> Result<Value> {
    let repo = &hub.repo;
    let mut ids = Vec::with_capacity(req.records.len());
    let mut sent: HashSet<String> = HashSet::new();
    let mut missing_objects = BTreeSet::new();
    for r in &req.records {
        if !valid_model_name(&r.name) {
            return Err(HubError::BadRequest(format!(
                "model name '{}' is not allowed on the hub: use 1-96 of [A-Za-z0-9_.-] without '..' or '--'",
                trunc(&r.name)
            )));
        }
        for obj in r.objects() {
            if !is_valid_id(obj) {
                return Err(HubError::BadRequest(format!(
                    "version {} names a malformed object id",
                    r.name
                )));
            }
            if !repo.objects().contains(obj) {
                missing_objects.insert(obj.to_string());
            }
        }
        for p in &r.parents {
            if !is_valid_id(p) {
                return Err(HubError::BadRequest(format!(
                    "version {} names a malformed parent id",
                    r.name
                )));
            }
            if !sent.contains(p) && !repo.contains(p)? {
                return Err(HubError::Conflict(format!(
                    "parent {} of {} is neither on the hub nor sent before it",
                    short(p),
                    r.name
                )));
            }
        }
        let id = r.id();
        sent.insert(id.clone());
        ids.push(id);
    }
    if !missing_objects.is_empty() {
        return Err(HubError::MissingObjects(
            missing_objects.into_iter().collect(),
        ));
    }
    let head = match (&req.head, ids.last()) {
        (Some(h), _) => h.clone(),
        (None, Some(last)) => last.clone(),
        (None, None) => {
            return Err(HubError::BadRequest(
                "nothing to publish: no head and no records".into(),
            ))
        }
    };
    let head_record = match req.records.iter().zip(&ids).find(|(_, id)| **id == head) {
        Some((r, _)) => r.clone(),
        None => repo.get(&head).map_err(|_| {
            HubError::BadRequest(format!(
                "head {} is neither on the hub nor among the records",
                short(&head)
            ))
        })?,
    };
    if !valid_model_name(&head_record.name) {
        return Err(HubError::BadRequest(format!(
            "model name '{}' is not allowed on the hub",
            trunc(&head_record.name)
        )));
    }
    // Versions become visible here, each only after all its objects are stored (checked again
    // by insert_version inside the store).
    for r in &req.records {
        repo.insert_version(r)?;
    }
    let mut registered = Vec::new();
    for (r, id) in req.records.iter().zip(&ids) {
        if *id == head {
            continue;
        }
        // Lineage sent along lands under the publisher's namespace too, keeping an existing
        // model's visibility and a new one's visibility equal to the head's request.
        let existing = hub.catalog.get(&format!("{user}/{}", r.name));
        let private = if existing.is_some() {
            None
        } else {
            req.private
        };
        let v = hub.catalog.register(&Registration {
            owner: user,
            id,
            record: r,
            private,
            description: None,
            tags: None,
        })?;
        registered.push(format!("{}@{}", v.key(), short(id)));
    }
    let view = hub.catalog.register(&Registration {
        owner: user,
        id: &head,
        record: &head_record,
        private: req.private,
        description: req.description.as_deref(),
        tags: req.tags.as_deref(),
    })?;
    tracing::info!(%user, model = %view.key(), version = %short(&head), records = ids.len(), "published");
    Ok(json!({
        "model": view.key(),
        "id": head,
        "private": view.entry.private,
        "versions_added": ids.len(),
        "lineage_registered": registered,
        "url": format!("{}/{}", hub.base_url(), view.key()),
    }))
}

pub(crate) fn time_iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

pub(crate) fn version_json(id: &str, r: &VersionRecord) -> Value {
    json!({
        "id": id,
        "short": short(id),
        "name": r.name,
        "message": r.message,
        "author": r.author,
        "created": time_iso(r.created_ms),
        "created_ms": r.created_ms,
        "parents": r.parents,
        "tensors": r.tensors.len(),
        "parameters": r.param_count(),
        "weight_bytes": r.weight_bytes(),
        "network": r.network.as_ref().map(|n| json!({"name": n.name, "layers": n.layers})),
    })
}

pub(crate) fn summary_json(m: &ModelView) -> Value {
    let latest = m.latest.as_ref().map(|l| {
        let metrics: serde_json::Map<String, Value> = l.numbers.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "id": l.id, "short": short(&l.id), "message": l.message, "author": l.author,
            "created": time_iso(l.created_ms), "parameters": l.params, "weight_bytes": l.weight_bytes,
            "layers": l.layers, "metadata": metrics,
        })
    });
    json!({
        "id": m.key(),
        "owner": m.entry.owner,
        "name": m.entry.name,
        "private": m.entry.private,
        "description": m.entry.description,
        "tags": m.entry.tags,
        "versions": m.entry.versions.len(),
        "created": time_iso(m.entry.created_ms),
        "updated": time_iso(m.entry.updated_ms),
        "latest": latest,
    })
}

async fn model(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    check_repo_id(&owner, &name)?;
    let m = hub.catalog.visible(&owner, &name, caller.user())?;
    let mut v = summary_json(&m);
    let mut versions = Vec::new();
    for id in &m.entry.versions {
        versions.push(version_json(id, &hub.repo.get(id)?));
    }
    v["versions"] = json!(versions);
    Ok(Json(v))
}

/// Resolves a revision of a model: `main`/`latest`/empty, or a unique prefix (4+ hex digits) of
/// one of its version ids.
pub(crate) fn resolve_rev(m: &ModelView, rev: &str) -> Result<String> {
    let not_found = || HubError::NotFound {
        what: format!("revision '{}' of {}", trunc(rev), m.key()),
        code: "RevisionNotFound",
    };
    if matches!(rev, "" | "main" | "latest" | "HEAD" | "refs/heads/main") {
        return m.entry.latest().map(str::to_string).ok_or_else(not_found);
    }
    let rev = rev.to_ascii_lowercase();
    if rev.len() < 4 || rev.len() > 64 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let hits: Vec<&String> = m
        .entry
        .versions
        .iter()
        .filter(|v| v.starts_with(&rev))
        .collect();
    match hits.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(not_found()),
        _ => Err(HubError::BadRequest(format!(
            "revision '{rev}' is ambiguous in {}",
            m.key()
        ))),
    }
}

/// True when `target` is one of the model's versions or an ancestor of one: the versions a
/// reader of the model may fetch (a version's lineage travels with it).
pub(crate) fn reachable(hub: &Hub, m: &ModelView, target: &str) -> Result<bool> {
    if m.entry.versions.iter().any(|v| v == target) {
        return Ok(true);
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = m.entry.versions.clone();
    while let Some(id) = stack.pop() {
        if id == target {
            return Ok(true);
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        stack.extend(hub.repo.get(&id)?.parents);
    }
    Ok(false)
}

/// A version and all its ancestors, parents before children, bounded by `MAX_RECORDS`.
pub(crate) fn lineage(hub: &Hub, head: &str) -> Result<Vec<(String, VersionRecord)>> {
    hub.repo.lineage(head, MAX_RECORDS).map_err(|e| match e {
        dlv_store::StoreError::Invalid(_) => HubError::Internal("lineage too long".into()),
        other => other.into(),
    })
}

async fn lineage_of(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    check_repo_id(&owner, &name)?;
    let m = hub.catalog.visible(&owner, &name, caller.user())?;
    let head = resolve_rev(&m, &rev)?;
    let hub2 = hub.clone();
    let head2 = head.clone();
    let versions = tokio::task::spawn_blocking(move || lineage(&hub2, &head2)).await??;
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|(id, record)| json!({ "id": id, "record": record }))
        .collect();
    Ok(Json(
        json!({ "model": m.key(), "head": head, "versions": versions }),
    ))
}

/// A `Write` that hands chunks to an async response body.
pub(crate) struct ChanWriter {
    pub tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A body streaming the decoded, verified content of an object. A verification failure
/// mid-way ends the body with an error, so the client sees a truncated transfer.
pub(crate) fn object_body(hub: &Arc<Hub>, oid: &str) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(PIPE_DEPTH);
    let store = hub.repo.objects().clone();
    let oid = oid.to_string();
    tokio::task::spawn_blocking(move || {
        let mut w = ChanWriter { tx: tx.clone() };
        if let Err(e) = store.get_into(&oid, &mut w) {
            tracing::error!(object = %oid, error = %e, "object read failed mid-transfer");
            let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Body::from_stream(stream)
}

async fn get_object(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, vid, oid)): Path<(String, String, String, String)>,
) -> Result<Response> {
    check_repo_id(&owner, &name)?;
    if !is_valid_id(&vid) || !is_valid_id(&oid) {
        return Err(HubError::BadRequest(
            "version and object must be full ids".into(),
        ));
    }
    let m = hub.catalog.visible(&owner, &name, caller.user())?;
    let hub2 = hub.clone();
    let (m2, vid2, oid2) = (m.clone(), vid.clone(), oid.clone());
    let len = tokio::task::spawn_blocking(move || -> Result<u64> {
        if !reachable(&hub2, &m2, &vid2)? {
            return Err(HubError::not_found(format!(
                "version {} in {}",
                short(&vid2),
                m2.key()
            )));
        }
        let r = hub2.repo.get(&vid2)?;
        if !r.objects().contains(&oid2.as_str()) {
            return Err(HubError::not_found(format!(
                "object {} in version {}",
                short(&oid2),
                short(&vid2)
            )));
        }
        Ok(hub2.repo.objects().decoded_len(&oid2)?)
    })
    .await??;
    let mut resp = Response::new(object_body(&hub, &oid));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    if let Ok(v) = header::HeaderValue::from_str(&oid) {
        h.insert("x-dlv-object", v);
    }
    Ok(resp)
}

async fn search(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let pairs = query_pairs(raw.as_deref());
    if let Some((_, dql)) = pairs.iter().find(|(k, _)| k == "dql") {
        let models = hub.catalog.list_visible(caller.user());
        let (hub2, text) = (hub.clone(), dql.clone());
        let rows = tokio::task::spawn_blocking(move || crate::dql::select(&hub2, &models, &text))
            .await??;
        return Ok(Json(
            json!({ "total": rows.len(), "dql": dql, "results": rows }),
        ));
    }
    let s = Search::from_pairs(&pairs)?;
    let (total, page) = s.run(hub.catalog.list_visible(caller.user()));
    Ok(Json(json!({
        "total": total,
        "page": s.page,
        "per_page": s.per_page,
        "results": page.iter().map(|m| summary_json(m)).collect::<Vec<_>>(),
    })))
}
