//! Real coding agents, unmodified, against the gateway: Codex CLI (`codex exec`, the
//! Responses API) and Claude Code (`claude -p`, the Messages API).
//!
//! Each test starts the fake Ollama and a gateway, then runs one client as a child process
//! with a temporary `HOME` (and `CODEX_HOME`), stdin closed and a hard timeout, and checks
//! that the fake's text reaches the client's output. The tool tests have the fake answer
//! with a call to the client's own shell tool (`exec_command` for Codex, `Bash` for Claude
//! Code): the client runs `echo ROUNDTRIP-$((6*7))` in a temporary folder, and its next
//! request must carry the call and the output `ROUNDTRIP-42`, which the fake receives as a
//! native `tool` message and answers with the final text. The fake routes on what a request
//! holds (a tool result, the tool prompt, the tools offered), never on its order.
//!
//! Offline: the child's environment is cleared but for `PATH`, and every proxy variable
//! points at a [`Trap`] on loopback (with `NO_PROXY` for 127.0.0.1), so a connection to
//! anything but the gateway fails at once, and the test fails when the trap saw one. The
//! clients' own retries are turned off, and the gateway must have answered each request
//! once with 200: a repeated request means the client rejected a reply.
//!
//! The programs are `$OLLAMA_GATEWAY_CLIENTS/{codex,claude}`, else the ones `.ci/run`
//! installs with npm into `target/clients/node_modules/.bin`. When one is missing its tests
//! are skipped with a note, unless `CI` or `OLLAMA_GATEWAY_CLIENTS` is set: then they fail.

use crate::fake::{chat_reply, ollama, Fake, FakeReply, Recorded};
use crate::util::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The longest one client run may take before it is killed (a run takes a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A model of the fake that cannot think: it refuses `think` with 400, as Ollama does.
const PLAIN_MODEL: &str = "llama3.2";
/// A model of the fake that thinks before it answers or calls a tool.
const THINKING_MODEL: &str = "gpt-oss:20b";

const PLAIN_PROMPT: &str = "Say hello in one short sentence.";
/// The fake calls the shell tool when a user message holds [`TOOL_MARK`].
const TOOL_PROMPT: &str = "Run the round-trip command and tell me when it is done.";
const TOOL_MARK: &str = "round-trip command";
/// What the fake asks the shell tool to run, and what it prints.
const COMMAND: &str = "echo ROUNDTRIP-$((6*7))";
const COMMAND_OUTPUT: &str = "ROUNDTRIP-42";
/// The fake's answers, each streamed in two pieces.
const PLAIN_ANSWER: [&str; 2] = ["Hello from", " the fake Ollama."];
const FINAL_ANSWER: [&str; 2] = ["Round trip", " complete."];
/// What the thinking model thinks before it calls the tool.
const THINKING: &str = "The user wants the round-trip command run: call the shell tool.";

/// One of the agents.
struct Agent {
    /// Its program, in `node_modules/.bin`.
    program: &'static str,
    /// The version `.ci/run` installs (and the captures were made with).
    version: &'static str,
    /// Its npm package.
    package: &'static str,
}

const CODEX: Agent = Agent { program: "codex", version: "0.171.0", package: "@openai/codex" };
const CLAUDE: Agent = Agent { program: "claude", version: "2.1.332", package: "@anthropic-ai/claude-code" };

// ---------------------------------------------------------------------------------------
// The fake Ollama the agents talk to
// ---------------------------------------------------------------------------------------

/// [`ollama`], with `/api/chat` answered for the agents: for [`PLAIN_MODEL`] and
/// [`THINKING_MODEL`] only, the first refusing `think` with Ollama's 400; with the final
/// text once a `tool` message is there, with a call to the shell tool when the tool prompt
/// is and the request offers one, else with the plain text.
fn agent_ollama(recorded: &Recorded) -> FakeReply {
    if recorded.path != "/api/chat" {
        return ollama(recorded);
    }
    let body = recorded.body();
    let model = recorded.model();
    if model != PLAIN_MODEL && model != THINKING_MODEL {
        return FakeReply::error(404, &format!("model '{model}' not found"));
    }
    let thinks = model == THINKING_MODEL;
    if !thinks && body.get("think").is_some_and(|think| think != &Value::Bool(false)) {
        return FakeReply::error(400, &format!("\"{model}\" does not support thinking"));
    }
    let messages = body["messages"].as_array().map_or(&[][..], Vec::as_slice);
    let text = |pieces: [&str; 2]| pieces.map(|piece| json!({"content": piece})).to_vec();
    let mut parts = if let Some(result) = messages.iter().rev().find(|m| m["role"] == "tool") {
        match result["content"].as_str().unwrap_or("") {
            output if output.contains(COMMAND_OUTPUT) => text(FINAL_ANSWER),
            output => vec![json!({"content": format!("The tool result lacks {COMMAND_OUTPUT}: {output:?}")})],
        }
    } else if let Some((tool, arguments)) = shell_tool(body).filter(|_| asks_for_the_tool(messages)) {
        vec![json!({"tool_calls": [{"function": {"name": tool, "arguments": arguments}}]})]
    } else {
        text(PLAIN_ANSWER)
    };
    if thinks {
        parts.insert(0, json!({"thinking": THINKING}));
    }
    chat_reply(recorded, model, &parts)
}

/// Whether a user message holds the tool prompt.
fn asks_for_the_tool(messages: &[Value]) -> bool {
    messages
        .iter()
        .any(|m| m["role"] == "user" && m["content"].as_str().is_some_and(|c| c.contains(TOOL_MARK)))
}

/// The shell tool a request offers and the arguments that run [`COMMAND`] with it.
fn shell_tool(body: &Value) -> Option<(&'static str, Value)> {
    let offered = |name: &str| tool_declared(body, name).is_some();
    if offered("exec_command") {
        Some(("exec_command", json!({"cmd": COMMAND})))
    } else if offered("Bash") {
        Some(("Bash", json!({"command": COMMAND, "description": "Print the round-trip marker"})))
    } else {
        None
    }
}

/// The native declaration of the function tool `name` in a request body.
fn tool_declared<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body["tools"].as_array()?.iter().find(|tool| tool["function"]["name"] == name)
}

