//! The official `openai` Python SDK, unmodified, against the gateway: chat (streamed and
//! not), tools, legacy completions, embeddings as floats and base64, listing and retrieving
//! models, and errors raised as the right exception classes. The cases live in
//! `tests/sdk/openai_client.py`; this test starts the fake Ollama and the gateway it talks
//! to, and runs it.
//!
//! The Python is `$OLLAMA_GATEWAY_PYTHON`, else the repository's `.venv/bin/python` when it
//! exists (what `.ci/run` and the README make), else `python3`. When it cannot `import openai`
//! the test is skipped with a note, unless `CI` or `OLLAMA_GATEWAY_PYTHON` is set: then it
//! fails, since `.ci/run` installs the SDK into a virtualenv for it.

use crate::fake::{done_line, ollama, Fake, FakeReply, Recorded, MODIFIED_AT};
use crate::util::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// The script, relative to the crate root.
const SCRIPT: &str = "tests/sdk/openai_client.py";

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

/// The Python to run, when it has the `openai` module; `Err` says why not.
fn python_with_openai() -> Result<String, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let python = std::env::var("OLLAMA_GATEWAY_PYTHON").unwrap_or_else(|_| match venv.exists() {
        true => venv.display().to_string(),
        false => "python3".to_string(),
    });
    match Command::new(&python).args(["-c", "import openai"]).stdin(Stdio::null()).output() {
        Ok(output) if output.status.success() => Ok(python),
        Ok(output) => Err(format!(
            "`{python} -c \"import openai\"` failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("").trim()
        )),
        Err(err) => Err(format!("cannot run `{python}`: {err}")),
    }
}

#[test]
fn the_official_openai_python_sdk_works_unmodified() {
    let python = match python_with_openai() {
        Ok(python) => python,
        Err(why) => {
            let required =
                ["CI", "OLLAMA_GATEWAY_PYTHON"].into_iter().find(|v| std::env::var_os(v).is_some());
            if let Some(var) = required {
                panic!(
                    "{why}\n{var} is set, so the SDK test must run: .ci/run should have installed the \
                     `openai` package into .venv (pip install -r tests/sdk/requirements.txt) and set \
                     OLLAMA_GATEWAY_PYTHON=.venv/bin/python"
                );
            }
            eprintln!(
                "SKIPPED sdk::the_official_openai_python_sdk_works_unmodified: {why}\n\
                 (install the SDK with `pip install openai`, or point OLLAMA_GATEWAY_PYTHON at a Python that has it)"
            );
            return;
        }
    };

    let fake = Fake::start(upstream);
    let allowed = ["llama3.2*", "all-minilm*", "hf.co/*", "tools", "nope", "busy"];
    let config = format!(
        "{}models = {}\n[aliases]\n\"gpt-4o-mini\" = \"llama3.2\"\n",
        alice(),
        Value::from(allowed.to_vec())
    );
    let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(SCRIPT);
    let mut command = Command::new(&python);
    command
        .arg(&script)
        .env("GATEWAY_URL", gateway.url("/v1"))
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
    let output = command.output().unwrap_or_else(|err| panic!("running {python} {SCRIPT}: {err}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && stdout.lines().any(|l| l.starts_with("all ") && l.ends_with(" cases ok")),
        "{SCRIPT} failed ({})\n===== stdout =====\n{stdout}\n===== stderr =====\n{stderr}\n===== gateway log =====\n{}",
        output.status,
        gateway.logs()
    );

    for sent in fake.requests() {
        assert_ne!(sent.model(), "gpt-oss:20b", "a model outside the allowlist went upstream");
        assert!(
            !sent.headers.iter().any(|(_, v)| v.contains(TOKEN)),
            "the client token went upstream: {sent:?}"
        );
    }
}
