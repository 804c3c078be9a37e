//! The models a Modelfile's `FROM` commands name, read as Ollama reads them.
//!
//! Ollama's `/api/create` took a whole Modelfile as `modelfile` until it moved to `from`
//! and `files` (the field still reaches older servers), and each `FROM` names the model the
//! new one is built from. The gateway cannot know which Ollama it talks to, so
//! [`from_names`] reads the text with both of Ollama's Modelfile parsers (the state machine
//! used since April 2024, and the line scanner before it) and returns every name either
//! would use. Where the state machine's reading could depend on characters Go drops and
//! Rust cannot tell apart (non-ASCII next to quotes, at the start of a command, or inside a
//! `FROM` value), the text is called ambiguous rather than guessed at.
//!
//! In scope: the parsers' syntax (commands, quoting, comments). Out of scope: what a name
//! may be (`rule`, `access`). Pure functions only.

/// Why a Modelfile's `FROM` names could not be told.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable(pub String);

/// Every model (or path, or blob) a `FROM` command of `text` names, for either parser.
pub fn from_names(text: &str) -> Result<Vec<String>, Unreadable> {
    let mut names = match state_machine(text) {
        Ok(names) => names,
        Err(Reading::Ambiguous(why)) => return Err(Unreadable(why)),
        // Newer Ollamas refuse the file: only an older one could build from it.
        Err(Reading::Invalid(why)) => match line_scanner(text) {
            Some(names) => names,
            None => return Err(Unreadable(why)),
        },
    };
    for name in line_scanner(text).unwrap_or_default() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

enum Reading {
    /// Ollama refuses the text too.
    Invalid(String),
    /// Ollama's reading depends on what Go's tables say about a character.
    Ambiguous(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Nil,
    Name,
    Value,
    Parameter,
    Message,
    Comment,
}

const COMMANDS: &[&str] = &[
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
];

/// Ollama's current parser (`parser.ParseFile`), rune by rune, keeping only the `FROM`
/// arguments.
fn state_machine(text: &str) -> Result<Vec<String>, Reading> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let invalid = |why: &str| Reading::Invalid(why.to_string());
    let (mut state, mut buffer, mut is_from) = (State::Nil, String::new(), false);
    let mut names = Vec::new();
    for c in text.chars() {
        let space = c == ' ' || c == '\t';
        let newline = c == '\r' || c == '\n';
        // Go's `parseRuneForState`: the next state, and whether the rune is handed on to
        // the buffer (it is kept there when Go calls it printable).
        let (mut next, handed_on) = match state {
            State::Nil if c == '#' => (State::Comment, false),
            State::Nil if space || newline => (State::Nil, false),
            State::Nil if !c.is_ascii() => {
                // Go starts a command name with it, and keeps it only if it is printable.
                return Err(Reading::Ambiguous(format!("the character {c:?} starts a line")));
            }
            State::Nil => (State::Name, true),
            State::Name if c.is_ascii_alphabetic() => (State::Name, true),
            State::Name if space => (State::Value, false),
            State::Name => return Err(invalid("a command must be one word followed by a space")),
            State::Value if newline || space => (State::Nil, true),
            State::Value => (State::Value, true),
            State::Parameter if c.is_ascii_alphanumeric() || c == '_' => (State::Parameter, true),
            State::Message if c.is_ascii_alphabetic() => (State::Message, true),
            State::Parameter | State::Message if space => (State::Value, false),
            State::Parameter | State::Message => return Err(invalid("unexpected end of a command")),
            State::Comment if newline => (State::Nil, false),
            State::Comment => (State::Comment, false),
        };
        if next != state {
            match state {
                State::Name => {
                    let command = buffer.to_ascii_lowercase();
                    if !COMMANDS.contains(&command.as_str()) {
                        return Err(invalid("unknown command"));
                    }
                    is_from = command == "from";
                    next = match command.as_str() {
                        "parameter" => State::Parameter,
                        "message" => State::Message,
                        _ => next,
                    };
                }
                State::Value => {
                    // A space, or a newline inside quotes: the value goes on.
                    let closed = if space { None } else { unquote(&buffer)? };
                    if closed.is_none() {
                        buffer.push(c);
                        continue;
                    }
                    if is_from {
                        names.push(from_value(closed.unwrap_or_default())?);
                    }
                    is_from = false;
                }
                State::Parameter | State::Message | State::Comment | State::Nil => {}
            }
            buffer.clear();
            state = next;
        }
        // For ASCII, Go's printable runes are the graphic ones and the space; whether Go
        // keeps a non-ASCII one matters only where `unquote` and `from_value` look.
        if handed_on && (!c.is_ascii() || (' '..='~').contains(&c)) {
            buffer.push(c);
        }
    }
    match state {
        State::Nil | State::Comment => {}
        State::Value => match unquote(&buffer)? {
            Some(value) if is_from => names.push(from_value(value)?),
            Some(_) => {}
            None => return Err(invalid("an unclosed quote")),
        },
        _ => return Err(invalid("the file ends inside a command")),
    }
    Ok(names)
}

/// The value of a finished `FROM` (a model name is printable ASCII; other characters may
/// have been dropped by Go, so the name Ollama reads is not known).
fn from_value(value: String) -> Result<String, Reading> {
    match value.chars().all(|c| (' '..='~').contains(&c)) {
        true => Ok(value),
        false => Err(Reading::Ambiguous(format!("FROM {value:?} holds characters other than ASCII"))),
    }
}

/// Go's `unquote(strings.TrimSpace(value))`: the value without its quotes, or `None` while
/// a quote is open. Only the first and last three ASCII characters other than spaces (and
/// what lies around them) decide whether the value is quoted; where non-ASCII characters,
/// which Go may have dropped, sit there beside a quote, the answer is not known.
fn unquote(buffer: &str) -> Result<Option<String>, Reading> {
    let value = buffer.trim();
    let significant = |c: &char| c.is_ascii() && !c.is_ascii_whitespace();
    let edge = |chars: &mut dyn Iterator<Item = char>| {
        let (mut seen, mut quote, mut other) = (0, false, false);
        for c in chars {
            if seen == 3 {
                break;
            }
            seen += usize::from(significant(&c));
            quote |= c == '"';
            other |= !c.is_ascii();
        }
        quote && other
    };
    if edge(&mut value.chars()) || edge(&mut value.chars().rev()) {
        return Err(Reading::Ambiguous(format!("non-ASCII characters next to quotes in {value:?}")));
    }
    Ok(if let Some(inner) = value.strip_prefix("\"\"\"") {
        (value.len() >= 6 && value.ends_with("\"\"\"")).then(|| inner[..inner.len() - 3].to_string())
    } else if let Some(inner) = value.strip_prefix('"') {
        (value.len() >= 2 && value.ends_with('"')).then(|| inner[..inner.len() - 1].to_string())
    } else {
        Some(value.to_string())
    })
}

/// Ollama's parser before April 2024 (`parser.Parse` with `scanModelfile`): tokens are
/// lines, except that a `"""` (or else a `"`) on a line opens a token that runs to the
/// next one, quotes removed; a token whose first space-separated word is `FROM` names a
/// model. `None` when it fails (an unclosed quote).
fn line_scanner(text: &str) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (token, advance) = match quoted_token(rest, "\"\"\"")? {
            Some(found) => found,
            None => match quoted_token(rest, "\"")? {
                Some(found) => found,
                None => {
                    let (line, advance) = match rest.find('\n') {
                        Some(at) => (&rest[..at], at + 1),
                        None => (rest, rest.len()),
                    };
                    (line.strip_suffix('\r').unwrap_or(line).to_string(), advance)
                }
            },
        };
        rest = &rest[advance..];
        if let Some((command, args)) = token.split_once(' ') {
            if command.eq_ignore_ascii_case("from") {
                names.push(args.trim().to_string());
            }
        }
    }
    Some(names)
}

