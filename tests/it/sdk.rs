//! Real clients, unmodified, against the gateway.
//!
//! The official `openai` Python SDK on `/v1`: chat (streamed and not), tools, legacy
//! completions, embeddings as floats and base64, listing and retrieving models, the
//! Responses API (`responses.create`, `responses.stream`, a function-call round trip), and
//! errors raised as the right exception classes (`tests/sdk/openai_client.py`). The
//! official `anthropic` Python SDK on the Messages API: `messages.create`, `messages.stream`
//! with text, thinking and tool use, a tool round trip, `count_tokens`, a glob alias, and
//! its exception classes for 401, 403, 404 and 429 (`tests/sdk/anthropic_client.py`). The
//! official `ollama` Python library on Ollama's native API: chat (streamed and not), embed,
//! list, show, and errors in Ollama's shape (`tests/sdk/ollama_client.py`). Each test starts
//! the fake Ollama and the gateway its script talks to, and runs the script.
//!
//! The Python is `$OLLAMA_GATEWAY_PYTHON`, else the repository's `.venv/bin/python` when it
//! exists (what `.ci/run` and the README make), else `python3`. When it cannot import the
//! client's module the test is skipped with a note, unless `CI` or `OLLAMA_GATEWAY_PYTHON` is
//! set: then it fails, since `.ci/run` installs the clients into a virtualenv for it.

use crate::fake::{done_line, message_line, ollama, Fake, FakeReply, Recorded};
use crate::util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// The `openai` script, relative to the crate root.
const SCRIPT: &str = "tests/sdk/openai_client.py";
/// The `ollama` script, relative to the crate root.
const OLLAMA_SCRIPT: &str = "tests/sdk/ollama_client.py";
/// The `anthropic` script, relative to the crate root.
const ANTHROPIC_SCRIPT: &str = "tests/sdk/anthropic_client.py";

