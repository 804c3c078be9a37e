//! Client authentication: which configured token, if any, a request carries, and what a
//! token is ([`Token`], its [`Scope`]s).
//!
//! Clients send `Authorization: Bearer TOKEN` (or `x-api-key: TOKEN`). The token is hashed
//! with SHA-256 and compared against every configured digest in constant time, without an
//! early exit, so neither a match nor its position shows in the timing. Errors never echo
//! the token presented.

use crate::error::ApiError;
use crate::secret::{digest_eq, sha256};
use serde::Deserialize;

/// A family of calls a token may be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Chat, generate, embeddings, and the whole OpenAI `/v1` API.
    Inference,
    /// Listing and describing models: `/api/tags`, `show`, `ps`, `version`.
    Models,
    /// Changing models: `/api/pull`, `push`, `create`, `copy`, `delete`, `blobs`.
    Manage,
    /// Operating the gateway: the admin API (`/admin/api/…`) and `/metrics` from outside
    /// `[metrics] allow_from`. Never among the default scopes.
    Admin,
}

/// A client token as the gateway checks it.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name, for logs.
    pub name: String,
    /// SHA-256 of the token text.
    pub digest: [u8; 32],
    /// The pool it draws keys from.
    pub pool: String,
    /// Every pool it may use, the default one first.
    pub pools: Vec<String>,
    /// Model globs it may use; `None`: every model.
    pub models: Option<Vec<String>>,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Its rate, concurrency, expiry and address limits (`crate::limits` enforces them).
    pub limits: TokenLimits,
}

/// The limits of one token, as `config.toml` sets them; `None` (or empty): no such limit.
#[derive(Debug, Clone, Default)]
pub struct TokenLimits {
    /// Requests it may start in any 60 seconds.
    pub rpm: Option<u32>,
    /// Requests it may have in flight at once (a stream until it ends).
    pub max_concurrent: Option<u32>,
    /// Prompt and completion tokens it may use in a UTC day.
    pub daily_tokens: Option<u64>,
    /// Unix seconds from which it is refused.
    pub expires: Option<u64>,
    /// The address blocks it may be used from; `None`: anywhere.
    pub ips: Option<Vec<crate::cidr::Cidr>>,
}

/// Who a request is from.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// A configured token.
    Token(&'a Token),
    /// No valid token, and the config allows that (`allow_anonymous = true`).
    Anonymous,
}

/// The token text a request carries, from `Authorization: Bearer …` or `x-api-key`.
/// `header` looks a header up by its lowercase name.
pub fn presented_token<'h>(header: impl Fn(&str) -> Option<&'h str>) -> Option<&'h str> {
    if let Some(value) = header("authorization") {
        let value = value.trim();
        let token = match value.get(..6) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer") => value[6..].trim(),
            _ => value,
        };
        if !token.is_empty() {
            return Some(token);
        }
    }
    header("x-api-key").map(str::trim).filter(|t| !t.is_empty())
}

/// Finds the configured token matching `presented`, or answers why the request is refused.
pub fn authenticate<'a>(
    tokens: &'a [Token],
    presented: Option<&str>,
    allow_anonymous: bool,
) -> Result<Caller<'a>, ApiError> {
    let found = presented.and_then(|text| {
        let digest = sha256(text);
        // Visit every token so the time taken does not depend on which one matches.
        tokens.iter().fold(None, |found, token| match digest_eq(&token.digest, &digest) {
            true => Some(token),
            false => found,
        })
    });
    match (found, presented) {
        (Some(token), _) => Ok(Caller::Token(token)),
        // With tokens configured, a wrong one is refused even when anonymous use is
        // allowed: a typo must show, not silently land in the anonymous pool. With none
        // configured, clients that insist on sending some key ("ollama") are let through.
        (None, None) if allow_anonymous => Ok(Caller::Anonymous),
        (None, Some(_)) if allow_anonymous && tokens.is_empty() => Ok(Caller::Anonymous),
        (None, None) => Err(ApiError::invalid_api_key(
            "missing API key: send your gateway token as `Authorization: Bearer <token>`",
        )),
        (None, Some(_)) => Err(ApiError::invalid_api_key(
            "invalid API key: this token is not configured on the gateway (check for typos, or ask \
             the operator for a token)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::sha256;

    fn tokens() -> Vec<Token> {
        ["sk-alice", "sk-bob"]
            .iter()
            .map(|t| Token {
                name: t[3..].to_string(),
                digest: sha256(t),
                pool: "default".into(),
                pools: vec!["default".into()],
                models: None,
                scopes: Vec::new(),
                limits: TokenLimits::default(),
            })
            .collect()
    }

    #[test]
    fn bearer_and_x_api_key_are_both_read() {
        let headers = |auth: Option<&'static str>, key: Option<&'static str>| {
            move |name: &str| match name {
                "authorization" => auth,
                "x-api-key" => key,
                _ => None,
            }
        };
        assert_eq!(presented_token(headers(Some("Bearer sk-a"), None)), Some("sk-a"));
        assert_eq!(presented_token(headers(Some("bearer  sk-a "), None)), Some("sk-a"));
        assert_eq!(presented_token(headers(None, Some("sk-b"))), Some("sk-b"));
        assert_eq!(presented_token(headers(Some("Bearer "), Some("sk-b"))), Some("sk-b"));
        assert_eq!(presented_token(headers(None, None)), None);
    }

    #[test]
    fn the_matching_token_is_found() {
        let tokens = tokens();
        match authenticate(&tokens, Some("sk-bob"), false) {
            Ok(Caller::Token(token)) => assert_eq!(token.name, "bob"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_and_wrong_tokens_get_401_without_echo() {
        let tokens = tokens();
        let missing = authenticate(&tokens, None, false).unwrap_err();
        assert_eq!((missing.status, missing.code), (401, Some("invalid_api_key")));
        let wrong = authenticate(&tokens, Some("sk-mallory-secret"), false).unwrap_err();
        assert_eq!(wrong.status, 401);
        assert!(!wrong.message.contains("mallory"));
    }

    #[test]
    fn anonymous_is_served_only_when_allowed() {
        assert!(matches!(authenticate(&[], None, true), Ok(Caller::Anonymous)));
        assert!(matches!(authenticate(&[], Some("ollama"), true), Ok(Caller::Anonymous)));
        assert!(matches!(authenticate(&tokens(), None, true), Ok(Caller::Anonymous)));
        assert!(authenticate(&tokens(), Some("sk-nope"), true).is_err(), "a wrong token is still refused");
        assert!(authenticate(&[], None, false).is_err());
    }
}