/// Go's `scan(open, close, data, atEOF)` over the rest of the text: the token (the text
/// before the quote, then the quoted text) and how far it reaches, when `quote` opens
/// before the first newline; `Err` (`None`) when it never closes.
fn quoted_token(rest: &str, quote: &str) -> Option<Option<(String, usize)>> {
    let Some(newline) = rest.find('\n') else {
        return Some(None);
    };
    let Some(start) = rest.find(quote).filter(|start| *start < newline) else {
        return Some(None);
    };
    let body = start + quote.len();
    let end = body + rest[body..].find(quote)?;
    Some(Some((format!("{}{}", &rest[..start], &rest[body..end]), end + quote.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<String>, Unreadable> {
        from_names(text)
    }

    fn ok(list: &[&str]) -> Result<Vec<String>, Unreadable> {
        Ok(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn from_lines_as_ollama_reads_them() {
        let cases: [(&str, &[&str]); 12] = [
            ("FROM llama3.2\n", &["llama3.2"]),
            ("from qwen3:8b", &["qwen3:8b"]),
            ("FrOm \"qwen3:8b\"\nSYSTEM hi\n", &["qwen3:8b"]),
            ("  FROM\tqwen3\r\n", &["qwen3"]),
            ("# FROM commented\nFROM a\nFROM b\n", &["a", "b"]),
            ("\u{feff}FROM bom\n", &["bom"]),
            ("FROM ./model.gguf\n", &["./model.gguf"]),
            ("FROM @sha256:abc\n", &["@sha256:abc"]),
            ("FROM qwen3 # not a comment\n", &["qwen3 # not a comment"]),
            ("SYSTEM \"\"\"\nFROM inside a quote\n\"\"\"\nFROM real\n", &["real"]),
            ("PARAMETER stop \"\nFROM x\n\"\nFROM y\n", &["y"]),
            ("FROM qw\u{1}en3\n", &["qwen3", "qw\u{1}en3"]),
        ];
        for (text, want) in cases {
            assert_eq!(names(text), ok(want), "{text:?}");
        }
    }

    #[test]
    fn what_either_parser_reads_counts() {
        // The old scanner ends a `"""` token at the next `"""`, and reads the line after it;
        // the current parser reads the whole thing as one SYSTEM value.
        let text = "SYSTEM \"\"\"a\"\"\"b\nFROM hidden\nc\"\"\"d\"\"\"\nFROM base\n";
        assert_eq!(names(text), ok(&["base", "hidden"]));
        // The current parser reads an indented or tab-separated FROM; the old one did not.
        assert_eq!(names(" FROM a\nFROM\tb\n"), ok(&["a", "b"]));
        // Refused by the current parser (a command after a quote), read by the old one.
        assert_eq!(names("SYSTEM \"\"\"x\"\"\"FROM evil\n"), ok(&["evil"]));
    }

    #[test]
    fn texts_whose_reading_is_unsure_are_unreadable() {
        for text in [
            "SYSTEM \"\"\"hi\"\"\"\u{378}\nFROM evil\nx\"\"\"\n",
            "\u{200b}FROM evil\n",
            "FROM qw\u{200b}en3\n",
            "SYSTEM \"\"\"unclosed\n",
        ] {
            assert!(names(text).is_err(), "{text:?}: {:?}", names(text));
        }
        assert_eq!(names("NOPE x\n"), ok(&[]), "no FROM: Ollama refuses it, nothing to check");
        assert_eq!(names("SYSTEM \"\"\"été 🌞 ok\"\"\"\nFROM a\n"), ok(&["a"]), "non-ASCII inside is fine");
        assert_eq!(names("SYSTEM \"\"\"\nLigne avec é\n\"\"\"\nFROM a\n"), ok(&["a"]));
        assert!(names("SYSTEM \"é\"\"\nFROM hidden\n\"\"\"\n").is_err(), "`\"\"\"` if Go drops the é");
    }
}
