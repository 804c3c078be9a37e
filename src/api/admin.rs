//! The admin API (`/admin/api/…`, scope `admin`): what the gateway knows about its keys and
//! how busy it is, keys set aside and brought back, a health check or a reload now, and
//! the usage of each token.
//!
//! In scope: its routes and their answers. Out of scope: authentication and the scope
//! check (the route table in `api`, as for every route), what a key's state means
//! (`keystate`), probing (`health`), reloading (the process, through `control`), counting
//! usage (`usage`). No answer holds a key or a token: keys appear as their id (a hash) and
//! their label (the `name=` option, or the masked key), upstreams as their host alone, and
//! error texts with the key masked.
//!
//! | route | answer |
//! |---|---|
//! | `GET /admin/api/status` | the status below |
//! | `POST /admin/api/keys/{id}/disable`, `…/enable` | the key's object, as in the status; 404 for an unknown id |
//! | `POST /admin/api/check` | `{"checked_at", "duration_ms", "ok", "pools": {name: {"usable", "keys"}}, "keys": [{"id", "pool", "label", "host", "line", "state", "usable", "result", "note", "latency_ms", "usage": {"session", "weekly", "monthly"} or null, "warning"}]}`; 409 while another check runs |
//! | `POST /admin/api/reload` | `{"reloaded": true, "generation": N}`, or 422 with `error.file`, `error.line`, `error.key`, `error.message` |
//! | `GET /admin/api/usage?days=N` | `{"days": N, "rows": [{"date", "token", "model", "requests", "errors", "prompt_tokens", "completion_tokens"}]}`, newest day first; N from 1 to 90, default 7; 400 otherwise |
//!
//! The status, for a page to draw (times are RFC 3339 UTC, `null` when none):
//!
//! ```text
//! {
//!   "version": "0.1.0",
//!   "uptime_secs": 3600,
//!   "config": {"generation": 2, "loaded_at": "2026-05-01T10:00:00Z"},
//!   "requests": {"in_flight": 3, "queued": 0},
//!   "pools": [{
//!     "name": "default", "provider": "ollama", "fallback": null, "strategy": "round-robin",
//!     "usable": 1,
//!     "keys": [{
//!       "id": "3f2a…(24 hex)", "label": "paid-1", "host": "ollama.com", "line": 1,
//!       "state": "exhausted", "health": "exhausted", "disabled": false,
//!       "until": "2026-05-04T00:00:00Z", "until_secs": 225000,
//!       "last_error": "you (x) have reached your weekly usage limit, …",
//!       "requests": 10, "successes": 8, "failures": 2,
//!       "prompt_tokens": 1200, "completion_tokens": 300, "last_used": "2026-05-01T10:59:00Z",
//!       "model_locks": {"kimi-k2:1t": "2026-05-01T11:30:00Z"},
//!       "slots_in_use": 0, "slot_limit": 3, "usage": 0.91,
//!       "requests_per_minute": [0, 0, …, 2, 1], "failures_per_minute": [0, 0, …, 0, 1]
//!     }]
//!   }]
//! }
//! ```
//!
//! `state` is `disabled` for a disabled key and its `health` otherwise (`healthy`,
//! `invalid`, `exhausted`, `backoff`); `health` says what the key would be if enabled.
//! Pools come in keys.txt order, each key once per pool it is in (a key in two pools has
//! one state: disabling it disables it in both). `slot_limit` 0 means no limit; `usage` is
//! the highest used fraction of the plan's windows as last read (1.0: used up). `queued`
//! counts requests waiting for a worker; `in_flight` counts every request taken, those
//! queued and this one included. `requests_per_minute` and `failures_per_minute` are the
//! key's upstream attempts (and the failed ones) in each of the last 60 minutes, oldest
//! first, the current minute last; since the process started (a restart starts them at 0).

use crate::config::{Provider, Strategy};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::health::{self, Outcome};
use crate::http::{Client, Reply, Req};

use crate::keys::KeyEntry;
use crate::keystate::{self, Health, KeyState};
use crate::metrics;
use crate::pool::Pool;
use crate::upstream;
use crate::usage::KEEP_DAYS;
use crate::utc;
use serde_json::{json, Map, Value};
use std::time::Instant;

/// The days of usage answered when `days` is not given.
const DEFAULT_DAYS: u64 = 7;

