//! Optional bearer-token authentication of the public API.
//!
//! `API_TOKENS` holds one or more tokens (separated by commas or whitespace; the chart
//! fills it from a Secret). When it is set, every public route except `GET /health`
//! needs `Authorization: Bearer <token>`, else 401. When it is unset the API is
//! unauthenticated and must sit behind an authenticating ingress (docs/api-server.md).
//!
//! Tokens are compared as SHA-256 digests with a constant-time equality over every
//! configured token, so neither the position of the first wrong byte nor which token
//! matched shows in the timing. The digest of the matching token also names the caller:
//! idempotency keys are scoped to it, so two callers never share a key.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use qwp_jobs::config::{ConfigError, Vars};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::errors::ApiError;
use crate::upload;

/// Shorter tokens are refused at start: they could be guessed.
pub const MIN_TOKEN_BYTES: usize = 16;

/// The accepted tokens, as digests (the tokens themselves are not kept).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

/// Who called: the digest prefix of the token used, or nobody when auth is off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(pub String);

impl Tokens {
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let Some(raw) = vars.optional("API_TOKENS") else {
            return Ok(Tokens::default());
        };
        Self::parse(&raw).map_err(|reason| ConfigError {
            name: "API_TOKENS".into(),
            // Never echo a secret into the log.
            value: "(hidden)".into(),
            reason,
        })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut digests = Vec::new();
        for token in raw.split(|c: char| c == ',' || c.is_whitespace()) {
            if token.is_empty() {
                continue;
            }
            if token.len() < MIN_TOKEN_BYTES {
                return Err(format!(
                    "every token must be at least {MIN_TOKEN_BYTES} bytes long"
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err("tokens must be printable ASCII without spaces".into());
            }
            digests.push(digest(token.as_bytes()));
        }
        if digests.is_empty() {
            return Err("set at least one token, or unset the variable".into());
        }
        Ok(Tokens {
            digests: Arc::new(digests),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The caller presenting `token`, if it is one of ours. Every configured token is
    /// compared, matching or not.
    pub fn check(&self, token: &[u8]) -> Option<Caller> {
        let presented = digest(token);
        let mut found: Option<&[u8; 32]> = None;
        for candidate in self.digests.iter() {
            if bool::from(candidate.ct_eq(&presented)) {
                found = Some(candidate);
            }
        }
        found.map(|d| Caller(crate::idempotency::hex(&d[..8])))
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// `Authorization: Bearer <token>`, scheme case-insensitive (RFC 7235).
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Middleware on the authenticated routes: 401 without a valid token (before any byte
/// of the body is used), the [`Caller`] in the request extensions otherwise.
pub async fn require_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let tokens = &state.settings.tokens;
    if tokens.is_empty() {
        request.extensions_mut().insert(Caller::default());
        return next.run(request).await;
    }
    match bearer(&request).and_then(|token| tokens.check(token)) {
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        None => {
            state.metrics.auth_failures.inc();
            let (parts, body) = request.into_parts();
            upload::discard(&state, &parts.headers, body).await;
            let mut response = ApiError::Unauthorized.into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="qwp""#),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_match() {
        let tokens = Tokens::parse("first-token-0123456789, second-token-0123456789\n").unwrap();
        let first = tokens.check(b"first-token-0123456789").unwrap();
        let second = tokens.check(b"second-token-0123456789").unwrap();
        assert_ne!(first, second, "callers are told apart");
        assert!(tokens.check(b"first-token-012345678").is_none());
        assert!(tokens.check(b"").is_none());
        assert!(Tokens::parse("short").is_err());
        assert!(Tokens::parse(" , ").is_err());
        assert!(Tokens::parse("0123456789abcdef\u{7f}").is_err());
    }

    #[test]
    fn errors_never_show_the_value() {
        let err =
            Tokens::from_vars(&Vars::from_pairs(&[("API_TOKENS", "tiny-secret")])).unwrap_err();
        assert_eq!(err.name, "API_TOKENS");
        assert!(!err.to_string().contains("tiny-secret"), "{err}");
        assert!(format!("{:?}", Tokens::parse("x".repeat(20).as_str()).unwrap()).contains('1'));
    }

    #[test]
    fn bearer_header_forms() {
        let with = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&with("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&with("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer")), None);
    }
}
