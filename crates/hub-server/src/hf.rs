//! The subset of the Hugging Face Hub HTTP API that `huggingface_hub`'s `hf_hub_download`,
//! `snapshot_download`, `model_info` and `list_models` use (see `docs/HUB.md` and
//! `shared/HF-COMPAT.md`).
//!
//! A version is served as the files `dlv checkout` writes (network prototxt, weights as
//! safetensors under their checkout name, associated files). They are materialised once per
//! version into `DATA/cache/<id>/` with a manifest of sizes and BLAKE3 hashes; the hash is the
//! ETag. The commit sha is the first 40 hex digits of the version id.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::api::{resolve_rev, time_iso};
use crate::auth::{check_repo_id, Caller};
use crate::catalog::ModelView;
use crate::error::{HubError, Result};
use crate::search::{percent_encode, query_pairs, Search};
use crate::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/whoami-v2", get(whoami))
        .route("/api/models", get(list_models))
        .route("/api/models/{owner}/{name}", get(model_info_main))
        .route(
            "/api/models/{owner}/{name}/revision/{rev}",
            get(model_info_rev),
        )
        .route("/api/models/{owner}/{name}/tree/{rev}", get(tree_root))
        .route(
            "/api/models/{owner}/{name}/tree/{rev}/{*path}",
            get(tree_path),
        )
        .route("/api/models/{owner}/{name}/refs", get(refs))
        .route("/api/models/{owner}/{name}/commits/{rev}", get(commits))
        .route("/{owner}/{name}/resolve/{rev}/{*file}", get(resolve))
}

/// The git-style commit id the client sees for a version.
pub fn sha(version: &str) -> &str {
    &version[..version.len().min(40)]
}

/// One file of a materialised version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    /// Relative path with `/` separators.
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the content, hex.
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: String,
    pub files: Vec<FileMeta>,
}

/// Versions materialised as files, on disk and in memory.
pub struct FileCache {
    dir: PathBuf,
    cells: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<Manifest>>>>>,
}

impl FileCache {
    pub fn new(dir: PathBuf) -> FileCache {
        FileCache {
            dir,
            cells: Mutex::new(HashMap::new()),
        }
    }

    fn version_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The manifest of a version, materialising it on first use (once, even under concurrency).
    pub async fn manifest(&self, hub: &Arc<Hub>, id: &str) -> Result<Arc<Manifest>> {
        let cell = {
            let mut cells = self
                .cells
                .lock()
                .map_err(|_| HubError::Internal("file cache lock poisoned".into()))?;
            cells.entry(id.to_string()).or_default().clone()
        };
        let hub2 = hub.clone();
        let id2 = id.to_string();
        cell.get_or_try_init(|| async move {
            let m =
                tokio::task::spawn_blocking(move || hub2.files.materialise(&hub2, &id2)).await??;
            Ok::<_, HubError>(Arc::new(m))
        })
        .await
        .cloned()
    }

