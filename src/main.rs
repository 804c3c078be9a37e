//! The `ollama-gateway` binary: parse the command line, run it, exit with its code.

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match ollama_gateway::cli::parse(&args, std::env::var("OLLAMA_GATEWAY_CONFIG").ok()) {
        Ok(command) => ollama_gateway::cli::run(command),
        Err(message) => {
            eprintln!("error: {message} (see ollama-gateway --help)");
            ExitCode::from(2)
        }
    }
}
