//! Adding lines to a keys file on disk: where in a pool's section they go, and replacing
//! the file so that no reader ever sees half of it.
//!
//! In scope: finding the end of a section in keys.txt text ([`place`]) and swapping the
//! new text in atomically with the old file's permissions ([`replace`]). Every byte of the
//! old file is kept, comments, order and line endings included. Out of scope: what the
//! lines say (`keys`), which lines to add (`import`).

use crate::keys;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// keys.txt with the new lines in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Placed {
    /// The whole new file.
    pub text: String,
    /// The 1-based line number of the first new line.
    pub first_line: usize,
    /// Whether a `[pool]` header was added for them.
    pub new_section: bool,
}

/// What a line of keys.txt is, for finding where a section ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Header(String),
    Entry,
    Comment,
    Blank,
}

/// Puts `lines` at the end of `pool`'s section of `text` (its last one, if it has several),
/// or in a new `[pool]` section at the end. Every byte of `text` is kept, in order; the new
/// lines get the file's line ending, and a last line without one gets one.
///
/// The end of a section is after its last line that is not blank, not counting the
/// comments right above the next header (they describe that header). Lines before any
/// header are pool `default`: that section exists when it holds an entry or the file has
/// no header at all; else `default` too gets a `[default]` header at the end.
pub fn place(text: &str, pool: &str, lines: &[String]) -> Placed {
    let eol = match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    };
    let raw: Vec<&str> = text.split_inclusive('\n').collect();
    let kinds: Vec<Kind> = raw
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let line = if i == 0 { line.trim_start_matches('\u{feff}') } else { line };
            match keys::header_name(line) {
                Some(name) => Kind::Header(name),
                None if line.trim().is_empty() => Kind::Blank,
                None if line.trim_start().starts_with('#') => Kind::Comment,
                None => Kind::Entry,
            }
        })
        .collect();
    let headers: Vec<usize> = (0..kinds.len()).filter(|&i| matches!(kinds[i], Kind::Header(_))).collect();
    // Sections as (first line of its body, end): the header's own line is not in it.
    let mut sections: Vec<(String, usize, usize)> = Vec::new();
    let preamble_end = headers.first().copied().unwrap_or(kinds.len());
    if headers.is_empty() || kinds[..preamble_end].contains(&Kind::Entry) {
        sections.push((keys::DEFAULT_POOL.to_string(), 0, preamble_end));
    }
    for (n, &at) in headers.iter().enumerate() {
        let end = headers.get(n + 1).copied().unwrap_or(kinds.len());
        if let Kind::Header(name) = &kinds[at] {
            sections.push((name.clone(), at + 1, end));
        }
    }
    let mut out = String::with_capacity(text.len() + lines.iter().map(|l| l.len() + 2).sum::<usize>() + 32);
    let mut new = String::new();
    for line in lines {
        new.push_str(line);
        new.push_str(eol);
    }
    let ends_open = !text.is_empty() && !text.ends_with('\n');
    match sections.iter().rev().find(|(name, ..)| name == pool) {
        Some(&(_, start, end)) => {
            let mut at = end;
            if end < kinds.len() {
                while at > start && kinds[at - 1] == Kind::Comment {
                    at -= 1;
                }
            }
            while at > start && kinds[at - 1] == Kind::Blank {
                at -= 1;
            }
            raw[..at].iter().for_each(|line| out.push_str(line));
            if at == raw.len() && ends_open {
                out.push_str(eol);
            }
            out.push_str(&new);
            raw[at..].iter().for_each(|line| out.push_str(line));
            Placed { text: out, first_line: at + 1, new_section: false }
        }
        None => {
            out.push_str(text);
            if ends_open {
                out.push_str(eol);
            }
            let mut first_line = raw.len() + 1;
            if kinds.last().is_some_and(|kind| *kind != Kind::Blank) {
                out.push_str(eol);
                first_line += 1;
            }
            out.push_str(&format!("[{pool}]{eol}"));
            out.push_str(&new);
            Placed { text: out, first_line: first_line + 1, new_section: true }
        }
    }
}

/// Replaces the keys file with `after` atomically: a temporary file in the same folder,
/// with the old file's permissions (0600 for a new one: it holds keys), written and
/// synced, then renamed over it; a reader sees the old file or the new one, never a part.
/// `before` is what the file held when it was read: if it changed since, nothing is
/// written, rather than undo someone else's edit.
pub fn replace(path: &Path, before: &[u8], after: &[u8]) -> Result<(), String> {
    let fail = |what: &str, err: io::Error| format!("{what}: {err}; the file is unchanged");
    // Through a symlink, the file it points to is replaced, and the link kept.
    let target = match fs::canonicalize(path) {
        Ok(target) => target,
        Err(err) if err.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(err) => return Err(fail("cannot resolve the keys file's path", err)),
    };
    let now = match fs::read(&target) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(fail("cannot read the keys file again", err)),
    };
    if now != before {
        return Err(
            "the file changed while the keys were checked; nothing was written: run the import again".into(),
        );
    }
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = target.file_name().map_or("keys.txt".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let written = write_new(&temp, &target, after);
    let renamed = written.and_then(|()| fs::rename(&temp, &target));
    if let Err(err) = renamed {
        let _ = fs::remove_file(&temp);
        return Err(fail(&format!("cannot write {}", temp.display()), err));
    }
    // The rename is durable once the folder is synced; the file is in place either way.
    if let Err(err) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        log::warn!("{}: written, but syncing its folder failed: {err}", path.display());
    }
    Ok(())
}