/// The `/api/chat` requests the fake received.
fn chats(fake: &Fake) -> Vec<Recorded> {
    fake.requests().into_iter().filter(|r| r.path == "/api/chat").collect()
}

// ---------------------------------------------------------------------------------------
// Running a client
// ---------------------------------------------------------------------------------------

/// The program of `agent`, when it runs; `None` (after a note) when it is missing and the
/// test may be skipped; a panic when `CI` or `OLLAMA_GATEWAY_CLIENTS` says it must run.
fn installed(agent: &Agent, test: &str) -> Option<PathBuf> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/clients/node_modules/.bin");
    let dir = std::env::var_os("OLLAMA_GATEWAY_CLIENTS").map_or(default, PathBuf::from);
    let program = dir.join(agent.program);
    let why = match program.exists() {
        false => format!("{} is missing", program.display()),
        true => {
            let (dir, trap) = (TempDir::new(), Trap::start());
            let run = Client::new(&program, &dir, &trap).arg("--version").run();
            match run.code {
                Some(0) if run.stdout.contains(agent.version) => return Some(program),
                Some(0) => {
                    eprintln!(
                        "NOTE agents::{test}: {} is not version {} ({}); running it anyway",
                        program.display(),
                        agent.version,
                        run.stdout.trim()
                    );
                    return Some(program);
                }
                _ => format!("`{} --version` failed: {}{}", program.display(), run.stdout, run.stderr),
            }
        }
    };
    let required = ["CI", "OLLAMA_GATEWAY_CLIENTS"].into_iter().find(|v| std::env::var_os(v).is_some());
    if let Some(var) = required {
        panic!(
            "{why}\n{var} is set, so the agent tests must run: .ci/run installs {}@{} with npm into \
             target/clients (or point OLLAMA_GATEWAY_CLIENTS at a node_modules/.bin holding it)",
            agent.package, agent.version
        );
    }
    eprintln!(
        "SKIPPED agents::{test}: {why}\n(install it with `npm install --prefix target/clients {}@{}`, \
         as .ci/run does, or point OLLAMA_GATEWAY_CLIENTS at a node_modules/.bin holding it)",
        agent.package, agent.version
    );
    None
}

