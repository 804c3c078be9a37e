//! `ollama-gateway keys import`: lists read from a file and from stdin, duplicates dropped,
//! where the new lines go in keys.txt, `--validate` against a fake upstream, a file left
//! alone when nothing is added, the running gateway reloading the result, and no raw key
//! printed anywhere.

use crate::fake::{dead_url, Fake, FakeReply};
use crate::util::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A third upstream key.
const KEY_C: &str = "kc-5555555555-secret-CCCC";
/// A fourth upstream key.
const KEY_D: &str = "kd-7777777777-secret-DDDD";

/// `keys import ARGS… --config config.toml` in `dir`, with `stdin` piped in when given.
fn import(dir: &Path, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let mut all = vec!["keys", "import"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", "config.toml"]);
    let Some(input) = stdin else { return run_cli(&all, dir) };
    let mut command = Command::new(BIN);
    command.args(&all).current_dir(dir).env("RUST_LOG", "info").env_remove("OLLAMA_GATEWAY_CONFIG");
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(var);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keys import");
    child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write the list to stdin");
    let output = child.wait_with_output().expect("wait for keys import");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A folder with `config.toml` (bare keys go to `base_url`) and `keys.txt`.
fn folder(base_url: &str, keys_txt: &str) -> TempDir {
    let dir = TempDir::new();
    dir.write("config.toml", &format!("[upstream]\nbase_url = \"{base_url}\"\n"));
    dir.write("keys.txt", keys_txt);
    dir
}

fn keys_txt(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path().join("keys.txt")).expect("read keys.txt")
}

/// The report's row for a line of the list.
#[track_caller]
fn row(out: &CliOutput, line: usize) -> &str {
    let prefix = format!("{line} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row for line {line} in\n{}", out.stdout))
}

