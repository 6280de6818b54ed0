//! Accounts and API tokens, kept in `DATA/users.json`.
//!
//! A token is `dlvhub_` followed by 64 hex digits from the OS random source (256 bits). Only
//! its hash is stored: BLAKE3 of a domain-separation prefix and the token. A slow password hash
//! (argon2) buys nothing for a 256-bit random secret and would cost a few milliseconds on
//! every request. The administrator edits the file with `hub-server user …` while the server
//! runs; the server notices the change (size, mtime, inode) on the next request and reloads.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::error::{HubError, Result};

const TOKEN_PREFIX: &str = "dlvhub_";
const HASH_DOMAIN: &[u8] = b"dlv-hub token v1\0";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<User>,
}

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub created_ms: i64,
    /// Set when every token of the user was revoked.
    #[serde(default)]
    pub revoked_ms: Option<i64>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    /// Hex BLAKE3 of the domain prefix and the token.
    pub hash: String,
    pub created_ms: i64,
}

/// Valid user names: 1 to 39 of `[A-Za-z0-9_-]`, not starting with `-`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=39).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn hash_token(token: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(HASH_DOMAIN);
    h.update(token.as_bytes());
    h.finalize().to_hex().to_string()
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| HubError::Internal(format!("no OS randomness: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// File identity used to notice edits.
type Stamp = Option<(u64, std::time::SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.len(), m.modified().ok()?, ino))
}

/// The accounts, as the server sees them: token hash -> user name, reloaded on change.
pub struct Users {
    path: PathBuf,
    cache: RwLock<(Stamp, HashMap<String, String>)>,
}

impl Users {
    pub fn new(data: &Path) -> Users {
        Users {
            path: data.join("users.json"),
            cache: RwLock::new((None, HashMap::new())),
        }
    }

    fn load(path: &Path) -> Result<UsersFile> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                HubError::Internal(format!("{}: not a users file: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(HubError::io(path.display().to_string(), e)),
        }
    }

    fn save(&self, file: &UsersFile) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let ctx = || self.path.display().to_string();
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| HubError::io(ctx(), e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o600))
                .map_err(|e| HubError::io(ctx(), e))?;
        }
        let json =
            serde_json::to_vec_pretty(file).map_err(|e| HubError::Internal(e.to_string()))?;
        tmp.write_all(&json).map_err(|e| HubError::io(ctx(), e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| HubError::io(ctx(), e))?;
        tmp.persist(&self.path)
            .map_err(|e| HubError::io(ctx(), e.error))?;
        Ok(())
    }

    /// The user a token belongs to; `None` for an unknown or revoked token.
    pub fn authenticate(&self, token: &str) -> Result<Option<String>> {
        let now = stamp(&self.path);
        let stale = match self.cache.read() {
            Ok(c) => c.0 != now || now.is_none(),
            Err(_) => true,
        };
        if stale {
            let file = Users::load(&self.path)?;
            let mut map = HashMap::new();
            for u in &file.users {
                if u.revoked_ms.is_some() {
                    continue;
                }
                for t in &u.tokens {
                    map.insert(t.hash.clone(), u.name.clone());
                }
            }
            if let Ok(mut c) = self.cache.write() {
                *c = (now, map);
            }
        }
        let hash = hash_token(token);
        Ok(self.cache.read().ok().and_then(|c| c.1.get(&hash).cloned()))
    }

    /// Creates a user and returns its first token (shown once, never stored).
    pub fn add(&self, name: &str) -> Result<String> {
        if !valid_user_name(name) {
            return Err(HubError::BadRequest(format!(
                "invalid user name '{name}': use 1 to 39 letters, digits, '_' or '-'"
            )));
        }
        let mut file = Users::load(&self.path)?;
        if file.users.iter().any(|u| u.name == name) {
            return Err(HubError::Conflict(format!(
                "user '{name}' exists; `user token {name}` issues another token"
            )));
        }
        let token = new_token()?;
        let now = chrono::Utc::now().timestamp_millis();
        file.users.push(User {
            name: name.to_string(),
            created_ms: now,
            revoked_ms: None,
            tokens: vec![TokenEntry {
                hash: hash_token(&token),
                created_ms: now,
            }],
        });
        self.save(&file)?;
        Ok(token)
    }

    /// Issues another token for an existing user (re-enabling a revoked one).
    pub fn new_token(&self, name: &str) -> Result<String> {
        let mut file = Users::load(&self.path)?;
        let user = file
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| HubError::not_found(format!("user '{name}'")))?;
        let token = new_token()?;
        user.revoked_ms = None;
        user.tokens.push(TokenEntry {
            hash: hash_token(&token),
            created_ms: chrono::Utc::now().timestamp_millis(),
        });
        self.save(&file)?;
        Ok(token)
    }

    /// Revokes every token of a user.
    pub fn revoke(&self, name: &str) -> Result<usize> {
        let mut file = Users::load(&self.path)?;
        let user = file
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| HubError::not_found(format!("user '{name}'")))?;
        let n = user.tokens.len();
        user.tokens.clear();
        user.revoked_ms = Some(chrono::Utc::now().timestamp_millis());
        self.save(&file)?;
        Ok(n)
    }

    pub fn list(&self) -> Result<Vec<User>> {
        Ok(Users::load(&self.path)?.users)
    }
}