/// A loopback port that every proxy variable of a client points at: it records the first
/// line of each connection (`CONNECT host:443 HTTP/1.1`) and answers 403, so a client
/// reaching for anything but the gateway fails at once and the test can say what it was.
struct Trap {
    /// `http://127.0.0.1:<port>`.
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy trap");
        listener.set_nonblocking(true).expect("a non-blocking trap");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (seen, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (record, stopped) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                let mut head = [0u8; 512];
                let n = conn.read(&mut head).unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_string();
                record.lock().unwrap().push(line);
                let _ = conn
                    .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Trap { url, seen, stop, thread: Some(thread) }
    }

    /// The first line of every connection the trap received.
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Trap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client command with nothing of ours in its environment: `PATH`, a temporary `HOME`,
/// `TMPDIR` and working folder, and the proxy variables on the trap.
struct Client {
    command: Command,
}

/// What one client run printed, and how it ended.
struct Run {
    /// The exit code (`None` when a signal ended it: the timeout's kill, say).
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    timed_out: bool,
}

impl Client {
    /// `program` run in `<dir>/work` with `HOME=<dir>/home` and `TMPDIR=<dir>/tmp`, every
    /// proxy variable on `trap` and `NO_PROXY` for loopback.
    fn new(program: &Path, dir: &TempDir, trap: &Trap) -> Client {
        let folder = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("create a client folder");
            path
        };
        let mut command = Command::new(program);
        command
            .env_clear()
            .current_dir(folder("work"))
            .env("HOME", folder("home"))
            .env("TMPDIR", folder("tmp"));
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
            command.env(var, &trap.url);
        }
        command.env("NO_PROXY", "127.0.0.1,localhost").env("no_proxy", "127.0.0.1,localhost");
        Client { command }
    }

    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Client {
        self.command.arg(arg);
        self
    }

    fn args<I: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = I>) -> Client {
        self.command.args(args);
        self
    }

    fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Client {
        self.command.env(name, value);
        self
    }

    /// Runs it with stdin closed, in a process group of its own, which is killed when the
    /// run passes [`RUN_TIMEOUT`].
    fn run(mut self) -> Run {
        let started = Instant::now();
        let mut child = self
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("start {:?}: {err}", self.command.get_program()));
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let stderr = drain(child.stderr.take().expect("piped stderr"));
        let (code, timed_out) = loop {
            if let Some(status) = child.try_wait().expect("poll the client") {
                break (status.code(), false);
            }
            if started.elapsed() > RUN_TIMEOUT {
                // The child is not reaped yet, so its pid still names its group alone.
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                break (child.wait().expect("reap the client").code(), true);
            }
            thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let read = |pipe: mpsc::Receiver<String>| {
            pipe.recv_timeout(PATIENCE)
                .unwrap_or_else(|_| "(still open: the client left a process behind)".into())
        };
        Run { code, stdout: read(stdout), stderr: read(stderr), took, timed_out }
    }
}