/// One admin route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /admin/api/status`.
    Status,
    /// `POST /admin/api/keys/{id}/disable` (`true`) or `…/enable` (`false`).
    Disable(String, bool),
    /// `POST /admin/api/check`.
    Check,
    /// `POST /admin/api/reload`.
    Reload,
    /// `GET /admin/api/usage`.
    Usage,
}

impl Route {
    /// The route a normalised path (`/admin/api/status`) names, if any.
    pub fn of(path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/admin/api/")?;
        Some(match rest {
            "status" => Route::Status,
            "check" => Route::Check,
            "reload" => Route::Reload,
            "usage" => Route::Usage,
            _ => {
                let (id, action) = rest.strip_prefix("keys/")?.split_once('/')?;
                let disable = match action {
                    "disable" => true,
                    "enable" => false,
                    _ => return None,
                };
                (!id.is_empty()).then(|| Route::Disable(id.to_string(), disable))?
            }
        })
    }

    /// The methods it answers.
    pub fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Status | Route::Usage => &["GET", "HEAD"],
            Route::Disable(..) | Route::Check | Route::Reload => &["POST"],
        }
    }
}

/// Answers an admin route for `client`, whose token has the `admin` scope.
pub fn handle(route: &Route, req: &Req, gateway: &Gateway, client: Client<'_>) -> Result<Reply, ApiError> {
    match route {
        Route::Status => Ok(Reply::json(200, &status(gateway))),
        Route::Disable(id, disable) => set_disabled(gateway, id, *disable, client),
        Route::Check => check(gateway, client),
        Route::Reload => reload(gateway, client),
        Route::Usage => usage(req, gateway),
    }
}

fn status(gateway: &Gateway) -> Value {
    let now = keystate::now();
    let runtime = gateway.control.runtime();
    let pools: Vec<Value> =
        pools_in_order(gateway).iter().map(|pool| pool_status(gateway, pool, now)).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": gateway.started.elapsed().as_secs(),
        "config": {"generation": gateway.generation, "loaded_at": utc::rfc3339(gateway.loaded_at)},
        "requests": {
            "in_flight": runtime.as_ref().map(|r| r.in_flight()),
            "queued": runtime.as_ref().map(|r| r.queued()),
        },
        "pools": pools,
    })
}

/// The pools, in the order their first key comes in keys.txt.
pub(crate) fn pools_in_order(gateway: &Gateway) -> Vec<&Pool> {
    let mut pools: Vec<&Pool> = Vec::with_capacity(gateway.pools.len());
    for entry in &gateway.config.keys {
        if let Some(pool) = gateway.pools.get(&entry.pool).filter(|p| !pools.iter().any(|q| q.name == p.name))
        {
            pools.push(pool);
        }
    }
    pools
}

fn pool_status(gateway: &Gateway, pool: &Pool, now: u64) -> Value {
    let keys: Vec<Value> = (0..pool.keys.len()).map(|index| key_status(gateway, pool, index, now)).collect();
    let usable = gateway.store.availability(&pool.ids, None, now).iter().filter(|a| a.is_ok()).count();
    json!({
        "name": pool.name,
        "provider": match pool.provider {
            Provider::Ollama => "ollama",
            Provider::Openai => "openai",
        },
        "fallback": pool.fallback,
        "strategy": match pool.strategy() {
            Strategy::RoundRobin => "round-robin",
            Strategy::Random => "random",
            Strategy::LeastBusy => "least-busy",
        },
        "usable": usable,
        "keys": keys,
    })
}