/// The fake Ollama the scripts expect: [`ollama`], plus the model `tools`, which calls
/// `get_weather` for Tokyo until it is given the tool's result and then reports it,
/// `thinker`, which thinks before it answers, and `busy`, which is rate-limited.
fn upstream(recorded: &Recorded) -> FakeReply {
    let line = |message: Value| {
        let mut line = message_line(message);
        line["model"] = recorded.model().into();
        line
    };
    let mut done = done_line("stop", 10, 4);
    done["model"] = recorded.model().into();
    match (recorded.path.as_str(), recorded.model()) {
        ("/api/chat", "tools") => match tool_result(recorded) {
            Some(result) => lines_or_whole(
                recorded,
                vec![line(json!({"content": format!("The weather: {result}")})), done],
            ),
            None => {
                let call = json!({"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}});
                lines_or_whole(recorded, vec![line(json!({"tool_calls": [call]})), done])
            }
        },
        ("/api/chat", "thinker") => lines_or_whole(
            recorded,
            vec![
                line(json!({"thinking": "Hmm, "})),
                line(json!({"thinking": "a greeting."})),
                line(json!({"content": "Hello"})),
                line(json!({"content": "!"})),
                done,
            ],
        ),
        (_, "busy") => FakeReply::error(429, "you (x) have reached your session usage limit"),
        _ => ollama(recorded),
    }
}

/// The content of the last message of a chat request, when it is a tool's result.
fn tool_result(recorded: &Recorded) -> Option<String> {
    let last = recorded.body().get("messages")?.as_array()?.last()?;
    (last["role"] == "tool").then(|| last["content"].as_str().unwrap_or("").to_string())
}

/// `lines` as a stream when one is asked for, else as one answer: their thinking and
/// content joined, their tool calls gathered, with the last line's counts.
fn lines_or_whole(recorded: &Recorded, lines: Vec<Value>) -> FakeReply {
    if recorded.wants_stream() {
        return FakeReply::ndjson(&lines);
    }
    let mut whole = lines.last().cloned().unwrap_or_default();
    let text =
        |key: &str| -> String { lines.iter().filter_map(|line| line["message"][key].as_str()).collect() };
    let calls: Vec<Value> =
        lines.iter().filter_map(|line| line["message"]["tool_calls"].as_array()).flatten().cloned().collect();
    whole["message"] = json!({"role": "assistant", "content": text("content")});
    if !text("thinking").is_empty() {
        whole["message"]["thinking"] = text("thinking").into();
    }
    if !calls.is_empty() {
        whole["message"]["tool_calls"] = calls.into();
    }
    FakeReply::ok(whole)
}

/// Asserts that `fake` saw the `tools` model given the result of its `get_weather` call
/// as a native tool message, named after the call.
#[track_caller]
fn assert_tool_result_reached_upstream(fake: &Fake, result: &str) {
    let seen = fake.requests().iter().any(|sent| {
        sent.model() == "tools"
            && sent.body()["messages"].as_array().is_some_and(|messages| {
                messages.iter().any(|m| {
                    m["role"] == "tool" && m["tool_name"] == "get_weather" && m["content"] == json!(result)
                })
            })
    });
    assert!(seen, "no upstream request carried the tool result {result:?}: {:#?}", fake.requests());
}

/// The Python to run, when it can import `module`; `Err` says why not.
fn python_with(module: &str) -> Result<String, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let python = std::env::var("OLLAMA_GATEWAY_PYTHON").unwrap_or_else(|_| match venv.exists() {
        true => venv.display().to_string(),
        false => "python3".to_string(),
    });
    let import = format!("import {module}");
    match Command::new(&python).args(["-c", &import]).stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => Ok(python),
        Ok(output) => Err(format!(
            "`{python} -c \"{import}\"` failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(err) => Err(format!("cannot run `{python}`: {err}")),
    }
}

/// The Python for `test`, which needs the package `module`: `None` (after a note) when it
/// lacks it and the test may be skipped; a panic when `CI` or `OLLAMA_GATEWAY_PYTHON` says
/// it must run.
fn python_for(test: &str, module: &str) -> Option<String> {
    let why = match python_with(module) {
        Ok(python) => return Some(python),
        Err(why) => why,
    };
    let required = ["CI", "OLLAMA_GATEWAY_PYTHON"].into_iter().find(|v| std::env::var_os(v).is_some());
    if let Some(var) = required {
        panic!(
            "{why}\n{var} is set, so the SDK test must run: .ci/run should have installed the \
             `{module}` package into .venv (pip install -r tests/sdk/requirements.txt) and set \
             OLLAMA_GATEWAY_PYTHON=.venv/bin/python"
        );
    }
    eprintln!(
        "SKIPPED sdk::{test}: {why}\n\
         (install it with `pip install {module}`, or point OLLAMA_GATEWAY_PYTHON at a Python that has it)"
    );
    None
}

/// Runs `script` (relative to the crate root) with `GATEWAY_URL=url` and
/// `GATEWAY_TOKEN=`[`TOKEN`], without proxies or the clients' own settings from the
/// environment; asserts it exits 0 after printing `all N cases ok`, and shows its output and
/// the gateway's log when not.
fn run_script(python: &str, script: &str, url: &str, gateway: &Gateway) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let mut command = Command::new(python);
    command
        .arg(&path)
        .env("GATEWAY_URL", url)
        .env("GATEWAY_TOKEN", TOKEN)
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null());
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(var);
    }
    for var in ["OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"] {
        command.env_remove(var);
    }
    for var in ["OLLAMA_HOST", "OLLAMA_API_KEY"] {
        command.env_remove(var);
    }
    for var in ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"] {
        command.env_remove(var);
    }
    let output = command.output().unwrap_or_else(|err| panic!("running {python} {script}: {err}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        output.status.success() && last.starts_with("all ") && last.ends_with(" cases ok"),
        "{script} failed ({})\n===== stdout =====\n{stdout}\n===== stderr =====\n{stderr}\n===== gateway log =====\n{}",
        output.status,
        gateway.logs()
    );
}

