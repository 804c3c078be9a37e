//! Model names: aliases, per-token allowlists, and Ollama Cloud's name suffixes.
//!
//! In scope: deciding which upstream model a client's model name means, whether a token may
//! use it, and how the name is spelled for a given upstream. Out of scope: the request
//! bodies themselves (`translate`) and where requests go (`relay`). Pure functions only.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// Whether `name` matches a shell-style glob: `*` is any run of characters, `?` one.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with backtracking to the last `*`: linear-ish, no recursion.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The model a client's name stands for: its alias target, or itself.
pub fn resolve<'a>(aliases: &'a BTreeMap<String, String>, requested: &'a str) -> &'a str {
    aliases.get(requested).map(String::as_str).unwrap_or(requested)
}

/// Whether a token with allowlist `allowed` (`None` = every model) may use `requested`,
/// which resolves to `target`. Either name matching a pattern is enough, so an operator
/// may allow an alias by its own name.
pub fn is_allowed(allowed: Option<&[String]>, requested: &str, target: &str) -> bool {
    match allowed {
        None => true,
        Some(patterns) => patterns.iter().any(|p| glob_match(p, requested) || glob_match(p, target)),
    }
}

/// Whether an upstream base URL is Ollama Cloud, which names models without the `:cloud`
/// / `-cloud` suffixes a local Ollama uses for them.
pub fn is_ollama_cloud(base_url: &str) -> bool {
    let host = base_url.split("://").nth(1).unwrap_or("").split(['/', ':']).next().unwrap_or("");
    host.eq_ignore_ascii_case("ollama.com") || host.to_ascii_lowercase().ends_with(".ollama.com")
}

/// A model name as Ollama Cloud spells it: `gpt-oss:120b-cloud` → `gpt-oss:120b`,
/// `kimi-k2.6:cloud` → `kimi-k2.6`, `gpt-oss:20b:cloud` → `gpt-oss:20b`. Other names are
/// returned unchanged.
pub fn cloud_name(model: &str) -> Cow<'_, str> {
    if let Some(base) = model.strip_suffix(":cloud") {
        if !base.is_empty() {
            return Cow::Borrowed(base);
        }
    }
    if let Some((name, tag)) = model.rsplit_once(':') {
        if let Some(tag) = tag.strip_suffix("-cloud") {
            if !tag.is_empty() && !name.is_empty() {
                return Cow::Owned(format!("{name}:{tag}"));
            }
        }
    }
    Cow::Borrowed(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("gpt-oss:*", "gpt-oss:20b", true),
            ("gpt-oss:*", "gpt-oss", false),
            ("qwen3*", "qwen3", true),
            ("qwen3*", "qwen3-coder:480b", true),
            ("qwen3*", "qwen2.5", false),
            ("*", "anything/at:all", true),
            ("llama3.?", "llama3.2", true),
            ("llama3.?", "llama3.21", false),
            ("*:latest", "hf.co/org/model:latest", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(glob_match(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn allowlists_accept_the_alias_or_its_target() {
        let allowed = vec!["gpt-oss:*".to_string(), "mini".to_string()];
        assert!(is_allowed(None, "x", "y"));
        assert!(is_allowed(Some(&allowed), "gpt-4o-mini", "gpt-oss:20b"));
        assert!(is_allowed(Some(&allowed), "mini", "qwen3:8b"));
        assert!(!is_allowed(Some(&allowed), "qwen3:8b", "qwen3:8b"));
        assert!(!is_allowed(Some(&[]), "gpt-oss:20b", "gpt-oss:20b"));
    }

    #[test]
    fn aliases_resolve_and_other_names_pass_through() {
        let aliases = BTreeMap::from([("gpt-4o-mini".to_string(), "gpt-oss:20b".to_string())]);
        assert_eq!(resolve(&aliases, "gpt-4o-mini"), "gpt-oss:20b");
        assert_eq!(resolve(&aliases, "llama3.2"), "llama3.2");
    }

    #[test]
    fn cloud_suffixes_are_stripped() {
        let cases = [
            ("gpt-oss:120b-cloud", "gpt-oss:120b"),
            ("kimi-k2.6:cloud", "kimi-k2.6"),
            ("gpt-oss:20b:cloud", "gpt-oss:20b"),
            ("gpt-oss:120b", "gpt-oss:120b"),
            ("llama3.2", "llama3.2"),
            (":cloud", ":cloud"),
            ("model:-cloud", "model:-cloud"),
            ("soundcloud", "soundcloud"),
        ];
        for (name, want) in cases {
            assert_eq!(cloud_name(name), want, "{name}");
        }
    }

    #[test]
    fn ollama_cloud_hosts() {
        assert!(is_ollama_cloud("https://ollama.com"));
        assert!(is_ollama_cloud("https://OLLAMA.com:443"));
        assert!(is_ollama_cloud("https://api.ollama.com"));
        assert!(!is_ollama_cloud("http://127.0.0.1:11434"));
        assert!(!is_ollama_cloud("https://notollama.com"));
    }
}