/// One key's object in the status (see the module's documentation).
fn key_status(gateway: &Gateway, pool: &Pool, index: usize, now: u64) -> Value {
    let (entry, id) = (&pool.keys[index], &pool.ids[index]);
    let mut state = gateway.store.get(id);
    // A rest that is over is reported as over, as the next request would find it.
    state.expire(now);
    let until = state.until.filter(|until| *until > now);
    let locks: Map<String, Value> = state
        .model_cooldowns
        .iter()
        .map(|(model, until)| (model.clone(), Value::from(utc::rfc3339(*until))))
        .collect();
    let hour = metrics::global().per_minute().last_hour(id, now);
    json!({
        "id": id,
        "label": label(entry),
        "host": entry.host(),
        "line": entry.line,
        "state": if state.disabled { "disabled" } else { health_word(state.state) },
        "health": health_word(state.state),
        "disabled": state.disabled,
        "until": until.map(utc::rfc3339),
        "until_secs": until.map(|until| until - now),
        "last_error": state.last_error.as_deref().map(|text| upstream::scrub(text, entry)),
        "requests": state.requests,
        "successes": state.successes,
        "failures": state.failures,
        "prompt_tokens": state.prompt_tokens,
        "completion_tokens": state.completion_tokens,
        "last_used": state.last_used.map(utc::rfc3339),
        "model_locks": locks,
        "slots_in_use": gateway.slots.in_flight(id),
        "slot_limit": pool.limit(index),
        "usage": state.usage_permille.map(|permille| f64::from(permille) / 1000.0),
        "requests_per_minute": hour.requests,
        "failures_per_minute": hour.failures,
    })
}

fn health_word(health: Health) -> &'static str {
    match health {
        Health::Healthy => "healthy",
        Health::Invalid => "invalid",
        Health::Exhausted => "exhausted",
        Health::Backoff => "backoff",
    }
}

/// The key as the admin API names it: its `name=`, else its masked form.
fn label(entry: &KeyEntry) -> String {
    entry.name_or_mask().unwrap_or_else(|| "(no key)".to_string())
}

/// The pool and index of the first key with `id`.
fn find<'g>(gateway: &'g Gateway, id: &str) -> Option<(&'g Pool, usize)> {
    pools_in_order(gateway)
        .into_iter()
        .find_map(|pool| pool.ids.iter().position(|known| known == id).map(|index| (pool, index)))
}

fn set_disabled(gateway: &Gateway, id: &str, disable: bool, client: Client<'_>) -> Result<Reply, ApiError> {
    // The id is not echoed: whatever was typed in its place (a key, by mistake) stays out
    // of the answer.
    let Some((pool, index)) = find(gateway, id) else {
        return Err(ApiError {
            code: Some("key_not_found"),
            ..ApiError::not_found(
                "no key of keys.txt has this id; GET /admin/api/status lists every key with its id",
            )
        });
    };
    let was = gateway.store.update(id, |state| std::mem::replace(&mut state.disabled, disable));
    let (done, entry) = (if disable { "disabled" } else { "enabled" }, &pool.keys[index]);
    match was == disable {
        true => log::info!("admin: token '{}': key {} ({id}) was already {done}", client.name, entry.label()),
        false => log::info!("admin: token '{}' {done} key {} ({id})", client.name, entry.label()),
    }
    Ok(Reply::json(200, &key_status(gateway, pool, index, keystate::now())))
}

fn check(gateway: &Gateway, client: Client<'_>) -> Result<Reply, ApiError> {
    let _running = gateway.control.start_check().map_err(|running| ApiError {
        status: 409,
        kind: "invalid_request_error",
        message: format!(
            "a check is already running (for {} s); its caller gets the results, or retry when it ends",
            running.as_secs()
        ),
        param: None,
        code: Some("check_running"),
        retry_after: Some(1),
    })?;
    let (now, started) = (keystate::now(), Instant::now());
    let keys = &gateway.config.keys;
    let policy = gateway.policy();
    let results = health::probe_into(&gateway.store, &gateway.agent, &gateway.config, keys, now, &policy);
    let mut pools: Map<String, Value> = Map::new();
    let rows: Vec<Value> = keys
        .iter()
        .zip(&results)
        .map(|(entry, result)| {
            let id = keystate::key_id(&entry.base_url, entry.key.as_ref());
            let mut state: KeyState = gateway.store.get(&id);
            state.expire(now);
            let usable = state.available(None, now).is_ok() && !matches!(result.outcome, Outcome::Failed(_));
            let counts = pools.entry(entry.pool.clone()).or_insert_with(|| json!({"usable": 0, "keys": 0}));
            counts["keys"] = Value::from(counts["keys"].as_u64().unwrap_or(0) + 1);
            counts["usable"] = Value::from(counts["usable"].as_u64().unwrap_or(0) + u64::from(usable));
            json!({
                "id": id,
                "pool": entry.pool,
                "label": label(entry),
                "host": entry.host(),
                "line": entry.line,
                "state": if state.disabled { "disabled" } else { health_word(state.state) },
                "usable": usable,
                "result": result.outcome.word(),
                "note": result.note,
                "latency_ms": result.latency.as_millis() as u64,
                "usage": result.usage.as_ref().map(|usage| json!({
                    "session": usage.session.used,
                    "weekly": usage.weekly.used,
                    "monthly": usage.monthly.used,
                })),
                "warning": result.warning,
            })
        })
        .collect();
    let ok = pools.values().all(|counts| counts["usable"].as_u64().unwrap_or(0) > 0);
    log::info!("admin: token '{}' ran a check: {} keys probed", client.name, rows.len());
    Ok(Reply::json(
        200,
        &json!({
            "checked_at": utc::rfc3339(now),
            "duration_ms": started.elapsed().as_millis() as u64,
            "ok": ok,
            "pools": pools,
            "keys": rows,
        }),
    ))
}