/// Reads `pipe` to its end on a thread; the text arrives on the channel.
fn drain(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

// ---------------------------------------------------------------------------------------
// One test's world
// ---------------------------------------------------------------------------------------

/// The fake, the gateway in front of it, the proxy trap and the client's folders.
struct World {
    fake: Fake,
    gateway: Gateway,
    trap: Trap,
    dir: TempDir,
}

impl World {
    /// A gateway whose `default` pool is the fake with [`KEY_A`], serving [`TOKEN`], with
    /// Claude Code's model names aliased by a glob (`"claude-*"`) to [`THINKING_MODEL`].
    fn start() -> World {
        let fake = Fake::start(agent_ollama);
        let config = format!("[aliases]\n\"claude-*\" = \"{THINKING_MODEL}\"\n{}", alice());
        let gateway = Gateway::start(&config, &format!("{}|{KEY_A}\n", fake.url));
        World { fake, gateway, trap: Trap::start(), dir: TempDir::new() }
    }

    fn client(&self, program: &Path) -> Client {
        Client::new(program, &self.dir, &self.trap)
    }

    /// `codex exec` of `prompt` on `model` with reasoning effort `high`, through a custom
    /// provider for the gateway in a fresh `CODEX_HOME`, with Codex's retries off.
    fn codex(&self, program: &Path, model: &str, prompt: &str) -> Run {
        let home = self.dir.path().join("codex-home");
        std::fs::create_dir_all(&home).expect("create CODEX_HOME");
        let config = format!(
            "model = \"{model}\"\n\
             model_reasoning_effort = \"high\"\n\
             model_provider = \"ollama-gateway\"\n\
             check_for_update_on_startup = false\n\
             \n\
             [model_providers.ollama-gateway]\n\
             name = \"ollama-gateway\"\n\
             base_url = \"{}\"\n\
             env_key = \"OLLAMA_GATEWAY_TOKEN\"\n\
             wire_api = \"responses\"\n\
             request_max_retries = 0\n\
             stream_max_retries = 0\n\
             \n\
             [features]\nplugins = false\n\
             \n\
             [analytics]\nenabled = false\n\
             \n\
             [feedback]\nenabled = false\n",
            self.gateway.url("/v1")
        );
        std::fs::write(home.join("config.toml"), config).expect("write Codex's config.toml");
        let run = self
            .client(program)
            .env("CODEX_HOME", &home)
            .env("OLLAMA_GATEWAY_TOKEN", TOKEN)
            .args(["exec", "--skip-git-repo-check", "--sandbox", "workspace-write", prompt])
            .run();
        eprintln!("agents: codex exec took {:.1} s", run.took.as_secs_f64());
        run
    }

    /// `claude -p prompt --output-format json` and `args`, at the gateway with [`TOKEN`],
    /// with `env` added and Claude Code's retries off.
    fn claude(&self, program: &Path, prompt: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut client = self
            .client(program)
            .env("ANTHROPIC_BASE_URL", self.gateway.url(""))
            .env("ANTHROPIC_AUTH_TOKEN", TOKEN)
            .env("ANTHROPIC_API_KEY", "")
            .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
            .env("DISABLE_TELEMETRY", "1")
            .env("DISABLE_AUTOUPDATER", "1")
            .env("CLAUDE_CODE_MAX_RETRIES", "0")
            .args(["-p", prompt, "--output-format", "json"])
            .args(args);
        for (name, value) in env {
            client = client.env(name, value);
        }
        let run = client.run();
        eprintln!("agents: claude -p took {:.1} s", run.took.as_secs_f64());
        run
    }

    /// Everything worth seeing when an assertion fails.
    fn context(&self, run: &Run) -> String {
        let mut requests = String::new();
        for r in self.fake.requests() {
            let think = r.json.as_ref().and_then(|j| j.get("think")).map_or("-".into(), Value::to_string);
            requests.push_str(&format!("{} {} model={:?} think={think}\n", r.method, r.path, r.model()));
            for m in r.json.as_ref().and_then(|j| j["messages"].as_array()).into_iter().flatten() {
                let mut shown = m.clone();
                if let Some(text) = m["content"].as_str() {
                    shown["content"] = text.chars().take(160).collect::<String>().into();
                }
                requests.push_str(&format!("    {shown}\n"));
            }
        }
        format!(
            "exit {:?}{} after {:.1} s\n===== stdout =====\n{}\n===== stderr =====\n{}\n\
             ===== gateway log =====\n{}\n===== upstream requests =====\n{requests}\
             ===== proxy trap =====\n{:?}",
            run.code,
            if run.timed_out { " (killed: timed out)" } else { "" },
            run.took.as_secs_f64(),
            run.stdout,
            run.stderr,
            self.gateway.logs(),
            self.trap.seen(),
        )
    }

    /// The client exited 0 by itself, reached nothing but the gateway, and the gateway
    /// answered each request 200 and `path` exactly `count` times (a repeat is a client
    /// retrying after rejecting a reply); upstream saw the pool's key, never the token.
    #[track_caller]
    fn assert_clean_run(&self, run: &Run, path: &str, count: usize) {
        let context = self.context(run);
        assert!(!run.timed_out && run.code == Some(0), "the client failed\n{context}");
        eqnice!(Vec::<String>::new(), self.trap.seen(), "connections past the gateway\n{context}");
        let logs = self.gateway.logs();
        let served: Vec<&str> = logs.lines().filter(|l| l.contains(" status=")).collect();
        let refused: Vec<&&str> = served.iter().filter(|l| !l.contains(" status=200 ")).collect();
        assert!(refused.is_empty(), "requests the gateway did not answer 200: {refused:#?}\n{context}");
        let asked = served.iter().filter(|l| l.contains(&format!(" POST {path} "))).count();
        eqnice!(count, asked, "POST {path} requests\n{context}");
        for sent in self.fake.requests() {
            let bearer = format!("Bearer {KEY_A}");
            eqnice!(Some(bearer.as_str()), sent.authorization(), "{} {}\n{context}", sent.method, sent.path);
            assert!(!sent.raw.contains(TOKEN), "the client token went upstream\n{context}");
        }
    }

    /// The last chat request (the one answered with the final text) carries the fake's call
    /// of `tool` with `arguments` after the thinking that came with it, and right after it
    /// the tool's result holding [`COMMAND_OUTPUT`], as a `tool` message tied to the call.
    #[track_caller]
    fn assert_round_trip(&self, run: &Run, tool: &str, arguments: &Value) {
        let context = self.context(run);
        let chats = chats(&self.fake);
        let last = chats.last().unwrap_or_else(|| panic!("no chat request\n{context}"));
        let messages = last.body()["messages"].as_array().cloned().unwrap_or_default();
        let at = messages
            .iter()
            .position(|m| m["role"] == "assistant" && m.get("tool_calls").is_some())
            .unwrap_or_else(|| panic!("the last chat request has no assistant tool call\n{context}"));
        let (call, result) = (&messages[at], messages.get(at + 1).cloned().unwrap_or_default());
        eqnice!(1, call["tool_calls"].as_array().map_or(0, Vec::len), "{call}\n{context}");
        let function = &call["tool_calls"][0]["function"];
        eqnice!(tool, function["name"].as_str().unwrap_or(""), "{call}\n{context}");
        eqjson!(arguments, function["arguments"], "the call's arguments as the fake made them\n{context}");
        eqjson!(json!(THINKING), call["thinking"], "the thinking before the call\n{context}");
        eqjson!(json!("tool"), result["role"], "the message after the call: {result}\n{context}");
        let output = result["content"].as_str().unwrap_or("");
        assert!(
            output.contains(COMMAND_OUTPUT),
            "the tool result lacks {COMMAND_OUTPUT}: {result}\n{context}"
        );
        eqjson!(json!(tool), result["tool_name"], "{result}\n{context}");
        eqjson!(call["tool_calls"][0]["id"], result["tool_call_id"], "the result names its call\n{context}");
    }
}

// ---------------------------------------------------------------------------------------
// Codex CLI: `codex exec`, the Responses API
// ---------------------------------------------------------------------------------------

#[test]
fn codex_exec_prints_the_fake_ollamas_answer() {
    let Some(codex) = installed(&CODEX, "codex_exec_prints_the_fake_ollamas_answer") else { return };
    let world = World::start();

    let run = world.codex(&codex, PLAIN_MODEL, PLAIN_PROMPT);

    world.assert_clean_run(&run, "/v1/responses", 1);
    eqnice!(PLAIN_ANSWER.concat(), run.stdout.trim(), "codex's stdout\n{}", world.context(&run));
    let chat = chats(&world.fake).pop().expect("a chat request");
    eqnice!(PLAIN_MODEL, chat.model());
    let messages = chat.body()["messages"].as_array().cloned().unwrap_or_default();
    eqjson!(json!("system"), messages[0]["role"], "Codex's developer message leads, as system");
    let last = messages.last().cloned().unwrap_or_default();
    eqjson!(json!({"role": "user", "content": PLAIN_PROMPT}), last, "the prompt comes last");
    // The effort asks for thinking; the model refuses it, so the gateway asks again without.
    let thinks: Vec<Option<Value>> =
        chats(&world.fake).iter().map(|c| c.body().get("think").cloned()).collect();
    eqnice!(vec![Some(json!("high")), None], thinks, "{}", world.context(&run));
}

#[test]
fn codex_exec_runs_the_fake_ollamas_shell_call_and_sends_back_its_output() {
    let test = "codex_exec_runs_the_fake_ollamas_shell_call_and_sends_back_its_output";
    let Some(codex) = installed(&CODEX, test) else { return };
    let world = World::start();

    let run = world.codex(&codex, THINKING_MODEL, TOOL_PROMPT);

    world.assert_clean_run(&run, "/v1/responses", 2);
    eqnice!(FINAL_ANSWER.concat(), run.stdout.trim(), "codex's stdout\n{}", world.context(&run));
    let first = chats(&world.fake).into_iter().next().expect("a chat request");
    let shell = tool_declared(first.body(), "exec_command").expect("Codex offers exec_command");
    assert!(shell["function"]["parameters"]["properties"]["cmd"].is_object(), "exec_command's cmd: {shell}");
    world.assert_round_trip(&run, "exec_command", &json!({"cmd": COMMAND}));
}

// ---------------------------------------------------------------------------------------
// Claude Code: `claude -p`, the Messages API
// ---------------------------------------------------------------------------------------

/// What `claude -p --output-format json` printed, as JSON.
fn claude_result(run: &Run, world: &World) -> Value {
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|err| panic!("claude's stdout is not JSON ({err})\n{}", world.context(run)))
}

