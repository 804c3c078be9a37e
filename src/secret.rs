//! Secrets (upstream keys and client tokens) in a type that cannot leak through logs.
//!
//! [`Secret`] prints only a mask (`abcd…wxyz`) through both `Debug` and `Display`, so no
//! `{:?}` or `{}` anywhere in the program can write a whole key. The raw text is reachable
//! only through [`Secret::expose`], which the upstream request builder alone calls.
//! Token digests are compared in constant time by [`digest_eq`].

use sha2::{Digest, Sha256};
use std::fmt;

/// A key or token whose text is never printed whole.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret string.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The raw text, for the one place that must send it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form: the first and last four characters, or `…` alone when the
    /// secret is too short for that to hide most of it.
    pub fn mask(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.mask())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.mask())
    }
}

/// Masks a secret as `abcd…wxyz`; secrets under 12 characters become `…` entirely.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "…".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// The SHA-256 digest of a token.
pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The SHA-256 digest of a token as lowercase hex, the form stored in the config.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha256(text))
}

/// Compares two digests in time independent of where they differ.
///
/// ```
/// use ollama_gateway::secret::{digest_eq, sha256};
/// assert!(digest_eq(&sha256("sk-a"), &sha256("sk-a")));
/// assert!(!digest_eq(&sha256("sk-a"), &sha256("sk-b")));
/// ```
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the fold into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_whole_secret() {
        let key = Secret::new("0123456789abcdef.ZYXWVUTSRQPONMLK");
        assert_eq!(format!("{key}"), "0123…NMLK");
        assert_eq!(format!("{key:?}"), "Secret(0123…NMLK)");
        assert!(!format!("{key:?}").contains("456789"));
    }

    #[test]
    fn short_secrets_are_hidden_entirely() {
        assert_eq!(mask("sk-short"), "…");
        assert_eq!(mask(""), "…");
    }

    #[test]
    fn sha256_hex_matches_known_vector() {
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