    fn materialise(&self, hub: &Hub, id: &str) -> Result<Manifest> {
        let final_dir = self.version_dir(id);
        let manifest_path = final_dir.join(".manifest.json");
        if let Ok(bytes) = std::fs::read(&manifest_path) {
            if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                return Ok(m);
            }
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| HubError::io(self.dir.display().to_string(), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.dir)
            .map_err(|e| HubError::io(self.dir.display().to_string(), e))?;
        tracing::info!(version = %id, "materialising files for download");
        let outcome = hub.repo.checkout(
            id,
            tmp.path(),
            dlv_store::Precision::Full,
            true,
            &dlv_store::NoProgress,
        )?;
        let mut files = Vec::new();
        for f in &outcome.files {
            let rel = f
                .strip_prefix(tmp.path())
                .map_err(|_| HubError::Internal("checkout wrote outside its folder".into()))?;
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .collect();
            let (size, hash) = hash_file(f)?;
            files.push(FileMeta {
                path: rel.join("/"),
                size,
                hash,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let manifest = Manifest {
            version: id.to_string(),
            files,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| HubError::Internal(e.to_string()))?;
        std::fs::write(tmp.path().join(".manifest.json"), json)
            .map_err(|e| HubError::io("writing manifest", e))?;
        let tmp_path = tmp.keep();
        if final_dir.exists() {
            let _ = std::fs::remove_dir_all(&final_dir);
        }
        std::fs::rename(&tmp_path, &final_dir)
            .map_err(|e| HubError::io(final_dir.display().to_string(), e))?;
        Ok(manifest)
    }

    fn file_path(&self, id: &str, rel: &str) -> PathBuf {
        let mut p = self.version_dir(id);
        for part in rel.split('/') {
            p.push(part);
        }
        p
    }
}

fn hash_file(path: &FsPath) -> Result<(u64, String)> {
    let ctx = || path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| HubError::io(ctx(), e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| HubError::io(ctx(), e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

async fn whoami(caller: Caller) -> Result<Json<Value>> {
    let name = caller.require().map_err(|_| HubError::BadToken)?;
    Ok(Json(json!({
        "type": "user",
        "id": name,
        "name": name,
        "fullname": name,
        "email": null,
        "emailVerified": false,
        "isPro": false,
        "orgs": [],
        "auth": { "type": "access_token", "accessToken": { "displayName": "dlv hub token", "role": "write" } },
    })))
}

fn visible(hub: &Hub, caller: &Caller, owner: &str, name: &str) -> Result<Arc<ModelView>> {
    check_repo_id(owner, name).map_err(|_| HubError::not_found(format!("model {owner}/{name}")))?;
    hub.catalog.visible(owner, name, caller.user())
}

fn model_json(m: &ModelView, version: Option<&str>, manifest: Option<&Manifest>) -> Value {
    let latest = version.or(m.entry.latest()).unwrap_or_default();
    let mut v = json!({
        "_id": m.key(),
        "id": m.key(),
        "modelId": m.key(),
        "author": m.entry.owner,
        "sha": sha(latest),
        "lastModified": time_iso(m.entry.updated_ms),
        "createdAt": time_iso(m.entry.created_ms),
        "private": m.entry.private,
        "disabled": false,
        "gated": false,
        "downloads": 0,
        "likes": 0,
        "library_name": "dlv",
        "tags": m.entry.tags,
    });
    if let Some(man) = manifest {
        let siblings: Vec<Value> = man
            .files
            .iter()
            .map(|f| json!({ "rfilename": f.path, "size": f.size, "blobId": f.hash }))
            .collect();
        v["siblings"] = json!(siblings);
        v["usedStorage"] = json!(man.files.iter().map(|f| f.size).sum::<u64>());
    }
    v
}

async fn model_info(
    hub: Arc<Hub>,
    caller: Caller,
    owner: String,
    name: String,
    rev: String,
) -> Result<Json<Value>> {
    let m = visible(&hub, &caller, &owner, &name)?;
    let id = resolve_rev(&m, &rev)?;
    let manifest = hub.files.manifest(&hub, &id).await?;
    Ok(Json(model_json(&m, Some(&id), Some(&manifest))))
}

async fn model_info_main(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    model_info(hub, caller, owner, name, "main".into()).await
}

async fn model_info_rev(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    model_info(hub, caller, owner, name, rev).await
}

async fn tree(
    hub: Arc<Hub>,
    caller: Caller,
    owner: String,
    name: String,
    rev: String,
    path: String,
    raw: Option<String>,
) -> Result<Json<Value>> {
    let m = visible(&hub, &caller, &owner, &name)?;
    let id = resolve_rev(&m, &rev)?;
    let manifest = hub.files.manifest(&hub, &id).await?;
    let recursive = query_pairs(raw.as_deref())
        .iter()
        .any(|(k, v)| k == "recursive" && matches!(v.as_str(), "true" | "True" | "1"));
    let prefix = path.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    let mut dirs: BTreeMap<String, ()> = BTreeMap::new();
    let mut out = Vec::new();
    for f in &manifest.files {
        let Some(rest) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        // Directories on the way (all of them when recursive, the first level otherwise).
        let depth = if recursive {
            parts.len() - 1
        } else {
            parts.len().min(2) - 1
        };
        for d in 1..=depth {
            let dir = format!("{prefix}{}", parts[..d].join("/"));
            if dirs.insert(dir.clone(), ()).is_none() {
                out.push(json!({ "type": "directory", "oid": blake3::hash(dir.as_bytes()).to_hex().to_string()[..40].to_string(), "size": 0, "path": dir }));
            }
        }
        if recursive || parts.len() == 1 {
            out.push(json!({ "type": "file", "oid": f.hash, "size": f.size, "path": f.path }));
        }
    }
    if out.is_empty() && !prefix.is_empty() {
        return Err(HubError::NotFound {
            what: format!("path {path}"),
            code: "EntryNotFound",
        });
    }
    Ok(Json(json!(out)))
}

async fn tree_root(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    tree(hub, caller, owner, name, rev, String::new(), raw).await
}

async fn tree_path(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev, path)): Path<(String, String, String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    tree(hub, caller, owner, name, rev, path, raw).await
}

async fn refs(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let m = visible(&hub, &caller, &owner, &name)?;
    let main = m.entry.latest().map(sha).unwrap_or_default();
    Ok(Json(json!({
        "branches": [{ "name": "main", "ref": "refs/heads/main", "targetCommit": main }],
        "tags": [],
        "converts": [],
    })))
}

async fn commits(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let m = visible(&hub, &caller, &owner, &name)?;
    let head = resolve_rev(&m, &rev)?;
    let hub2 = hub.clone();
    let lineage = tokio::task::spawn_blocking(move || crate::api::lineage(&hub2, &head)).await??;
    let out: Vec<Value> = lineage
        .iter()
        .rev()
        .map(|(id, r)| {
            json!({
                "id": sha(id),
                "title": r.message.lines().next().unwrap_or_default(),
                "message": r.message,
                "authors": [{ "user": r.author }],
                "date": time_iso(r.created_ms),
            })
        })
        .collect();
    Ok(Json(json!(out)))
}

async fn list_models(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let pairs = query_pairs(raw.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let limit: usize = get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let offset: usize = get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let full = matches!(get("full"), Some("true" | "True" | "1"));
    let mut s = Search {
        text: get("search").unwrap_or_default().to_string(),
        sort: match get("sort") {
            Some("createdAt") => "created".into(),
            Some("id") | Some("modelId") => "name".into(),
            _ => "updated".into(),
        },
        per_page: usize::MAX,
        ..Search::default()
    };
    s.descending = get("direction") != Some("1") && s.sort != "name";
    let author = get("author").map(str::to_string);
    let tags: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| v.clone())
        .collect();
    let models: Vec<Arc<ModelView>> = hub
        .catalog
        .list_visible(caller.user())
        .into_iter()
        .filter(|m| author.as_deref().is_none_or(|a| m.entry.owner == a))
        .filter(|m| tags.iter().all(|t| m.entry.tags.iter().any(|x| x == t)))
        .collect();
    let (total, all) = s.run(models);
    let page: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|m| {
            let mut v = model_json(m, None, None);
            if full {
                v["siblings"] = json!([]);
            }
            v
        })
        .collect();
    let mut resp = Json(json!(page)).into_response();
    if offset + limit < total {
        let mut q: Vec<(String, String)> =
            pairs.into_iter().filter(|(k, _)| k != "offset").collect();
        q.push(("offset".into(), (offset + limit).to_string()));
        if !q.iter().any(|(k, _)| k == "limit") {
            q.push(("limit".into(), limit.to_string()));
        }
        let qs: Vec<String> = q
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        let link = format!(
            "<{}/api/models?{}>; rel=\"next\"",
            hub.base_url(),
            qs.join("&")
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// A byte range request: `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range).
fn parse_range(h: &str, len: u64) -> Option<std::result::Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: serve the whole file
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len.checked_sub(1)?)
    } else {
        let start: u64 = a.parse().ok()?;
        let end: u64 = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().ok()?.min(len.saturating_sub(1))
        };
        if start >= len || end < start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

fn not_found_entry(commit: &str, file: &str) -> Response {
    let mut r = HubError::NotFound {
        what: format!("file {file}"),
        code: "EntryNotFound",
    }
    .into_response();
    if let Ok(v) = HeaderValue::from_str(commit) {
        r.headers_mut().insert("x-repo-commit", v);
    }
    r
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path((owner, name, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let m = visible(&hub, &caller, &owner, &name)?;
    let id = resolve_rev(&m, &rev)?;
    let commit = sha(&id).to_string();
    let manifest = hub.files.manifest(&hub, &id).await?;
    let Some(meta) = manifest.files.iter().find(|f| f.path == file) else {
        return Ok(not_found_entry(&commit, &file));
    };
    let path = hub.files.file_path(&id, &meta.path);
    let len = meta.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) => match parse_range(h, len) {
            Some(Ok(r)) => Some(r),
            Some(Err(())) => {
                let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(r);
            }
            None => None,
        },
        None => None,
    };
    let (start, count) = match range {
        Some((a, b)) => (a, b - a + 1),
        None => (0, len),
    };
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| HubError::io(path.display().to_string(), e))?;
    if start > 0 {
        f.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| HubError::io(path.display().to_string(), e))?;
    }
    let body = Body::from_stream(file_stream(f, count));
    let mut resp = Response::new(body);
    *resp.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set("x-repo-commit", commit);
    set("etag", format!("\"{}\"", meta.hash));
    set("content-length", count.to_string());
    set("accept-ranges", "bytes".into());
    set("content-type", "application/octet-stream".into());
    set(
        "content-disposition",
        format!(
            "attachment; filename=\"{}\"",
            meta.path.rsplit('/').next().unwrap_or("file")
        ),
    );
    if let Some((a, b)) = range {
        set("content-range", format!("bytes {a}-{b}/{len}"));
    }
    Ok(resp)
}

/// Streams `count` bytes of a file in 256 KiB reads.
fn file_stream(
    f: tokio::fs::File,
    count: u64,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold((f, count), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (256usize << 10).min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank")),
                (f, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=x-", 100), None);
    }
}
