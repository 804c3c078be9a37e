//! Model names: aliases, per-token allowlists, and Ollama Cloud's name suffixes.
//!
//! In scope: deciding which upstream model a client's model name means, whether a token may
//! use it ([`permit`], the one rule every route applies), and how the name is spelled for a
//! given upstream. Out of scope: finding the names in request bodies (`access`) and where
//! requests go (`relay`). Pure functions only.

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
///
/// Alias names may be globs (`"claude-*" = "glm-4.6"`), for clients that send names of
/// their own (`claude-sonnet-4-5-20250929`, `gpt-5-codex`). An exact name wins; else the
/// most specific glob that matches: the one with the most characters that are not `*` or
/// `?`, then the longest, then the first in name order, so the choice never depends on how
/// the config was written.
pub fn resolve<'a>(aliases: &'a BTreeMap<String, String>, requested: &'a str) -> &'a str {
    if let Some(target) = aliases.get(requested) {
        return target;
    }
    let specificity =
        |pattern: &str| (pattern.chars().filter(|c| !matches!(c, '*' | '?')).count(), pattern.len());
    aliases
        .iter()
        .filter(|(pattern, _)| is_glob(pattern) && glob_match(pattern, requested))
        .max_by(|(a, _), (b, _)| specificity(a).cmp(&specificity(b)).then_with(|| b.cmp(a)))
        .map_or(requested, |(_, target)| target.as_str())
}

/// Whether an alias name is a glob rather than one name.
pub fn is_glob(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// The model a token reaches by asking for `requested`, if its allowlist lets it use that
/// model: the one rule of the gateway, for using a model and for seeing it in a list.
///
/// - An alias is resolved first and its target decides, since the target is what upstream
///   serves: an alias whose own name matches the allowlist but whose target does not is
///   refused, and an alias of an allowed model need not match itself.
/// - `name` and `name:latest` are one model (Ollama reads the first as the second): a
///   pattern that matches either allows both.
/// - A local Ollama's name for a cloud model (`gpt-oss:120b-cloud`, `kimi-k2.6:cloud`) is
///   also allowed by the name Ollama Cloud gives it (`gpt-oss:120b`), which is what it
///   reaches. Not the other way round: on a local Ollama `gpt-oss:120b` runs local weights.
/// - `allowed` of `None` allows every model; an empty list allows none.
pub fn permit<'a>(
    allowed: Option<&[String]>,
    aliases: &'a BTreeMap<String, String>,
    requested: &'a str,
) -> Option<&'a str> {
    let target = resolve(aliases, requested);
    let Some(patterns) = allowed else {
        return Some(target);
    };
    let cloud = cloud_name(target);
    let matched = matches_any(patterns, target) || (cloud != target && matches_any(patterns, &cloud));
    matched.then_some(target)
}

/// Whether a pattern matches `name` or its `:latest` twin.
fn matches_any(patterns: &[String], name: &str) -> bool {
    let twin = latest_twin(name);
    patterns.iter().any(|p| glob_match(p, name) || twin.as_deref().is_some_and(|twin| glob_match(p, twin)))
}

/// The other spelling of the same model: `llama3.2` for `llama3.2:latest` and back.
/// Names with another tag (`qwen3:8b`) or a digest have none.
fn latest_twin(name: &str) -> Option<Cow<'_, str>> {
    // The tag follows the last `:` after the last `/` (`host:port/model` has no tag).
    let last_segment = name.rsplit('/').next().unwrap_or(name);
    match last_segment.rsplit_once(':') {
        Some((model, "latest")) if !model.is_empty() => {
            Some(Cow::Borrowed(&name[..name.len() - ":latest".len()]))
        }
        Some(_) => None,
        None if !last_segment.is_empty() && !last_segment.contains('@') => {
            Some(Cow::Owned(format!("{name}:latest")))
        }
        None => None,
    }
}

