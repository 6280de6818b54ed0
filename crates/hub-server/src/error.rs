//! The one error type of hub-server, and how each variant answers over HTTP (user error 4xx,
//! server fault 5xx). Every response body is JSON `{"error": …}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use dlv_store::StoreError;

pub type Result<T, E = HubError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required: send `Authorization: Bearer TOKEN`")]
    Unauthorized,
    #[error("invalid or revoked token")]
    BadToken,
    #[error("{0}")]
    Forbidden(String),
    /// `code` is the Hugging Face `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`,
    /// `EntryNotFound`).
    #[error("{what} not found")]
    NotFound { what: String, code: &'static str },
    #[error("{0}")]
    Conflict(String),
    #[error("missing {} object(s); upload them first", .0.len())]
    MissingObjects(Vec<String>),
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Unprocessable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("catalogue database: {0}")]
    Db(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl HubError {
    pub fn not_found(what: impl Into<String>) -> HubError {
        HubError::NotFound {
            what: what.into(),
            code: "RepoNotFound",
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> HubError {
        HubError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            HubError::BadRequest(_) => StatusCode::BAD_REQUEST,
            HubError::Unauthorized | HubError::BadToken => StatusCode::UNAUTHORIZED,
            HubError::Forbidden(_) => StatusCode::FORBIDDEN,
            HubError::NotFound { .. } => StatusCode::NOT_FOUND,
            HubError::Conflict(_) | HubError::MissingObjects(_) => StatusCode::CONFLICT,
            HubError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HubError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            HubError::Store(e) => match e {
                StoreError::UnknownRef(_) => StatusCode::NOT_FOUND,
                StoreError::AmbiguousRef { .. }
                | StoreError::Invalid(_)
                | StoreError::Format { .. } => StatusCode::BAD_REQUEST,
                StoreError::MissingObject { .. } => StatusCode::CONFLICT,
                StoreError::Locked { .. } => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            HubError::Io { .. } | HubError::Db(_) | HubError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl From<sled::Error> for HubError {
    fn from(e: sled::Error) -> Self {
        HubError::Db(e.to_string())
    }
}

impl From<tokio::task::JoinError> for HubError {
    fn from(e: tokio::task::JoinError) -> Self {
        HubError::Internal(format!("worker task failed: {e}"))
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request refused");
        }
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let HubError::MissingObjects(ids) = &self {
            body["missing"] = serde_json::json!(ids);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        let code = match &self {
            HubError::NotFound { code, .. } => Some(*code),
            HubError::Store(StoreError::UnknownRef(_)) => Some("RevisionNotFound"),
            _ => None,
        };
        if let Some(code) = code {
            resp.headers_mut()
                .insert("x-error-code", HeaderValue::from_static(code));
            resp.headers_mut()
                .insert("x-error-message", HeaderValue::from_static("not found"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