#[test]
fn claude_p_prints_the_fake_ollamas_answer() {
    let Some(claude) = installed(&CLAUDE, "claude_p_prints_the_fake_ollamas_answer") else { return };
    let world = World::start();

    // The model named in the environment, for the main loop and for small tasks.
    let models = [("ANTHROPIC_MODEL", PLAIN_MODEL), ("ANTHROPIC_SMALL_FAST_MODEL", PLAIN_MODEL)];
    let run = world.claude(&claude, PLAIN_PROMPT, &[], &models);

    world.assert_clean_run(&run, "/v1/messages", 1);
    let result = claude_result(&run, &world);
    let context = world.context(&run);
    eqjson!(json!(PLAIN_ANSWER.concat()), result["result"], "claude's result\n{context}");
    eqjson!(json!(false), result["is_error"], "{context}");
    // Claude Code asks for thinking; the model refuses it, so the gateway asks again without.
    let chats = chats(&world.fake);
    assert!(chats.iter().all(|c| c.model() == PLAIN_MODEL), "models upstream\n{context}");
    let thinks: Vec<Option<&Value>> = chats.iter().map(|c| c.body().get("think")).collect();
    assert!(matches!(thinks[..], [Some(_), None]), "think asked, then not: {thinks:?}\n{context}");
}