#[track_caller]
fn assert_no_raw_key(out: &CliOutput) {
    for key in [KEY_A, KEY_B, KEY_C, KEY_D] {
        assert!(
            !out.stdout.contains(key) && !out.stderr.contains(key),
            "a whole key is printed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

#[test]
fn a_list_in_a_file_is_added_without_its_duplicates() {
    let dir = folder("http://127.0.0.1:9", &format!("# my keys\n{KEY_A}\n"));
    dir.write(
        "list.txt",
        &format!(
            "# exported today\n\
             {KEY_A}\n\
             {KEY_B} weight=2 name=paid-1\n\
             \n\
             http://127.0.0.1:9|{KEY_B}\n\
             someone@example.com----pw----session----{KEY_C} # from the account export\n"
        ),
    );
    let out = import(dir.path(), &["list.txt"], None);
    eqnice!(0, out.code, "{out:?}");
    eqnice!(
        format!("# my keys\n{KEY_A}\n{KEY_B} weight=2 name=paid-1\n{KEY_C} # from the account export\n"),
        keys_txt(&dir),
        "the new keys follow the old, the account export reduced to its key"
    );
    assert!(row(&out, 3).contains(" added"), "{:?}", row(&out, 3));
    for (line, want) in [
        (2, "duplicate of keys.txt line 2"),
        (3, "paid-1 @ http://127.0.0.1:9"),
        (5, "duplicate of line 3"),
        (6, "kc-5…CCCC @ http://127.0.0.1:9"),
    ] {
        assert!(row(&out, line).contains(want), "line {line}: {:?}", row(&out, line));
    }
    assert!(out.stdout.contains("added 2 keys to [default] at lines 3-4"), "{}", out.stdout);
    assert_no_raw_key(&out);

    // Again: every line is a duplicate now.
    let again = import(dir.path(), &["list.txt"], None);
    eqnice!(0, again.code, "{again:?}");
    assert!(again.stdout.contains("nothing added"), "{}", again.stdout);
}

#[test]
fn a_list_on_stdin_is_added_and_bad_lines_are_reported_by_number() {
    let dir = folder("http://127.0.0.1:9", &format!("{KEY_A}\n"));
    let list = format!("{KEY_B}\nnot a key\n[team-b]\n{KEY_C} weight=0\n{KEY_D} max_concurrent=0\n");
    let out = import(dir.path(), &["-"], Some(&list));
    eqnice!(1, out.code, "bad lines make the exit code 1: {out:?}");
    eqnice!(format!("{KEY_A}\n{KEY_B}\n{KEY_D} max_concurrent=0\n"), keys_txt(&dir));
    for (line, want) in [
        (1, "added"),
        (2, "bad line"),
        (3, "a [section] header"),
        (4, "weight must be a whole number"),
        (5, "added"),
    ] {
        assert!(row(&out, line).contains(want), "line {line}: {:?}", row(&out, line));
    }
    assert!(out.stdout.starts_with("(stdin):"), "{}", out.stdout);
    assert_no_raw_key(&out);
}

#[test]
fn new_lines_go_to_the_end_of_the_pools_section_or_a_new_one_and_the_rest_stays() {
    let before = format!(
        "# keys.txt, CRLF\r\n\
         {KEY_A}\r\n\
         \r\n\
         [team-b] # the second team\r\n\
         http://127.0.0.1:10|{KEY_A}\r\n\
         \r\n\
         # the local box\r\n\
         [local]\r\n\
         http://127.0.0.1:11\r\n"
    );
    let dir = folder("http://127.0.0.1:9", &before);
    dir.write("list.txt", &format!("http://127.0.0.1:10|{KEY_B}\nhttp://127.0.0.1:10|{KEY_A}\n"));
    let out = import(dir.path(), &["list.txt", "--pool", "team-b"], None);
    eqnice!(0, out.code, "{out:?}");
    let with_team_b = before.replace(
        &format!("http://127.0.0.1:10|{KEY_A}\r\n"),
        &format!("http://127.0.0.1:10|{KEY_A}\r\nhttp://127.0.0.1:10|{KEY_B}\r\n"),
    );
    eqnice!(
        with_team_b,
        keys_txt(&dir),
        "at the end of [team-b], before the blank line and [local]'s comment"
    );

    dir.write("list.txt", &format!("{KEY_C} name=new-1\n"));
    let out = import(dir.path(), &["list.txt", "--pool=fresh"], None);
    eqnice!(0, out.code, "{out:?}");
    eqnice!(format!("{with_team_b}\r\n[fresh]\r\n{KEY_C} name=new-1\r\n"), keys_txt(&dir), "a new section");
    assert!(out.stdout.contains("to [fresh] at line 13, a new section"), "{}", out.stdout);

    // What was written is what `keys` reads.
    let keys = run_cli(&["keys", "--config", "config.toml"], dir.path());
    eqnice!(0, keys.code, "{keys:?}");
    assert!(keys.stdout.contains("[fresh]") && keys.stdout.contains("name=new-1"), "{}", keys.stdout);
    assert_no_raw_key(&out);
}

#[test]
fn validate_adds_working_and_exhausted_keys_and_leaves_revoked_and_unreachable_ones_out() {
    let fake = Fake::start(|recorded| match recorded.authorization().unwrap_or_default() {
        a if a.ends_with(KEY_A) => FakeReply::ok(serde_json::json!({})),
        a if a.ends_with(KEY_C) => FakeReply::error(429, "you have reached your weekly usage limit"),
        _ => FakeReply::error(401, "unauthorized"),
    });
    let dir = folder(&fake.url, "[cloud]\n");
    let dead = dead_url();
    let list = format!(
        "{KEY_A} name=good\n\
         {KEY_B} name=revoked\n\
         {KEY_C}\n\
         {dead}|{KEY_D}\n"
    );
    dir.write("list.txt", &list);
    let out = import(dir.path(), &["list.txt", "--pool", "cloud", "--validate"], None);
    eqnice!(1, out.code, "a revoked key makes the exit code 1: {out:?}");
    eqnice!(format!("[cloud]\n{KEY_A} name=good\n{KEY_C}\n"), keys_txt(&dir), "only the right lines");
    for (line, want) in
        [(1, "added"), (2, "invalid, not added"), (3, "exhausted, added"), (4, "unreachable, not added")]
    {
        assert!(row(&out, line).contains(want), "line {line}: {:?}", row(&out, line));
    }
    assert!(row(&out, 2).contains("401"), "{:?}", row(&out, 2));
    // Every key was probed with its own key, each once at least; the dead one never arrived.
    let seen: Vec<String> =
        fake.requests().iter().filter_map(|r| r.authorization().map(str::to_string)).collect();
    for key in [KEY_A, KEY_B, KEY_C] {
        assert!(seen.iter().any(|a| a == &format!("Bearer {key}")), "{key} not probed: {seen:?}");
    }
    assert_no_raw_key(&out);
}

#[test]
fn validate_with_only_good_keys_exits_0() {
    let fake = Fake::always(200, serde_json::json!({}));
    let dir = folder(&fake.url, "");
    dir.write("list.txt", &format!("{KEY_A}\n{KEY_B}\n"));
    let out = import(dir.path(), &["list.txt", "--validate"], None);
    eqnice!(0, out.code, "{out:?}");
    eqnice!(format!("{KEY_A}\n{KEY_B}\n"), keys_txt(&dir));
    assert!(row(&out, 1).contains("200 via /api/usage"), "{:?}", row(&out, 1));
}

#[test]
fn a_file_with_nothing_new_is_not_touched_at_all() {
    let fake = Fake::start(|_| FakeReply::error(401, "unauthorized"));
    let before = format!("[a]\r\n{KEY_A}   # spaces and CRLF kept\r\n");
    let dir = folder(&fake.url, &before);
    let path = dir.path().join("keys.txt");
    let stamp = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(p).expect("keys.txt metadata");
        (meta.ino(), meta.mtime(), meta.mtime_nsec())
    };
    let was = stamp(&path);
    // Duplicates only; then a revoked key, which --validate leaves out.
    for (list, args, code) in [
        (format!("{KEY_A}\n"), &["list.txt", "--pool", "a"][..], 0),
        (format!("{KEY_B}\n"), &["list.txt", "--pool", "a", "--validate"][..], 1),
        (String::new(), &["list.txt"][..], 0),
    ] {
        dir.write("list.txt", &list);
        let out = import(dir.path(), args, None);
        eqnice!(code, out.code, "{args:?}: {out:?}");
        assert!(out.stdout.contains("nothing added; the file is unchanged"), "{}", out.stdout);
        eqnice!(before, keys_txt(&dir));
        eqnice!(was, stamp(&path), "{args:?}: keys.txt was rewritten");
        assert_no_raw_key(&out);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("list the folder").flatten().collect();
    eqnice!(3, leftovers.len(), "no temporary file left: {leftovers:?}");
}

#[test]
fn files_that_cannot_be_used_exit_2_and_change_nothing() {
    // (keys.txt, args, what stderr says)
    let good = format!("{KEY_A}\n");
    let bad = format!("{KEY_A}\nnot a key\n");
    let cases = [
        (&bad, &["list.txt"][..], "keys.txt:2: whitespace inside the entry"),
        (&good, &["missing.txt"][..], "missing.txt: cannot read the list of keys to import"),
        (&good, &["list.txt", "--pool", "a/b"][..], "not a pool name"),
        (&good, &[][..], "needs the list to read"),
    ];
    for (before, args, want) in cases {
        let dir = folder("http://127.0.0.1:9", before);
        dir.write("list.txt", &format!("{KEY_B}\n"));
        let out = import(dir.path(), args, None);
        eqnice!(2, out.code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(want), "{args:?}: stderr does not say {want:?}:\n{}", out.stderr);
        eqnice!(*before, keys_txt(&dir));
        eqnice!("", out.stdout, "{args:?}");
        assert_no_raw_key(&out);
    }
}

#[test]
fn a_missing_keys_file_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new();
    dir.write("config.toml", "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n");
    let out = import(dir.path(), &["-", "--pool", "cloud"], Some(&format!("{KEY_A}\n")));
    eqnice!(0, out.code, "{out:?}");
    eqnice!(format!("[cloud]\n{KEY_A}\n"), keys_txt(&dir));
    let mode = std::fs::metadata(dir.path().join("keys.txt")).expect("metadata").permissions().mode();
    eqnice!(0o600, mode & 0o777, "a new keys file is readable by its owner only");
}

#[test]
fn an_existing_keys_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = folder("http://127.0.0.1:9", &format!("{KEY_A}\n"));
    let path = dir.path().join("keys.txt");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = import(dir.path(), &["-"], Some(&format!("{KEY_B}\n")));
    eqnice!(0, out.code, "{out:?}");
    let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
    eqnice!(0o640, mode & 0o777);
}

#[test]
fn a_running_gateway_reloads_the_imported_keys() {
    let fake = Fake::always(200, serde_json::json!({}));
    let gateway = Gateway::with_keys(&format!("{}|{KEY_A}\n", fake.url));
    let out = import(gateway.dir().path(), &["-"], Some(&format!("{}|{KEY_B}\n", fake.url)));
    eqnice!(0, out.code, "{out:?}");
    gateway.wait_for_log(&["reloaded", "2 upstreams"]);
}