#[test]
fn the_official_openai_python_sdk_works_unmodified() {
    let Some(python) = python_for("the_official_openai_python_sdk_works_unmodified", "openai") else {
        return;
    };

    let fake = Fake::start(upstream);
    let allowed = ["llama3.2*", "all-minilm*", "hf.co/*", "tools", "nope", "busy"];
    let config = format!(
        "{}models = {}\n[aliases]\n\"gpt-4o-mini\" = \"llama3.2\"\n",
        alice(),
        Value::from(allowed.to_vec())
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));

    run_script(&python, SCRIPT, &gateway.url("/v1"), &gateway);

    for sent in fake.requests() {
        assert_ne!(sent.model(), "gpt-oss:20b", "a model outside the allowlist went upstream");
        assert!(
            !sent.headers.iter().any(|(_, v)| v.contains(TOKEN)),
            "the client token went upstream: {sent:?}"
        );
    }
    // The Responses function-call round trip's function_call_output.
    assert_tool_result_reached_upstream(&fake, "sunny, 21 C");
}

#[test]
fn the_official_anthropic_python_sdk_works_unmodified() {
    let Some(python) = python_for("the_official_anthropic_python_sdk_works_unmodified", "anthropic") else {
        return;
    };

    let fake = Fake::start(upstream);
    let allowed = ["llama3.2*", "tools", "thinker", "nope", "busy"];
    let config = format!(
        "{}models = {}\n[aliases]\n\"claude-*\" = \"llama3.2\"\n",
        alice(),
        Value::from(allowed.to_vec())
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
    // The SDK appends /v1/messages to its base URL, as Claude Code does.
    run_script(&python, ANTHROPIC_SCRIPT, &gateway.url(""), &gateway);

    for sent in fake.requests() {
        assert_ne!(sent.model(), "gpt-oss:20b", "a model outside the allowlist went upstream");
        assert!(
            !sent.headers.iter().any(|(_, v)| v.contains(TOKEN) || v.contains("sk-not-the-token")),
            "a client token went upstream: {sent:?}"
        );
        eqnice!(
            ("POST", "/api/chat"),
            (sent.method.as_str(), sent.path.as_str()),
            "count_tokens stays local"
        );
    }
    assert!(
        fake.requests().iter().any(|sent| sent.model() == "llama3.2"),
        "the claude-* alias reached llama3.2"
    );
    // The tool_result of the tool-use round trip.
    assert_tool_result_reached_upstream(&fake, "sunny, 21 C");
}

/// The fake Ollama `ollama_client.py` expects: [`ollama`], with the `model_info` that a real
/// Ollama's `/api/show` always has (the library requires it).
fn native_upstream(recorded: &Recorded) -> FakeReply {
    match ollama(recorded) {
        FakeReply::Json { status: 200, mut body } if recorded.path == "/api/show" => {
            body["model_info"] =
                json!({"general.architecture": "llama", "general.parameter_count": 3212749888u64});
            FakeReply::ok(body)
        }
        reply => reply,
    }
}

#[test]
fn the_official_ollama_python_library_works_unmodified() {
    let Some(python) = python_for("the_official_ollama_python_library_works_unmodified", "ollama") else {
        return;
    };

    let fake = Fake::start(native_upstream);
    let gateway = Gateway::start(&alice(), &format!("{}|{KEY_A}\n", fake.url));
    // An Ollama client is given the server's address, without /v1 or /api.
    run_script(&python, OLLAMA_SCRIPT, &gateway.url(""), &gateway);

    let requests = fake.requests();
    for sent in &requests {
        let bearer = format!("Bearer {KEY_A}");
        eqnice!(Some(bearer.as_str()), sent.authorization(), "{} {}", sent.method, sent.path);
        assert!(
            !sent.headers.iter().any(|(_, v)| v.contains(TOKEN) || v.contains("sk-not-the-token")),
            "a client token went upstream: {sent:?}"
        );
    }
    let mut paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    paths.dedup();
    eqnice!(
        vec!["/api/chat", "/api/embed", "/api/tags", "/api/show", "/api/chat"],
        paths,
        "the library's native calls, forwarded as they are (no request for a wrong token)"
    );
}
