//! Bearer tokens (the `[auth]` section): who may call the API, with which scope.
//!
//! Tokens live in files, one a line (`#` comments and blank lines ignored), so that a secret
//! never sits in the config or the environment: `read_token_file` holds tokens of scope `read`
//! (queries, evaluation), `admin_token_file` those of scope `admin` (everything `read` may, and
//! writes). With neither file set the API answers anyone who can reach it, which is why it binds
//! to loopback by default. [`Auth::reload`] re-reads the files (on SIGHUP): a token taken out of a
//! file stops working then, and a file that can no longer be read leaves its scope with no token
//! at all rather than with the old ones.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token is compared with each of
//! them in constant time ([`subtle`]), so neither the time of an answer nor a memory dump says
//! what a token is. No token, presented or configured, is ever logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of `read` tokens, one a line.
    pub read_token_file: Option<PathBuf>,
    /// File of `admin` tokens, one a line.
    pub admin_token_file: Option<PathBuf>,
}

impl AuthConfig {
    /// Whether any request needs a token.
    pub fn enabled(&self) -> bool {
        self.read_token_file.is_some() || self.admin_token_file.is_some()
    }
}

/// What a token allows. `Admin` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Admin,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth.{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth.{key}: {path} holds no token (one a line; `#` starts a comment)")]
    Empty { key: &'static str, path: String },
    #[error(
        "auth.{key}: {path}, line {line}: a token is at least {MIN_TOKEN_LEN} characters with no whitespace"
    )]
    Weak {
        key: &'static str,
        path: String,
        line: usize,
    },
}

/// Shortest token accepted: 128 bits written in hex.
pub const MIN_TOKEN_LEN: usize = 32;

type Digest = [u8; 32];

fn digest(token: &[u8]) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

/// The tokens in force: digests per scope.
#[derive(Default)]
struct Tokens {
    read: Vec<Digest>,
    admin: Vec<Digest>,
}

impl Tokens {
    /// The scope `presented` grants, looking at every digest (no early exit on a match).
    fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let presented = digest(presented);
        let matches = |digests: &[Digest]| {
            digests
                .iter()
                .fold(subtle::Choice::from(0), |found, known| {
                    found | known.ct_eq(&presented)
                })
                .into()
        };
        let admin: bool = matches(&self.admin);
        let read: bool = matches(&self.read);
        if admin {
            Some(Scope::Admin)
        } else if read {
            Some(Scope::Read)
        } else {
            None
        }
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<Digest>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        key,
        path: path.display().to_string(),
        source,
    })?;
    let mut digests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.split('#').next().unwrap_or("").trim();
        if token.is_empty() {
            continue;
        }
        if token.len() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
            return Err(AuthError::Weak {
                key,
                path: path.display().to_string(),
                line: index + 1,
            });
        }
        digests.push(digest(token.as_bytes()));
    }
    if digests.is_empty() {
        return Err(AuthError::Empty {
            key,
            path: path.display().to_string(),
        });
    }
    Ok(digests)
}

fn load(config: &AuthConfig) -> Result<Tokens, AuthError> {
    let mut tokens = Tokens::default();
    if let Some(path) = &config.read_token_file {
        tokens.read = read_file("read_token_file", path)?;
    }
    if let Some(path) = &config.admin_token_file {
        tokens.admin = read_file("admin_token_file", path)?;
    }
    Ok(tokens)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum OutcomeKind {
    /// No token, or one no file holds: 401.
    Unauthorized,
    /// A token of too small a scope: 403.
    Forbidden,
}

/// Requests refused, by why.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    refused: Family<Outcome, Counter>,
}

impl AuthMetrics {
    pub fn register(registry: &mut Registry) -> AuthMetrics {
        let metrics = AuthMetrics::default();
        registry.register(
            "http_requests_unauthorized",
            "HTTP requests refused by [auth]: 401 (no valid token) or 403 (too small a scope)",
            metrics.refused.clone(),
        );
        // Every outcome from the start, so that a rate over it is 0 rather than absent.
        for outcome in ["unauthorized", "forbidden"] {
            drop(metrics.refused.get_or_create(&Outcome { outcome }));
        }
        metrics
    }

    fn refused(&self, outcome: OutcomeKind) {
        let outcome = match outcome {
            OutcomeKind::Unauthorized => "unauthorized",
            OutcomeKind::Forbidden => "forbidden",
        };
        self.refused.get_or_create(&Outcome { outcome }).inc();
    }
}

/// The API's gate. Cheap to share; [`Auth::reload`] swaps what it checks against.
pub struct Auth {
    config: ArcSwap<AuthConfig>,
    tokens: ArcSwap<Tokens>,
    metrics: AuthMetrics,
}

impl Auth {
    /// Reads the token files; an unreadable or empty one stops the start.
    pub fn new(config: &AuthConfig, metrics: AuthMetrics) -> Result<Arc<Auth>, AuthError> {
        Ok(Arc::new(Auth {
            tokens: ArcSwap::from_pointee(load(config)?),
            config: ArcSwap::from_pointee(config.clone()),
            metrics,
        }))
    }

