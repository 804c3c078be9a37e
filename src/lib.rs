//! ollama-gateway: an OpenAI-compatible, token-authenticated gateway in front of Ollama and
//! Ollama Cloud, spreading requests over a pool of upstream keys.
//!
//! The binary (`main.rs`) only parses the command line and calls [`cli::run`]; everything
//! else lives here so that tests can reach it. The modules, from the edge inwards:
//! [`cli`] and [`server`] (process and sockets), [`api`] (routes as functions of values),
//! [`relay`] and [`pool`] (failover over keys), [`upstream`] (ureq), [`translate`] (pure JSON
//! mapping), and [`config`], [`keys`], [`auth`], [`secret`] underneath.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod cancel;
pub mod check;
pub mod chunked;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod health;
pub mod http;
pub mod json_cost;
pub mod keys;
pub mod keystate;
pub mod live;
pub mod pool;
pub mod relay;
pub mod secret;
pub mod server;
pub mod statefile;
pub mod translate;
pub mod upstream;
pub mod watch;