/// Writes and syncs `temp` with `bytes`, with `like`'s permissions (0600 when it is new).
fn write_new(temp: &Path, like: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(temp);
    let mut file = match open() {
        // Left by an earlier run of this process id that was killed: ours to replace.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(temp)?;
            open()?
        }
        opened => opened?,
    };
    if let Ok(meta) = fs::metadata(like) {
        file.set_permissions(meta.permissions())?;
        // The gateway may run as another user (`sudo ollama-gateway keys import`): the
        // file stays its owner's. Only root may give a file away; others keep theirs.
        use std::os::unix::fs::MetadataExt;
        match std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid())) {
            Err(err) if err.kind() != io::ErrorKind::PermissionDenied => return Err(err),
            _ => {}
        }
    }
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(list: &[&str]) -> Vec<String> {
        list.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn new_lines_go_to_the_end_of_their_section_or_a_new_one() {
        let new = lines(&["K1", "K2"]);
        // (keys.txt, pool, keys.txt after, first new line, new section)
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, usize, bool)] = &[
            // The section's last line; the blank line and the comment above the next header stay with it.
            ("[a]\nA\n\n# about b\n[b]\nB\n", "a", "[a]\nA\nK1\nK2\n\n# about b\n[b]\nB\n", 3, false),
            // The last section: after its last line, before trailing blank lines.
            ("[a]\nA\n[b]\nB\n# disabled: C\n\n\n", "b", "[a]\nA\n[b]\nB\n# disabled: C\nK1\nK2\n\n\n", 6, false),
            // A header with a comment, and a section with nothing in it yet.
            ("[a] # paid\n[b]\nB\n", "a", "[a] # paid\nK1\nK2\n[b]\nB\n", 2, false),
            // A pool written twice: its last section.
            ("[a]\nA\n[b]\nB\n[a]\nA2\n[c]\n", "a", "[a]\nA\n[b]\nB\n[a]\nA2\nK1\nK2\n[c]\n", 7, false),
            // Lines before any header are pool default.
            ("# keys\nD\n\n[a]\nA\n", "default", "# keys\nD\nK1\nK2\n\n[a]\nA\n", 3, false),
            ("# keys\n", "default", "# keys\nK1\nK2\n", 2, false),
            ("", "default", "K1\nK2\n", 1, false),
            // ... or its own header, when the file has headers and no default keys.
            ("# keys\n\n[a]\nA\n", "default", "# keys\n\n[a]\nA\n\n[default]\nK1\nK2\n", 7, true),
            ("[default]\nD\n[a]\nA\n", "default", "[default]\nD\nK1\nK2\n[a]\nA\n", 3, false),
            // A new section: after a blank line, unless the file ends with one.
            ("[a]\nA\n", "b", "[a]\nA\n\n[b]\nK1\nK2\n", 5, true),
            ("[a]\nA\n\n", "b", "[a]\nA\n\n[b]\nK1\nK2\n", 5, true),
            ("", "b", "[b]\nK1\nK2\n", 2, true),
            // A last line without its line ending gets one.
            ("[a]\nA", "a", "[a]\nA\nK1\nK2\n", 3, false),
            ("[a]\nA", "b", "[a]\nA\n\n[b]\nK1\nK2\n", 5, true),
            // CRLF files get CRLF lines; a byte order mark stays.
            ("\u{feff}[a]\r\nA\r\n", "a", "\u{feff}[a]\r\nA\r\nK1\r\nK2\r\n", 3, false),
            ("[a]\r\nA\r\n", "b", "[a]\r\nA\r\n\r\n[b]\r\nK1\r\nK2\r\n", 5, true),
        ];
        for &(text, pool, after, first_line, new_section) in cases {
            let want = Placed { text: after.to_string(), first_line, new_section };
            assert_eq!(place(text, pool, &new), want, "{text:?} into [{pool}]");
        }
    }

    #[test]
    fn replace_swaps_the_file_and_keeps_its_permissions_but_not_someone_elses_edit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ollama-gateway-keyfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("keys.txt");
        fs::write(&path, "A\n").expect("write keys.txt");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        assert_eq!(replace(&path, b"A\n", b"A\nB\n"), Ok(()));
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"A\nB\n"[..]));
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode, Some(0o640));
        let changed = replace(&path, b"A\n", b"A\nC\n").expect_err("the file changed since");
        assert!(changed.contains("the file changed"), "{changed}");
        assert_eq!(fs::read(&path).ok().as_deref(), Some(&b"A\nB\n"[..]));
        let names: Vec<_> = fs::read_dir(&dir).expect("list").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["keys.txt"], "no temporary file left behind");
        let _ = fs::remove_dir_all(&dir);
    }
}