    /// Takes `config`'s token files in place of the ones in force. A file that cannot be used
    /// leaves its own scope with no token (nobody is let in with the old ones); the other scope's
    /// file is still taken. The first problem is the error.
    pub fn reload(&self, config: &AuthConfig) -> Result<(), AuthError> {
        self.config.store(Arc::new(config.clone()));
        let read = config
            .read_token_file
            .as_deref()
            .map(|path| read_file("read_token_file", path))
            .transpose();
        let admin = config
            .admin_token_file
            .as_deref()
            .map(|path| read_file("admin_token_file", path))
            .transpose();
        let mut first = None;
        let mut keep = |loaded: Result<Option<Vec<Digest>>, AuthError>| match loaded {
            Ok(digests) => digests.unwrap_or_default(),
            Err(err) => {
                first.get_or_insert(err);
                Vec::new()
            }
        };
        let tokens = Tokens {
            read: keep(read),
            admin: keep(admin),
        };
        self.tokens.store(Arc::new(tokens));
        first.map_or(Ok(()), Err)
    }

    /// `Ok` when a request with these headers may use a route that needs `needed`.
    pub fn check(&self, authorization: Option<&HeaderValue>, needed: Scope) -> Result<(), Refusal> {
        if !self.config.load().enabled() {
            return Ok(());
        }
        let presented = authorization
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let Some(presented) = presented else {
            self.metrics.refused(OutcomeKind::Unauthorized);
            return Err(Refusal::NoToken);
        };
        match self.tokens.load().scope_of(presented.as_bytes()) {
            None => {
                self.metrics.refused(OutcomeKind::Unauthorized);
                Err(Refusal::UnknownToken)
            }
            Some(granted) if granted < needed => {
                self.metrics.refused(OutcomeKind::Forbidden);
                Err(Refusal::Scope { granted, needed })
            }
            Some(_) => Ok(()),
        }
    }
}

/// Why a request was refused; its response is the API's error shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoToken,
    UnknownToken,
    Scope { granted: Scope, needed: Scope },
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs a bearer token (Authorization: Bearer <token>)".to_string(),
            ),
            Refusal::UnknownToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not one this agent holds".to_string(),
            ),
            Refusal::Scope { granted, needed } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this route needs a token of scope `{}`; the one given has scope `{}`",
                    needed.name(),
                    granted.name()
                ),
            ),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mesh-agent\""),
            );
        }
        response
    }
}

/// Which scope a request needs, or `None` for a route anyone may call (health).
pub type Classify = fn(&Method, &str) -> Option<Scope>;

/// Middleware: checks every request against the scope `classify` says its route needs.
pub async fn authorized(
    State((auth, classify)): State<(Arc<Auth>, Classify)>,
    request: Request<Body>,
    next: Next,
) -> Response {
    if let Some(needed) = classify(request.method(), request.uri().path())
        && let Err(refusal) = auth.check(request.headers().get(header::AUTHORIZATION), needed)
    {
        return refusal.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    const READ: &str = "r0000000000000000000000000000000000000001";
    const ADMIN: &str = "a0000000000000000000000000000000000000001";

    #[test]
    fn scopes_are_checked_and_a_reload_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig {
            read_token_file: Some(file(dir.path(), "read", &format!("# readers\n{READ}\n\n"))),
            admin_token_file: Some(file(dir.path(), "admin", ADMIN)),
        };
        let auth = Auth::new(&config, AuthMetrics::default()).unwrap();
        assert_eq!(auth.check(None, Scope::Read), Err(Refusal::NoToken));
        assert_eq!(
            auth.check(Some(&bearer("nope")), Scope::Read),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(auth.check(Some(&bearer(READ)), Scope::Read), Ok(()));
        assert_eq!(
            auth.check(Some(&bearer(READ)), Scope::Admin),
            Err(Refusal::Scope {
                granted: Scope::Read,
                needed: Scope::Admin
            })
        );
        assert_eq!(auth.check(Some(&bearer(ADMIN)), Scope::Read), Ok(()));
        assert_eq!(auth.check(Some(&bearer(ADMIN)), Scope::Admin), Ok(()));
        // Basic credentials are not a bearer token.
        let basic = HeaderValue::from_str(&format!("Basic {READ}")).unwrap();
        assert_eq!(auth.check(Some(&basic), Scope::Read), Err(Refusal::NoToken));

        // The read token is rotated: after the reload the old one no longer works.
        let rotated = "r0000000000000000000000000000000000000002";
        file(dir.path(), "read", rotated);
        auth.reload(&config).unwrap();
        assert_eq!(
            auth.check(Some(&bearer(READ)), Scope::Read),
            Err(Refusal::UnknownToken)
        );
        assert_eq!(auth.check(Some(&bearer(rotated)), Scope::Read), Ok(()));

        // A file gone: nobody gets in with what it held.
        std::fs::remove_file(dir.path().join("admin")).unwrap();
        assert!(matches!(auth.reload(&config), Err(AuthError::Read { .. })));
        assert_eq!(
            auth.check(Some(&bearer(ADMIN)), Scope::Read),
            Err(Refusal::UnknownToken)
        );
    }

    #[test]
    fn without_files_anyone_may_call() {
        let auth = Auth::new(&AuthConfig::default(), AuthMetrics::default()).unwrap();
        assert_eq!(auth.check(None, Scope::Admin), Ok(()));
    }

    #[test]
    fn weak_and_empty_files_are_refused_with_where() {
        let dir = tempfile::tempdir().unwrap();
        let weak = AuthConfig {
            read_token_file: Some(file(dir.path(), "weak", "# ok\nshort\n")),
            admin_token_file: None,
        };
        let err = Auth::new(&weak, AuthMetrics::default()).err().unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
        let empty = AuthConfig {
            read_token_file: None,
            admin_token_file: Some(file(dir.path(), "empty", "# nothing\n")),
        };
        let err = Auth::new(&empty, AuthMetrics::default()).err().unwrap();
        assert!(err.to_string().contains("auth.admin_token_file"), "{err}");
    }
}
