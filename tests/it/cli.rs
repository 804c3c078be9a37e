//! The command line: `--help`, `--version`, bad arguments (exit 2, one line), `token new`
//! and `token hash`, `keys` (masked keys, line numbers, options, bad lines), and `serve`
//! refusing a bad config with the file, line and key named.

use crate::fake::{healthy, Fake};
use crate::util::*;

#[test]
fn help_lists_the_subcommands() {
    let dir = TempDir::new();
    for flag in ["--help", "-h"] {
        let out = run_cli(&[flag], dir.path());
        eqnice!(0, out.code, "{flag}: {out:?}");
        for word in ["serve", "keys", "keys import", "--validate", "token new", "token hash", "--config"] {
            assert!(out.stdout.contains(word), "{flag} does not mention {word}:\n{}", out.stdout);
        }
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = run_cli(&["--version"], TempDir::new().path());
    eqnice!(0, out.code, "{out:?}");
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", out.stdout);
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    let dir = TempDir::new();
    for args in
        [&["--verbose"][..], &["frobnicate"], &["serve", "--port", "1"], &["token"], &["keys", "--config"]]
    {
        let out = run_cli(args, dir.path());
        eqnice!(2, out.code, "{args:?}: {out:?}");
        eqnice!(
            1,
            out.stderr.trim_end().lines().count(),
            "{args:?}: one line on stderr, got {:?}",
            out.stderr
        );
        assert!(out.stderr.starts_with("error: "), "{args:?}: {:?}", out.stderr);
        eqnice!("", out.stdout, "{args:?}");
    }
}

#[test]
fn token_new_prints_a_token_and_a_config_entry_that_works() {
    let dir = TempDir::new();
    let out = run_cli(&["token", "new", "--name", "laptop"], dir.path());
    eqnice!(0, out.code, "{out:?}");
    let token = out.stdout.lines().next().unwrap_or_default().trim().to_string();
    let entropy = token.strip_prefix("sk-").unwrap_or_else(|| panic!("not an sk- token: {token:?}"));
    assert!(
        entropy.len() >= 64 && entropy.chars().all(|c| c.is_ascii_hexdigit()),
        "at least 64 hex characters after sk-, got {entropy:?}"
    );

    let hash = run_cli(&["token", "hash", &token], dir.path());
    eqnice!(0, hash.code, "{hash:?}");
    eqnice!(sha256_hex(&token), hash.stdout.trim(), "token hash prints the SHA-256 in hex");

    let snippet_start = out.stdout.find("[[tokens]]").expect("a [[tokens]] snippet");
    let snippet = &out.stdout[snippet_start..];
    assert!(snippet.contains("name = \"laptop\""), "{snippet}");
    assert!(snippet.contains(&format!("sha256 = \"{}\"", sha256_hex(&token))), "{snippet}");
    assert!(!snippet.contains(&token), "the config entry holds only the hash: {snippet}");

    // The snippet, pasted into config.toml as printed, admits the token.
    let fake = Fake::start(healthy);
    let gateway = Gateway::start(snippet, &format!("{}|{KEY_A}\n", fake.url));
    let reply = gateway.post_json("/v1/chat/completions", Some(&token), &chat_body("m", false));
    completion(&reply);
    gateway.wait_for_log(&["token=laptop"]);
}

#[test]
fn two_new_tokens_differ() {
    let dir = TempDir::new();
    let first_line = |out: CliOutput| out.stdout.lines().next().unwrap_or_default().to_string();
    let (a, b) = (
        first_line(run_cli(&["token", "new"], dir.path())),
        first_line(run_cli(&["token", "new"], dir.path())),
    );
    assert_ne!(a, b);
}

const KEYS_TXT: &str = "\
# two pools
ka-0123456789-secret-AAAA

[team-b]
http://127.0.0.1:9|kb-9876543210-secret-BBBB
http://127.0.0.1:10
";

#[test]
fn keys_shows_pools_with_masked_keys_and_line_numbers() {
    let dir = TempDir::new();
    let config = dir.write("config.toml", "[upstream]\nbase_url = \"http://127.0.0.1:8\"\n");
    dir.write("keys.txt", KEYS_TXT);
    let out = run_cli(&["keys", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(0, out.code, "{out:?}");

    let default_at = out.stdout.find("[default]").expect("the default pool");
    let team_at = out.stdout.find("[team-b]").expect("the team-b pool");
    assert!(default_at < team_at, "{}", out.stdout);
    let line_of = |needle: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{}", out.stdout))
    };
    for (mask, line, url) in [
        ("ka-0…AAAA", "line 2", "http://127.0.0.1:8"),
        ("kb-9…BBBB", "line 5", "http://127.0.0.1:9"),
        ("(no key)", "line 6", "http://127.0.0.1:10"),
    ] {
        let shown = line_of(mask);
        assert!(shown.contains(line) && shown.contains(url), "{mask}: {shown:?}");
    }
    for key in [KEY_A, KEY_B] {
        assert!(!out.stdout.contains(key) && !out.stderr.contains(key), "a whole key is printed:\n{out:?}");
    }
}

#[test]
fn keys_shows_each_keys_options_and_names_bad_ones() {
    let dir = TempDir::new();
    let config = dir.write("config.toml", "");
    dir.write(
        "keys.txt",
        &format!(
            "http://127.0.0.1:9|{KEY_A} weight=2 max_concurrent=3 name=paid-1\n\
             http://127.0.0.1:10 max_concurrent=0 # the NAS\n\
             http://127.0.0.1:9|{KEY_B}\n"
        ),
    );
    let out = run_cli(&["keys", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(0, out.code, "{out:?}");
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.trim_start().starts_with("line ")).collect();
    eqnice!(3, rows.len(), "{}", out.stdout);
    for (row, want) in rows.iter().zip([
        ["ka-0…AAAA", "weight=2", "max_concurrent=3", "name=paid-1"],
        ["(no key)", "weight=1", "max_concurrent=0 (no limit)", ""],
        ["kb-9…BBBB", "weight=1", "max_concurrent=(pool's)", ""],
    ]) {
        assert!(want.iter().all(|w| row.contains(w)), "{want:?} in {row:?}");
    }

    dir.write("keys.txt", &format!("{KEY_A} weight=0\n{KEY_B} name={KEY_B}\n{KEY_A} colour=red\n"));
    let out = run_cli(&["keys", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(2, out.code, "{out:?}");
    for (line, what) in [(1, "weight must be"), (2, "name repeats"), (3, "unknown option `colour`")] {
        let shown = out.stderr.lines().find(|l| l.contains(&format!("keys.txt:{line}:")));
        let shown = shown.unwrap_or_else(|| panic!("no keys.txt:{line}: in\n{}", out.stderr));
        assert!(shown.contains(what) && shown.contains("accepted options"), "{shown}");
    }
    for key in [KEY_A, KEY_B] {
        assert!(!out.stdout.contains(key) && !out.stderr.contains(key), "a whole key is printed:\n{out:?}");
    }
}

#[test]
fn keys_names_every_bad_line_and_exits_2() {
    let dir = TempDir::new();
    let config = dir.write("config.toml", "");
    dir.write("keys.txt", &format!("{KEYS_TXT}not a key\nshort\n"));
    let out = run_cli(&["keys", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(2, out.code, "{out:?}");
    for line in ["keys.txt:7:", "keys.txt:8:"] {
        assert!(out.stderr.contains(line), "stderr does not name {line}:\n{}", out.stderr);
    }
}

#[test]
fn serve_refuses_a_bad_config_naming_file_line_and_key() {
    // (config.toml, text stderr must contain besides the file and line, line)
    let cases = [
        ("workers = 8\nworkerz = 3\n", "workerz", 2),
        ("workers = \"many\"\n", "workers", 1),
        ("\n[upstream]\nmax_attempts = \"three\"\n", "max_attempts", 3),
        ("\n\n[upstream]\nstrategy = \"fastest\"\n", "strategy", 4),
    ];
    for (config_text, key, line) in cases {
        let dir = TempDir::new();
        dir.write("keys.txt", "http://127.0.0.1:9\n");
        let config = dir.write("config.toml", &format!("{config_text}{}", alice()));
        let out = run_cli(&["serve", "--config", config.to_str().unwrap()], dir.path());
        eqnice!(2, out.code, "{config_text:?}: {out:?}");
        let location = format!("config.toml:{line}");
        assert!(
            out.stderr.contains(&location) && out.stderr.contains(key),
            "{config_text:?}: stderr must name {location} and {key}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn serve_without_tokens_or_allow_anonymous_exits_2() {
    let dir = TempDir::new();
    dir.write("keys.txt", "http://127.0.0.1:9\n");
    let config = dir.write("config.toml", "listen = \"127.0.0.1:0\"\n");
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(2, out.code, "{out:?}");
    assert!(out.stderr.contains("allow_anonymous"), "{}", out.stderr);
}

#[test]
fn serve_refuses_a_bad_keys_line() {
    let dir = TempDir::new();
    dir.write("keys.txt", "http://127.0.0.1:9\nnot a key\n");
    let config = dir.write("config.toml", &alice());
    let out = run_cli(&["serve", "--config", config.to_str().unwrap()], dir.path());
    eqnice!(2, out.code, "{out:?}");
    assert!(out.stderr.contains("keys.txt:2"), "{}", out.stderr);
}

/// A file saved in another encoding (Latin-1 here) is refused with the line of its first
/// byte that is not UTF-8, by every command that reads it.
// See: review finding "a config.toml that is not UTF-8 gets exit 2 without a line number".
#[test]
fn a_file_that_is_not_utf8_is_refused_naming_the_line_of_the_first_bad_byte() {
    let latin1_config = [format!("workers = 8\n{}", alice()).as_bytes(), b"# caf\xe9\n"].concat();
    let latin1_keys = [&b"http://127.0.0.1:9\n\n# Jos\xe9's key\n"[..], KEY_A.as_bytes()].concat();
    // (config.toml, keys.txt, what stderr names)
    let cases = [
        (
            latin1_config.clone(),
            b"http://127.0.0.1:9\n".to_vec(),
            "config.toml:7: not UTF-8 text (byte 0xE9 at column 6)",
        ),
        (alice().into_bytes(), latin1_keys, "keys.txt:3: not UTF-8 text (at column 6)"),
    ];
    for (config_bytes, keys_bytes, want) in cases {
        let dir = TempDir::new();
        std::fs::write(dir.path().join("config.toml"), &config_bytes).unwrap();
        std::fs::write(dir.path().join("keys.txt"), &keys_bytes).unwrap();
        for command in ["serve", "check", "keys"] {
            let out = run_cli(&[command, "--config", "config.toml"], dir.path());
            eqnice!(2, out.code, "{command}, {want}: {out:?}");
            let line = out.stderr.lines().find(|line| line.contains(want));
            let line =
                line.unwrap_or_else(|| panic!("{command}: stderr does not say {want:?}:\n{}", out.stderr));
            assert!(line.starts_with("error: ") && line.contains("UTF-8"), "{command}: {line}");
        }
    }
}
