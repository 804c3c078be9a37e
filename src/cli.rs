//! The command line: parsing arguments into a [`Command`] and running it.
//!
//! Exit codes: 0 on success, 2 on a usage or config error (a bad flag, a bad line in
//! `config.toml` or `keys.txt`), 1 when serving fails after start-up (the port is taken).
//! `check` and `keys import` also exit 1 when a key they probed did not work; `usage` exits 1
//! when the state file cannot be read.

use crate::check;
use crate::config::{Config, ConfigError, Files, DEFAULT_CONFIG_PATH};
use crate::import::{self, Source};
use crate::keys;
use crate::live::{spawn_housekeeper, Live, Signals};
use crate::secret::{self, sha256};
use crate::server::Server;
use crate::statefile::{self, Loaded};
use crate::usage::{self, Usage, KEEP_DAYS};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The token in `config.example.toml`. It is public, so the gateway warns when it is accepted.
pub const EXAMPLE_TOKEN: &str = "sk-ollama-gateway-example-change-me";

const USAGE: &str = "\
ollama-gateway: an OpenAI-compatible gateway in front of Ollama and Ollama Cloud

Usage:
  ollama-gateway [serve] [--config PATH]     serve the API (the default command)
  ollama-gateway keys [--config PATH]        show how keys.txt was read, keys masked
  ollama-gateway keys import FILE|- [--pool NAME] [--validate] [--config PATH]
                                             add the keys listed in FILE (- reads stdin;
                                             any keys.txt form, options too) to the [NAME]
                                             section of keys.txt (default: default), except
                                             those already there or repeated. --validate
                                             probes each first and adds the good ones and
                                             the exhausted ones (a spent quota comes back
                                             by itself); invalid or unreachable keys are
                                             left out. Exit 0 when every line went in or was
                                             a duplicate, 1 when a line was bad or a key
                                             failed, 2 on a usage, config or file error
  ollama-gateway check [--config PATH] [--json]
                                             probe every key, update the state file; exit 0
                                             when every pool has a usable key, 1 when one
                                             has none, 2 on a config error (for cron)
  ollama-gateway usage [--config PATH] [--days N] [--json]
                                             print what each token used per model and day
                                             (UTC) in the last N days (1 to 90, default 7),
                                             from the state file, with totals per token
  ollama-gateway token new [--name NAME]     make a new client token and its config entry
  ollama-gateway token hash TOKEN            print the sha256 of a token, for config.toml
  ollama-gateway --help | --version

