//! Real clients, unmodified, against the gateway.
//!
//! The official `openai` Python SDK on `/v1`: chat (streamed and not), tools, legacy
//! completions, embeddings as floats and base64, listing and retrieving models, and errors
//! raised as the right exception classes (`tests/sdk/openai_client.py`). The official
//! `ollama` Python library on Ollama's native API: chat (streamed and not), embed, list,
//! show, and errors in Ollama's shape (`tests/sdk/ollama_client.py`). Each test starts the
//! fake Ollama and the gateway its script talks to, and runs the script.
//!
//! The Python is `$OLLAMA_GATEWAY_PYTHON`, else the repository's `.venv/bin/python` when it
//! exists (what `.ci/run` and the README make), else `python3`. When it cannot import the
//! client's module the test is skipped with a note, unless `CI` or `OLLAMA_GATEWAY_PYTHON` is
//! set: then it fails, since `.ci/run` installs the clients into a virtualenv for it.

use crate::fake::{done_line, ollama, Fake, FakeReply, Recorded, MODIFIED_AT};
use crate::util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// The `openai` script, relative to the crate root.
const SCRIPT: &str = "tests/sdk/openai_client.py";
/// The `ollama` script, relative to the crate root.
const OLLAMA_SCRIPT: &str = "tests/sdk/ollama_client.py";

/// The fake Ollama the script expects: [`ollama`], plus the model `tools`, which always
/// calls `get_weather` for Tokyo, and `busy`, which is rate-limited.
fn upstream(recorded: &Recorded) -> FakeReply {
    match (recorded.path.as_str(), recorded.model()) {
        ("/api/chat", "tools") => {
            let call = json!({
                "model": "tools", "created_at": MODIFIED_AT,
                "message": {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}},
                ]},
                "done": false,
            });
            let mut done = done_line("stop", 10, 4);
            done["model"] = "tools".into();
            if recorded.wants_stream() {
                FakeReply::ndjson(&[call, done])
            } else {
                let mut whole = call;
                for key in ["done", "done_reason", "prompt_eval_count", "eval_count"] {
                    whole[key] = done[key].clone();
                }
                FakeReply::ok(whole)
            }
        }
        (_, "busy") => FakeReply::error(429, "you (x) have reached your session usage limit"),
        _ => ollama(recorded),
    }
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
