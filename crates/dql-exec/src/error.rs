//! The error type of dql-exec, sorted into the user's fault (plan), failures while running
//! (execution) and bugs (internal), as the CLI and the hub map them to exit codes and statuses.

use dlv_graph::GraphError;
use dlv_store::StoreError;

/// Who is to blame for an [`ExecError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query is wrong: it does not parse, names an unknown attribute, template, variable or
    /// saved query, compares values of different types, or asks for an edit that would break a
    /// network. Fix the query.
    User,
    /// The query is fine but running it failed: the repository or the trainer reported an error.
    Execution,
    /// A bug in dlv.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The text is not DQL; `Display` shows line, column and a caret.
    #[error(transparent)]
    Parse(#[from] dql_parse::ParseError),
    /// The query is well-formed but means nothing runnable (unknown attribute, type mismatch,
    /// unknown template, capture used but never bound, unknown variable or saved query).
    #[error("{0}")]
    Plan(String),
    /// A `construct` or `slice` that would make an invalid network, naming the version and the
    /// node.
    #[error("{version}: {error}")]
    Graph { version: String, error: GraphError },
    /// `evaluate` without a trainer.
    #[error("evaluate needs a trainer, and none is configured in this build")]
    NoTrainer,
    /// The trainer failed on a run.
    #[error("training {run}: {msg}")]
    Trainer { run: String, msg: String },
    /// The repository failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another catalogue implementation (the hub) failed.
    #[error("catalogue: {0}")]
    Catalog(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ExecError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ExecError::Parse(_) | ExecError::Plan(_) | ExecError::Graph { .. } | ExecError::NoTrainer => ErrorKind::User,
            ExecError::Trainer { .. } | ExecError::Store(_) | ExecError::Catalog(_) => ErrorKind::Execution,
            ExecError::Internal(_) => ErrorKind::Internal,
        }
    }
}

pub(crate) fn plan(msg: impl Into<String>) -> ExecError {
    ExecError::Plan(msg.into())
}