fn reload(gateway: &Gateway, client: Client<'_>) -> Result<Reply, ApiError> {
    let Some(runtime) = gateway.control.runtime() else {
        return Err(ApiError::server(503, "this gateway has no process to reload (built for a test)"));
    };
    match runtime.reload() {
        Ok(generation) => {
            log::info!("admin: token '{}' reloaded the config: generation {generation}", client.name);
            Ok(Reply::json(200, &json!({"reloaded": true, "generation": generation})))
        }
        Err(error) => {
            log::error!(
                "admin: reload asked by token '{}' failed, still serving the previous config: {error}",
                client.name
            );
            // The OpenAI envelope, with where the fault is as fields of their own.
            Ok(Reply::json(
                422,
                &json!({
                    "reloaded": false,
                    "generation": gateway.generation,
                    "error": {
                        "message": format!("{error}; the previous config keeps serving"),
                        "type": "invalid_request_error",
                        "param": null,
                        "code": "config_invalid",
                        "file": error.file.display().to_string(),
                        "line": error.line,
                        "key": error.key,
                    },
                }),
            ))
        }
    }
}

fn usage(req: &Req, gateway: &Gateway) -> Result<Reply, ApiError> {
    let days =
        match query_value(&req.url, "days") {
            None => DEFAULT_DAYS,
            Some(text) => {
                text.parse::<u64>().ok().filter(|days| (1..=KEEP_DAYS).contains(days)).ok_or_else(|| {
                    ApiError::bad_request(
                format!("days must be a whole number from 1 to {KEEP_DAYS} (the days kept), as in ?days=30"),
                Some("days"),
            )
                })?
            }
        };
    Ok(Reply::json(200, &json!({"days": days, "rows": gateway.usage.rows(days)})))
}

/// The first value of query parameter `name`, as written (empty when it has none).
fn query_value<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| match pair.split_once('=') {
        Some((key, value)) => (key == name).then_some(value),
        None => (pair == name).then_some(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_methods() {
        let cases = [
            ("/admin/api/status", Some(Route::Status)),
            ("/admin/api/usage", Some(Route::Usage)),
            ("/admin/api/check", Some(Route::Check)),
            ("/admin/api/reload", Some(Route::Reload)),
            ("/admin/api/keys/abc/disable", Some(Route::Disable("abc".into(), true))),
            ("/admin/api/keys/abc/enable", Some(Route::Disable("abc".into(), false))),
            ("/admin/api/keys//enable", None),
            ("/admin/api/keys/abc/delete", None),
            ("/admin/api/keys/abc", None),
            ("/admin/api", None),
            ("/admin/status", None),
        ];
        for (path, want) in cases {
            assert_eq!(Route::of(path), want, "{path}");
        }
        assert_eq!(Route::Status.methods(), ["GET", "HEAD"]);
        assert_eq!(Route::Reload.methods(), ["POST"]);
    }

    #[test]
    fn query_values_are_read_as_written() {
        assert_eq!(query_value("/u?days=30", "days"), Some("30"));
        assert_eq!(query_value("/u?x=1&days=abc&days=2", "days"), Some("abc"));
        assert_eq!(query_value("/u?days=", "days"), Some(""));
        assert_eq!(query_value("/u?days", "days"), Some(""));
        assert_eq!(query_value("/u?dayss=3", "days"), None);
        assert_eq!(query_value("/u", "days"), None);
    }
}