/// Whether a model list's entry `listed` is the model `name` (`llama3.2:latest` is
/// `llama3.2`).
pub fn same_model(listed: &str, name: &str) -> bool {
    listed == name || latest_twin(listed).as_deref() == Some(name)
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
    fn glob_aliases_resolve_to_the_most_specific_match() {
        let aliases = BTreeMap::from([
            ("claude-*".to_string(), "glm-4.6".to_string()),
            ("claude-haiku-*".to_string(), "gpt-oss:20b".to_string()),
            ("claude-haiku-4-5".to_string(), "qwen3:8b".to_string()),
            ("gpt-5*".to_string(), "qwen3-coder:480b".to_string()),
            ("*".to_string(), "llama3.2".to_string()),
        ]);
        let cases = [
            ("claude-sonnet-4-5-20250929", "glm-4.6"),
            ("claude-haiku-4-5-20251001", "gpt-oss:20b"),
            ("claude-haiku-4-5", "qwen3:8b"),
            ("gpt-5-codex", "qwen3-coder:480b"),
            ("mistral", "llama3.2"),
        ];
        for (requested, want) in cases {
            assert_eq!(resolve(&aliases, requested), want, "{requested}");
        }
        assert_eq!(resolve(&BTreeMap::new(), "claude-x"), "claude-x");
    }

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
    fn one_rule_for_using_and_seeing_models() {
        let aliases = BTreeMap::from([
            ("gpt-4o-mini".to_string(), "gpt-oss:20b".to_string()),
            ("mini".to_string(), "qwen3:8b".to_string()),
            ("local".to_string(), "llama3.2".to_string()),
        ]);
        let allowed: Vec<String> =
            ["gpt-oss:*", "mini", "llama3.2:latest", "qwen3", "kimi-k2.6", "hf.co/org/model"]
                .map(String::from)
                .to_vec();
        // (requested, the model reached when allowed)
        let cases = [
            ("gpt-oss:20b", Some("gpt-oss:20b")),
            ("gpt-oss-safeguard:20b", None),
            ("gpt-oss", Some("gpt-oss")),
            // An alias: its target decides, whatever its own name.
            ("gpt-4o-mini", Some("gpt-oss:20b")),
            ("mini", None),
            ("local", Some("llama3.2")),
            // `name` and `name:latest` are one model, either way round.
            ("llama3.2", Some("llama3.2")),
            ("llama3.2:latest", Some("llama3.2:latest")),
            ("qwen3:latest", Some("qwen3:latest")),
            ("qwen3:8b", None),
            ("hf.co/org/model:latest", Some("hf.co/org/model:latest")),
            ("localhost:5000/qwen3", None),
            // A local cloud name is allowed by its Ollama Cloud name, not the reverse.
            ("gpt-oss:120b-cloud", Some("gpt-oss:120b-cloud")),
            ("kimi-k2.6:cloud", Some("kimi-k2.6:cloud")),
            ("kimi-k2.6:latest", Some("kimi-k2.6:latest")),
            ("qwen3:cloud", Some("qwen3:cloud")),
            ("deepseek-v3.1:671b-cloud", None),
        ];
        for (requested, want) in cases {
            assert_eq!(permit(Some(&allowed), &aliases, requested), want, "{requested}");
        }
        let cloud_only = vec!["deepseek-v3.1:671b-cloud".to_string()];
        assert_eq!(permit(Some(&cloud_only), &aliases, "deepseek-v3.1:671b"), None, "not the reverse");
        assert_eq!(permit(None, &aliases, "mini"), Some("qwen3:8b"), "no allowlist: all");
        assert_eq!(permit(Some(&[]), &aliases, "gpt-oss:20b"), None, "an empty allowlist: none");
    }

    #[test]
    fn list_entries_name_models_with_or_without_latest() {
        assert!(same_model("llama3.2:latest", "llama3.2"));
        assert!(same_model("llama3.2", "llama3.2"));
        assert!(!same_model("llama3.2:1b", "llama3.2"));
        assert!(same_model("llama3.2", "llama3.2:latest"));
        assert_eq!(latest_twin("llama3.2").as_deref(), Some("llama3.2:latest"));
        assert_eq!(latest_twin("host:5000/ns/model").as_deref(), Some("host:5000/ns/model:latest"));
        assert_eq!(latest_twin(":latest"), None);
        assert_eq!(latest_twin("model@sha256"), None);
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
}
