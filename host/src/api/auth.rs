//! Bearer tokens of the API (issue 9): generation, hashing, and the cache of
//! token hashes the middleware (`api::require_role`) checks requests against.
//!
//! The store keeps only the hex sha256 of a token (`TokenRecord`). The cache
//! is loaded from the store on the first request and refreshed by the API's
//! own token routes; a token created or revoked offline (`cairn token …
//! --data DIR` on a stopped host) is seen after the next start.

use axum::http::Method;
use cairn_store::{Role, Store, StoreError, TokenRecord};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio::sync::RwLock;

/// The hex sha256 of a token: what the store keeps.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token and its record: the token is shown once, the record stored.
pub fn new_token(role: Role, note: &str, now_ms: u64) -> (String, TokenRecord) {
    let token = format!("cairn_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let id = format!("tok-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let record = TokenRecord { id, role, hash: hash_token(&token), created_ms: now_ms, note: note.to_string() };
    (token, record)
}

/// The role a request needs: `None` for `GET /v1/health`, the OpenAPI
/// document `GET /v1/openapi.json` (the contract is no secret: clients are
/// generated from it) and the web console's static assets (the page asks
/// for a token); admin for backups
/// and tokens; worker for the task routes of workers (`POST /v1/tasks/…`,
/// which operator and admin may use too); reader for every other GET;
/// operator for the rest.
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    if (path == "/v1/health" || path == "/v1/openapi.json" || crate::console::is_public_asset(path)) && method == Method::GET {
        return None;
    }
    if path == "/v1/backup" || path == "/v1/tokens" || path.starts_with("/v1/tokens/") {
        return Some(Role::Admin);
    }
    // Workers poll, complete, fail and heartbeat tasks (role worker, or operator and up).
    if path.starts_with("/v1/tasks/") && method == Method::POST {
        return Some(Role::Worker);
    }
    if method == Method::GET || method == Method::HEAD {
        Some(Role::Reader)
    } else {
        Some(Role::Operator)
    }
}

/// Token hashes -> (id, role), loaded from the store on first use.
#[derive(Default)]
pub struct TokenCache {
    by_hash: RwLock<Option<HashMap<String, (String, Role)>>>,
}

impl TokenCache {
    /// Reads the tokens from the store again.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let tokens = store.tokens().await?;
        let map = tokens.into_iter().map(|t| (t.hash, (t.id, t.role))).collect();
        *self.by_hash.write().await = Some(map);
        Ok(())
    }

    /// Whether any token exists, and the role of `token` if it is one.
    pub async fn lookup(&self, store: &Store, token: Option<&str>) -> Result<(bool, Option<Role>), StoreError> {
        if self.by_hash.read().await.is_none() {
            self.refresh(store).await?;
        }
        let guard = self.by_hash.read().await;
        let map = guard.as_ref().expect("loaded above");
        let role = token.and_then(|t| map.get(&hash_token(t))).map(|(_, role)| *role);
        Ok((!map.is_empty(), role))
    }
}