The config path defaults to ./config.toml, or $OLLAMA_GATEWAY_CONFIG when set.
Logging follows RUST_LOG (default: info); debug and trace lines of other crates (ureq's
print request heads, upstream keys included) are dropped at every level.
";

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Serve the API.
    Serve {
        /// Config file path.
        config: PathBuf,
    },
    /// Print the parsed keys file.
    Keys {
        /// Config file path.
        config: PathBuf,
    },
    /// Add a list of keys to keys.txt.
    KeysImport {
        /// Config file path.
        config: PathBuf,
        /// The list to read.
        source: Source,
        /// The keys.txt section to add them to.
        pool: String,
        /// Probe each key first.
        validate: bool,
    },
    /// Probe every key and update the state file.
    Check {
        /// Config file path.
        config: PathBuf,
        /// Print JSON instead of a table.
        json: bool,
    },
    /// Print the usage table from the state file.
    Usage {
        /// Config file path.
        config: PathBuf,
        /// Days shown, today included.
        days: u64,
        /// Print JSON rows instead of a table.
        json: bool,
    },
    /// Make a new token.
    TokenNew {
        /// Name for the `[[tokens]]` entry.
        name: String,
    },
    /// Hash a token.
    TokenHash {
        /// The token text.
        token: String,
    },
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses arguments (without the program name). `env_config` is `$OLLAMA_GATEWAY_CONFIG`.
pub fn parse(args: &[String], env_config: Option<String>) -> Result<Command, String> {
    let default_config =
        || PathBuf::from(env_config.clone().unwrap_or_else(|| DEFAULT_CONFIG_PATH.to_string()));
    let mut words = args.iter().map(String::as_str).peekable();
    if let Some(first) = words.peek() {
        match *first {
            "-h" | "--help" | "help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
    }
    let subcommand = match words.peek() {
        Some(word) if !word.starts_with('-') => words.next().unwrap_or("serve"),
        _ => "serve",
    };
    let rest: Vec<&str> = words.collect();
    if rest.iter().any(|w| *w == "-h" || *w == "--help") {
        return Ok(Command::Help);
    }
    match subcommand {
        "check" => {
            let mut config = None;
            let mut json = false;
            let mut rest = rest.iter();
            while let Some(word) = rest.next() {
                match *word {
                    "--json" => json = true,
                    "--config" => match rest.next() {
                        Some(path) => config = Some(PathBuf::from(path)),
                        None => return Err("--config needs a path".to_string()),
                    },
                    flag if flag.starts_with("--config=") => {
                        config = Some(PathBuf::from(&flag["--config=".len()..]))
                    }
                    other => return Err(format!("unknown argument '{other}' for 'check'")),
                }
            }
            Ok(Command::Check { config: config.unwrap_or_else(default_config), json })
        }
        "keys" if rest.contains(&"import") => parse_import(&rest, default_config),
        "usage" => parse_usage(&rest, default_config),
        "serve" | "keys" => {
            let config = match rest.as_slice() {
                [] => default_config(),
                ["--config", path] => PathBuf::from(path),
                [flag] if flag.starts_with("--config=") => PathBuf::from(&flag["--config=".len()..]),
                ["--config"] => return Err("--config needs a path".to_string()),
                [other, ..] => return Err(format!("unknown argument '{other}' for '{subcommand}'")),
            };
            Ok(if subcommand == "serve" { Command::Serve { config } } else { Command::Keys { config } })
        }
        "token" => match rest.as_slice() {
            ["new"] => Ok(Command::TokenNew { name: "client".to_string() }),
            ["new", "--name", name] => Ok(Command::TokenNew { name: name.to_string() }),
            ["new", "--name"] => Err("--name needs a value".to_string()),
            ["hash", token] => Ok(Command::TokenHash { token: token.to_string() }),
            ["hash"] => Err("token hash needs the token: ollama-gateway token hash TOKEN".to_string()),
            [other, ..] => Err(format!("unknown argument '{other}' for 'token' (expected 'new' or 'hash')")),
            [] => Err("token needs 'new' or 'hash'".to_string()),
        },
        other => Err(format!("unknown command '{other}' (expected serve, keys, check, usage or token)")),
    }
}

/// `usage [--config PATH] [--days N] [--json]`, flags in any order.
fn parse_usage(rest: &[&str], default_config: impl Fn() -> PathBuf) -> Result<Command, String> {
    let (mut config, mut days, mut json) = (None, 7, false);
    let mut words = rest.iter().copied();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (word, None),
        };
        match flag {
            "--json" if inline.is_none() => json = true,
            "--json" => return Err("--json takes no value".to_string()),
            "--config" | "--days" => {
                let Some(value) = inline.or_else(|| words.next()) else {
                    return Err(format!("{flag} needs a value"));
                };
                match flag {
                    "--config" => config = Some(PathBuf::from(value)),
                    _ => {
                        days = value.parse().ok().filter(|days| (1..=KEEP_DAYS).contains(days)).ok_or_else(
                            || format!("--days must be a whole number from 1 to {KEEP_DAYS}, not '{value}'"),
                        )?
                    }
                }
            }
            other => return Err(format!("unknown argument '{other}' for 'usage'")),
        }
    }
    Ok(Command::Usage { config: config.unwrap_or_else(default_config), days, json })
}

/// `keys import FILE|- [--pool NAME] [--validate] [--config PATH]`, flags in any order;
/// `rest` is every word after `keys`, `import` included.
fn parse_import(rest: &[&str], default_config: impl Fn() -> PathBuf) -> Result<Command, String> {
    let (mut config, mut pool, mut validate, mut source) = (None, None, false, None);
    let mut words = rest.iter().copied();
    let mut seen_import = false;
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (word, None),
        };
        match flag {
            "import" if !seen_import => seen_import = true,
            "--validate" if inline.is_none() => validate = true,
            "--validate" => return Err("--validate takes no value".to_string()),
            "--config" | "--pool" => {
                let Some(value) = inline.or_else(|| words.next()) else {
                    return Err(format!("{flag} needs a value"));
                };
                match flag {
                    "--config" => config = Some(PathBuf::from(value)),
                    _ => pool = Some(value.to_string()),
                }
            }
            other if other.starts_with('-') && other != "-" => {
                return Err(format!("unknown argument '{other}' for 'keys import'"))
            }
            list if source.is_some() => {
                let list = keys::mask_if_key(list);
                return Err(format!("keys import reads one list; '{list}' would be a second one"));
            }
            "-" => source = Some(Source::Stdin),
            file => source = Some(Source::File(PathBuf::from(file))),
        }
    }
    let Some(source) = source else {
        return Err("keys import needs the list to read: a FILE, or - for stdin".to_string());
    };
    let pool = pool.unwrap_or_else(|| keys::DEFAULT_POOL.to_string());
    if !keys::is_pool_name(&pool) {
        return Err(format!(
            "--pool '{pool}' is not a pool name: use letters, digits, '.', '_' or '-', as in a [section] header"
        ));
    }
    Ok(Command::KeysImport { config: config.unwrap_or_else(default_config), source, pool, validate })
}

