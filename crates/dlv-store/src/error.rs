//! The one error type of dlv-store; every variant names what it concerns (path, id, offset).

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file given by the user (weights, solver, log, network) that cannot be read as what it
    /// claims to be. `offset` is a byte offset into the file where one is known.
    #[error("{}{}: {msg}", path.display(), offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
    Format {
        path: PathBuf,
        offset: Option<u64>,
        msg: String,
    },
    #[error(transparent)]
    Graph(#[from] dlv_graph::GraphError),
    #[error("not a dlv repository (or any parent up to /): {0}")]
    NotARepository(PathBuf),
    #[error("a dlv repository already exists at {0}")]
    AlreadyExists(PathBuf),
    #[error("repository is locked by another writer: {holder}")]
    Locked { holder: String },
    #[error("corrupt object {id}: {msg}")]
    CorruptObject { id: String, msg: String },
    #[error("missing object {id}")]
    MissingObject { id: String },
    #[error("corrupt metadata in {what}: {msg}")]
    CorruptMeta { what: String, msg: String },
    #[error("unsupported repository format version {found} (this dlv reads up to {supported})")]
    FormatVersion { found: u32, supported: u32 },
    #[error("unknown revision '{0}'")]
    UnknownRef(String),
    #[error("ambiguous revision '{prefix}': matches {candidates}")]
    AmbiguousRef { prefix: String, candidates: String },
    #[error("nothing staged to commit")]
    NothingStaged,
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("metadata database: {0}")]
    Db(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, offset: Option<u64>, msg: impl Into<String>) -> Self {
        StoreError::Format {
            path: path.into(),
            offset,
            msg: msg.into(),
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}
