//! hub-server: ModelHub, the HTTP service that stores published dlv models and serves them.
//!
//! `DATA/repo/.dlv` is one dlv-store repository holding every published version and object
//! (objects are shared between models and users: the same tensor is stored once);
//! `DATA/catalog` is the catalogue (`owner/name` -> versions, visibility, description, tags);
//! `DATA/users.json` the accounts and token hashes; `DATA/cache` files materialised for the
//! Hugging Face compatible download API (safe to delete at any time).
//!
//! Routes: the dlv API under `/api/v1` ([`api`]), the Hugging Face subset under `/api/models`,
//! `/api/whoami-v2` and `/{owner}/{name}/resolve/…` ([`hf`]), and the web UI at `/` and
//! `/{owner}/{name}` ([`ui`]). See `docs/HUB.md`.
//!
//! Invariants: no request can make the server panic (errors map to 4xx/5xx); a version becomes
//! visible only once every object it references is stored and verified; uploads and downloads
//! stream object by object in bounded chunks.

mod api;
mod auth;
mod catalog;
mod dql;
mod error;
mod hf;
mod search;
mod svg;
mod ui;
mod users;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::Router;
use dlv_store::Repository;

pub use catalog::{ModelEntry, ModelView, Summary};
pub use error::{HubError, Result};
pub use search::{Filter, Search};
pub use users::{hash_token, valid_user_name, User, Users};

/// Server settings; [`HubConfig::new`] gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data: PathBuf,
    /// Base URL that clients reach the hub at, used in absolute URLs (pagination links).
    /// Default: `http://` + the bound address.
    pub public_url: Option<String>,
    /// Largest JSON request body (negotiation lists, publish requests).
    pub max_json_bytes: usize,
    /// Largest single object upload.
    pub max_object_bytes: u64,
}

impl HubConfig {
    pub fn new(data: impl Into<PathBuf>) -> HubConfig {
        HubConfig {
            data: data.into(),
            public_url: None,
            max_json_bytes: 32 << 20,
            max_object_bytes: 64 << 30,
        }
    }
}

/// The running hub: repository, catalogue, accounts, caches.
pub struct Hub {
    cfg: HubConfig,
    repo: Repository,
    catalog: catalog::Catalog,
    users: Users,
    files: hf::FileCache,
    base_url: OnceLock<String>,
}

impl Hub {
    /// Opens (creating if needed) the hub's data folder. Takes the repository's writer lock,
    /// so one data folder serves one process.
    pub fn open(cfg: HubConfig) -> Result<Arc<Hub>> {
        let data = &cfg.data;
        let repo_dir = data.join("repo");
        std::fs::create_dir_all(&repo_dir)
            .map_err(|e| HubError::io(repo_dir.display().to_string(), e))?;
        let repo = if repo_dir.join(dlv_store::DOT_DIR).is_dir() {
            Repository::open_writer(&repo_dir)?
        } else {
            Repository::init(&repo_dir)?
        };
        // Leftovers of uploads interrupted by a crash.
        let cleaned = repo.objects().clean_tmp()?;
        if cleaned > 0 {
            tracing::info!(files = cleaned, "removed interrupted uploads");
        }
        let catalog = catalog::Catalog::open(&data.join("catalog"), &repo)?;
        let files = hf::FileCache::new(data.join("cache"));
        let base_url = OnceLock::new();
        if let Some(u) = &cfg.public_url {
            let _ = base_url.set(u.trim_end_matches('/').to_string());
        }
        tracing::info!(data = %data.display(), models = catalog.len(), versions = repo.len(), "hub opened");
        Ok(Arc::new(Hub {
            users: Users::new(data),
            cfg,
            repo,
            catalog,
            files,
            base_url,
        }))
    }

    /// The accounts of a data folder, without opening the rest (for `hub-server user …`).
    pub fn users_of(data: &Path) -> Result<Users> {
        std::fs::create_dir_all(data).map_err(|e| HubError::io(data.display().to_string(), e))?;
        Ok(Users::new(data))
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Public base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.base_url
            .get()
            .map(String::as_str)
            .unwrap_or("http://127.0.0.1")
    }
}

/// Every route of the hub.
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .merge(api::routes(&hub))
        .merge(hf::routes())
        .merge(ui::routes())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(hub)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hub: Arc<Hub>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        let _ = hub.base_url.set(format!("http://{addr}"));
    }
    let app = router(hub);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