#[test]
fn claude_p_runs_the_fake_ollamas_bash_call_and_sends_back_its_output() {
    let test = "claude_p_runs_the_fake_ollamas_bash_call_and_sends_back_its_output";
    let Some(claude) = installed(&CLAUDE, test) else { return };
    let world = World::start();

    // Claude Code's own model names, which the gateway's `"claude-*"` alias maps.
    let run = world.claude(&claude, TOOL_PROMPT, &["--allowedTools", "Bash"], &[]);

    world.assert_clean_run(&run, "/v1/messages", 2);
    let result = claude_result(&run, &world);
    let context = world.context(&run);
    eqjson!(json!(FINAL_ANSWER.concat()), result["result"], "claude's result\n{context}");
    eqjson!(json!([]), result["permission_denials"], "{context}");
    let chats = chats(&world.fake);
    assert!(chats.iter().all(|c| c.model() == THINKING_MODEL), "the alias's target upstream\n{context}");
    let logged = world.gateway.wait_for_log(&[" POST /v1/messages ", " model=claude-"]);
    assert!(logged.contains("status=200"), "{logged}");
    let bash = tool_declared(chats[0].body(), "Bash").expect("Claude Code offers Bash");
    assert!(bash["function"]["parameters"]["properties"]["command"].is_object(), "Bash's command: {bash}");
    let arguments = json!({"command": COMMAND, "description": "Print the round-trip marker"});
    world.assert_round_trip(&run, "Bash", &arguments);
}