/// Why a command could not do its work: what `main` prints (each line as `error: …`) and
/// the exit code it picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// A file is wrong: config.toml or keys.txt, each message naming file and line (exit 2).
    Config(Vec<String>),
    /// A failure after start-up, such as a port already taken (exit 1).
    Failed(String),
}

impl CliError {
    /// The lines to print, without the `error: ` each gets.
    pub fn messages(&self) -> Vec<String> {
        match self {
            CliError::Usage(message) => vec![format!("{message} (see ollama-gateway --help)")],
            CliError::Config(messages) => messages.clone(),
            CliError::Failed(message) => vec![message.clone()],
        }
    }

    /// The documented exit code: 2 for usage and config errors, 1 for failures.
    pub fn code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) | CliError::Config(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::from(1),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(error: ConfigError) -> CliError {
        CliError::Config(vec![error.to_string()])
    }
}

/// Runs a command: its exit code when it ran (`check` has three), or why it could not.
pub fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Help => emit(USAGE),
        Command::Version => emit(&format!("ollama-gateway {}\n", env!("CARGO_PKG_VERSION"))),
        Command::TokenHash { token } => emit(&format!("{}\n", secret::sha256_hex(&token))),
        Command::TokenNew { name } => token_new(&name)?,
        Command::Keys { config } => show_keys(&config)?,
        Command::Usage { config, days, json } => show_usage(&config, days, json)?,
        Command::Check { config, json } => return Ok(check::run(&config, json)?),
        Command::KeysImport { config, source, pool, validate } => {
            return Ok(import::run(&import::Request { config, source, pool, validate })?)
        }
        Command::Serve { config } => serve(&config)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`ollama-gateway keys | head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn token_new(name: &str) -> Result<(), CliError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| CliError::Failed(format!("cannot read the OS random source /dev/urandom: {err}")))?;
    let token = format!("sk-{}", hex::encode(bytes));
    let name = name.replace('\\', "\\\\").replace('"', "\\\"");
    emit(&format!(
        "{token}\n\n# Give the token above to the client. Add this to config.toml (it stores only the hash):\n\
         [[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\npool = \"{}\"\n",
        secret::sha256_hex(&token),
        keys::DEFAULT_POOL
    ));
    Ok(())
}

fn show_keys(config_path: &Path) -> Result<(), CliError> {
    let files = Files::read(config_path);
    let read = files.raw_config().and_then(|(raw, _)| {
        let (keys_path, parsed) = files.keys(&raw.upstream.base_url)?;
        Ok((keys_path.to_path_buf(), parsed))
    });
    let (keys_path, parsed) = read?;
    let pools = parsed.pools();
    let mut out =
        format!("{}: {} upstreams in {} pools\n", keys_path.display(), parsed.entries.len(), pools.len());
    let url_width = parsed.entries.iter().map(|e| e.shown_url().len()).max().unwrap_or(0);
    for pool in &pools {
        out.push_str(&format!("[{pool}]\n"));
        for entry in parsed.entries.iter().filter(|e| e.pool == *pool) {
            let key = entry.key.as_ref().map(|k| k.mask()).unwrap_or_else(|| "(no key)".to_string());
            let row = format!(
                "  line {:<4} {key:<12} {:<url_width$}  {}",
                entry.line,
                entry.shown_url(),
                show_options(&entry.options)
            );
            out.push_str(row.trim_end());
            out.push('\n');
        }
    }
    for duplicate in &parsed.duplicates {
        out.push_str(&format!("{}: {duplicate}\n", keys_path.display()));
    }
    emit(&out);
    match parsed.errors.is_empty() {
        true => Ok(()),
        false => Err(CliError::Config(
            parsed
                .errors
                .iter()
                .map(|error| format!("{}:{}: {}", keys_path.display(), error.line, error.message))
                .collect(),
        )),
    }
}

/// Prints the usage of the last `days` days from the state file config.toml names (which
/// a running gateway writes every few seconds), as a table or as JSON rows.
fn show_usage(config_path: &Path, days: u64, as_json: bool) -> Result<(), CliError> {
    // Only the config is read, not keys.txt: a bad key line does not hide what was used.
    let files = Files::read(config_path);
    let (raw, _) = files.raw_config()?;
    let path = files.state_file(&raw);
    let rows = match statefile::load(&path) {
        Loaded::Read(saved) => Usage::new(saved.usage).rows(days),
        Loaded::Fresh => Vec::new(),
        Loaded::Corrupt(why) => return Err(CliError::Failed(why)),
    };
    if as_json {
        let text = serde_json::to_string(&rows)
            .map_err(|err| CliError::Failed(format!("cannot write the rows as JSON: {err}")))?;
        emit(&format!("{text}\n"));
        return Ok(());
    }
    let today = crate::keystate::now() / 86_400;
    let span = match days {
        1 => format!("today ({}, UTC)", crate::utc::date(today)),
        _ => format!(
            "in the last {days} days ({} to {}, UTC)",
            crate::utc::date(today + 1 - days),
            crate::utc::date(today)
        ),
    };
    match rows.is_empty() {
        true => emit(&format!("{}: no usage {span}\n", path.display())),
        false => emit(&format!("{}: usage {span}\n{}", path.display(), usage::table(&rows))),
    }
    Ok(())
}

/// A key's options as `keys` prints them, every one shown (the defaults too), so the
/// columns line up: `weight=2  max_concurrent=3             name=paid-1`.
fn show_options(options: &keys::KeyOptions) -> String {
    let max_concurrent = match options.max_concurrent {
        None => "(pool's)".to_string(),
        Some(0) => "0 (no limit)".to_string(),
        Some(n) => n.to_string(),
    };
    let name = options.name.as_deref().map(|name| format!("name={name}")).unwrap_or_default();
    format!("weight={:<3} max_concurrent={max_concurrent:<12} {name}", options.weight)
}

/// Serves until a signal stops the process; returns only when it cannot start.
fn serve(config_path: &Path) -> Result<(), CliError> {
    let config = Config::load(config_path)?;
    // Before the first line of the run, so that every line has the configured format.
    crate::logline::set_format(config.raw.log_format);
    for duplicate in &config.duplicate_keys {
        log::warn!("{}: {duplicate}", config.keys_file.display());
    }
    if config.raw.allow_anonymous {
        log::warn!(
            "allow_anonymous = true: requests without a token are served from pool 'default'; anyone who \
             can reach {} can use those keys",
            config.raw.listen
        );
    }
    let example = sha256(EXAMPLE_TOKEN);
    if config.tokens.iter().any(|t| secret::digest_eq(&t.digest, &example)) {
        log::warn!(
            "config accepts the example token {EXAMPLE_TOKEN}, which is public: replace it with one from \
             `ollama-gateway token new` before exposing this port"
        );
    }
    let server = Server::bind(config.raw.listen)
        .map_err(|err| CliError::Failed(format!("cannot listen on {}: {err}", config.raw.listen)))?;
    let pools = config.keys.iter().map(|k| k.pool.as_str()).collect::<std::collections::BTreeSet<_>>().len();
    log::info!(
        "ollama-gateway {} listening on http://{} ({} workers, {} upstreams in {pools} pools, {} tokens)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        config.raw.workers,
        config.keys.len(),
        config.tokens.len()
    );
    let live = Live::new(config_path, config);
    match Signals::register() {
        Ok(signals) => spawn_housekeeper(Arc::clone(&live), signals),
        Err(err) => {
            log::error!("cannot watch signals ({err}); SIGHUP will not reload and SIGTERM will not save")
        }
    }
    // Only a signal ends the gateway (the housekeeper saves the key states and exits).
    server.run(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    fn import(config: PathBuf, source: Source, pool: &str, validate: bool) -> Command {
        Command::KeysImport { config, source, pool: pool.into(), validate }
    }

    fn file(path: &str) -> Source {
        Source::File(PathBuf::from(path))
    }

    #[test]
    fn commands_and_defaults() {
        let config = |p: &str| PathBuf::from(p);
        let cases = [
            ("", Command::Serve { config: config("config.toml") }),
            ("serve", Command::Serve { config: config("config.toml") }),
            ("--config /etc/g.toml", Command::Serve { config: config("/etc/g.toml") }),
            ("serve --config=a.toml", Command::Serve { config: config("a.toml") }),
            ("keys --config k.toml", Command::Keys { config: config("k.toml") }),
            ("check", Command::Check { config: config("config.toml"), json: false }),
            ("check --json --config c.toml", Command::Check { config: config("c.toml"), json: true }),
            ("token new", Command::TokenNew { name: "client".into() }),
            ("keys import list.txt", import(config("config.toml"), file("list.txt"), "default", false)),
            (
                "keys import - --pool cloud --validate --config c.toml",
                import(config("c.toml"), Source::Stdin, "cloud", true),
            ),
            (
                "keys --config c.toml import --pool=team-b --config=d.toml list.txt",
                import(config("d.toml"), file("list.txt"), "team-b", false),
            ),
            ("keys import --validate import", import(config("config.toml"), file("import"), "default", true)),
            ("keys import -h", Command::Help),
            ("token new --name laptop", Command::TokenNew { name: "laptop".into() }),
            ("usage", Command::Usage { config: config("config.toml"), days: 7, json: false }),
            (
                "usage --json --days 90 --config c.toml",
                Command::Usage { config: config("c.toml"), days: 90, json: true },
            ),
            (
                "usage --days=1 --config=d.toml",
                Command::Usage { config: config("d.toml"), days: 1, json: false },
            ),
            ("token hash sk-abc", Command::TokenHash { token: "sk-abc".into() }),
            ("--help", Command::Help),
            ("keys -h", Command::Help),
            ("--version", Command::Version),
        ];
        for (line, want) in cases {
            assert_eq!(parse(&args(line), None), Ok(want), "{line:?}");
        }
    }

    #[test]
    fn env_sets_the_default_config_path_but_the_flag_wins() {
        let env = Some("/srv/gw.toml".to_string());
        assert_eq!(parse(&[], env.clone()), Ok(Command::Serve { config: PathBuf::from("/srv/gw.toml") }));
        assert_eq!(
            parse(&args("--config x.toml"), env),
            Ok(Command::Serve { config: PathBuf::from("x.toml") })
        );
    }

    #[test]
    fn keys_shows_every_option_defaults_included() {
        let named = keys::KeyOptions { weight: 2, max_concurrent: Some(3), name: Some("paid-1".into()) };
        let unlimited = keys::KeyOptions { max_concurrent: Some(0), ..Default::default() };
        let cases = [
            (keys::KeyOptions::default(), "weight=1   max_concurrent=(pool's)"),
            (named, "weight=2   max_concurrent=3            name=paid-1"),
            (unlimited, "weight=1   max_concurrent=0 (no limit)"),
        ];
        for (options, want) in cases {
            assert_eq!(show_options(&options).trim_end(), want);
        }
    }

    #[test]
    fn unknown_words_are_one_line_errors() {
        for line in ["frobnicate", "--verbose", "serve --port 1", "token", "token mint", "keys --config"] {
            let err = parse(&args(line), None).expect_err(line);
            assert!(!err.contains('\n') && !err.is_empty(), "{line}: {err}");
        }
    }

    #[test]
    fn usage_arguments_that_cannot_work_say_why() {
        let cases = [
            ("usage --days", "--days needs a value"),
            ("usage --days abc", "--days must be a whole number from 1 to 90, not 'abc'"),
            ("usage --days 0", "from 1 to 90"),
            ("usage --days 91", "from 1 to 90"),
            ("usage --days=-1", "from 1 to 90"),
            ("usage --config", "--config needs a value"),
            ("usage --json=yes", "--json takes no value"),
            ("usage today", "unknown argument 'today' for 'usage'"),
        ];
        for (line, want) in cases {
            let err = parse(&args(line), None).expect_err(line);
            assert!(err.contains(want) && !err.contains('\n'), "{line}: {err}");
        }
    }

    #[test]
    fn keys_import_arguments_that_cannot_work_say_why() {
        let cases = [
            ("keys import", "needs the list to read: a FILE, or - for stdin"),
            ("keys import --validate", "needs the list to read"),
            ("keys import a.txt b.txt", "'b.txt' would be a second one"),
            ("keys import - -", "'-' would be a second one"),
            ("keys import a.txt --pool", "--pool needs a value"),
            ("keys import a.txt --config", "--config needs a value"),
            ("keys import a.txt --pool team/b", "--pool 'team/b' is not a pool name"),
            ("keys import a.txt --pool=", "--pool '' is not a pool name"),
            ("keys import a.txt --force", "unknown argument '--force' for 'keys import'"),
            ("keys import a.txt --validate=yes", "--validate takes no value"),
        ];
        for (line, want) in cases {
            let err = parse(&args(line), None).expect_err(line);
            assert!(err.contains(want) && !err.contains('\n'), "{line}: {err}");
        }
    }
}
