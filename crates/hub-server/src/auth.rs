//! Who is calling: the `Authorization: Bearer TOKEN` header resolved to a user. No header is
//! an anonymous caller; a header with an unknown or revoked token is refused (401) everywhere,
//! so a client never mistakes a bad token for anonymous access.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::{HubError, Result};
use crate::Hub;

/// The authenticated user, if any.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<String>);

impl Caller {
    pub fn user(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The user, or 401.
    pub fn require(&self) -> Result<&str> {
        self.0.as_deref().ok_or(HubError::Unauthorized)
    }
}

impl FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = HubError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Caller> {
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Ok(Caller(None));
        };
        let value = value.to_str().map_err(|_| HubError::BadToken)?.trim();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(HubError::BadToken)?;
        if token.is_empty() || token.len() > 256 {
            return Err(HubError::BadToken);
        }
        match hub.users.authenticate(token)? {
            Some(user) => Ok(Caller(Some(user))),
            None => Err(HubError::BadToken),
        }
    }
}

/// Model names on the hub: 1 to 96 of `[A-Za-z0-9_.-]`, no `..` or `--`, not starting with
/// `.` or `-`, not ending with `.git` (the Hugging Face client's repo-id rules; also keeps
/// names safe as path components).
pub fn valid_model_name(name: &str) -> bool {
    (1..=96).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !name.contains("..")
        && !name.contains("--")
        && !name.starts_with(['.', '-'])
        && !name.ends_with(".git")
}

/// Refuses an `owner/name` pair that could not exist (400 rather than a lookup).
pub fn check_repo_id(owner: &str, name: &str) -> Result<()> {
    if !crate::users::valid_user_name(owner) || !valid_model_name(name) {
        return Err(HubError::BadRequest(format!(
            "invalid model id '{owner}/{name}': owner is 1-39 of [A-Za-z0-9_-], name 1-96 of [A-Za-z0-9_.-] without '..' or '--'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        for ok in ["lenet", "alexnet-avgv1", "alexnet_origin", "v1.2", "A9"] {
            assert!(valid_model_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a--b",
            ".hidden",
            "-x",
            "x.git",
            "a b",
            "a\\b",
            "é",
            &"x".repeat(97),
        ] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }
}
