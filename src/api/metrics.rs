//! `GET /metrics`: who may scrape, and what a scrape reads (the key states of the current
//! config, the requests in flight) for [`crate::metrics`] to render.
//!
//! A client whose address is in `[metrics] allow_from` (by default the loopback addresses)
//! scrapes without a token; any other needs a token with the `admin` scope: 401 without
//! one or with a wrong one, 403 with a token that lacks the scope. `server` asks [`wanted`]
//! before it counts a request in, and answers a scrape without a worker or a queue place,
//! so a gateway at capacity can still be watched. With `[metrics] enabled = false` there is
//! no such route: [`wanted`] says no and the router answers 404.

use crate::api;
use crate::auth::{self, Caller, Scope};
use crate::cidr;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::http::{LogFields, Reply, Req};
use crate::keystate::Health;
use crate::metrics::{self, KeyNow, Metrics, Scrape};
use std::net::IpAddr;

/// The path scraped.
pub const PATH: &str = "/metrics";

/// What the server knows of the requests it holds, read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Requests taken and not finished.
    pub in_flight: usize,
    /// Those of them waiting for a worker.
    pub queued: usize,
}

/// Whether `req` is a scrape (the path `/metrics`, metrics enabled).
pub fn wanted(req: &Req, gateway: &Gateway) -> bool {
    gateway.config.raw.metrics.enabled && matches!(req.path(), "/metrics" | "/metrics/")
}

/// The answer to a scrape from `peer`: the metrics of [`metrics::global`], or why not.
pub fn answer(
    req: &Req,
    peer: Option<IpAddr>,
    gateway: &Gateway,
    gauges: Gauges,
    log: &mut LogFields,
) -> Reply {
    answer_from(metrics::global(), req, peer, gateway, gauges, log)
}

/// [`answer`] with the metrics of `registry`.
fn answer_from(
    registry: &Metrics,
    req: &Req,
    peer: Option<IpAddr>,
    gateway: &Gateway,
    gauges: Gauges,
    log: &mut LogFields,
) -> Reply {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        let error = ApiError {
            status: 405,
            kind: "invalid_request_error",
            message: format!("{} is not allowed on {PATH}; use GET", req.method),
            param: None,
            code: Some("method_not_allowed"),
            retry_after: None,
        };
        let mut reply = Reply::error(&error);
        reply.add_headers(vec![("Allow", "GET, HEAD".to_string())]);
        return reply;
    }
    if let Err(error) = may_scrape(req, peer, gateway, log) {
        return Reply::error(&error);
    }
    let states = gateway.store.snapshot();
    let keys: Vec<KeyNow<'_>> = gateway
        .pools
        .values()
        .flat_map(|pool| {
            let states = &states;
            pool.keys.iter().zip(&pool.ids).map(move |(entry, id)| KeyNow {
                pool: &pool.name,
                id,
                entry,
                // A key the store has never heard of has had no failure: healthy.
                health: states.get(id).map_or(Health::Healthy, |state| state.state),
            })
        })
        .collect();
    let scrape = Scrape {
        keys: &keys,
        in_flight: gauges.in_flight,
        queued: gauges.queued,
        uptime: gateway.started.elapsed(),
    };
    Reply::Full {
        status: 200,
        body: registry.render(&scrape).into_bytes(),
        headers: vec![
            ("Content-Type", metrics::CONTENT_TYPE.to_string()),
            ("Cache-Control", "no-store".to_string()),
        ],
    }
}

/// Whether the client at `peer` may scrape: from `allow_from` always, from elsewhere with
/// an `admin` token (whose name goes in the log).
fn may_scrape(
    req: &Req,
    peer: Option<IpAddr>,
    gateway: &Gateway,
    log: &mut LogFields,
) -> Result<(), ApiError> {
    let config = &gateway.config;
    if let Some(refusal) = api::locked_out(gateway, peer) {
        return Err(refusal);
    }
    // A request a proxy forwarded, while no proxy is trusted, comes from the proxy's address
    // (loopback, often) for all the gateway knows: the client behind it is not let in.
    let proxied = config.raw.trusted_proxies.is_empty()
        && (req.header("x-forwarded-for").is_some() || req.header("forwarded").is_some());
    if !proxied && peer.is_some_and(|peer| cidr::any_contains(&config.raw.metrics.allow_from, peer)) {
        return Ok(());
    }
    let from = peer.map_or_else(|| "an unknown address".to_string(), |peer| peer.to_string());
    let presented = auth::presented_token(|name| req.header(name));
    // Never anonymous: `allow_anonymous` opens the API, not the gateway's own numbers.
    let token = match api::door(gateway, presented, peer, false) {
        Ok(Caller::Token(token)) => token,
        Err(error) if presented.is_some() => return Err(error),
        _ => {
            return Err(ApiError::invalid_api_key(format!(
                "{PATH} from {from} needs a token with the 'admin' scope (send it as `Authorization: \
                 Bearer <token>`), or the address in [metrics] allow_from"
            )))
        }
    };
    log.token = Some(token.name.clone());
    if token.scopes.contains(&Scope::Admin) {
        return Ok(());
    }
    Err(ApiError {
        status: 403,
        kind: "permission_error",
        message: format!(
            "token '{}' may not read {PATH} from {from}: it needs the 'admin' scope (add \"admin\" to its \
             scopes), or the address in [metrics] allow_from",
            token.name
        ),
        param: None,
        code: Some("insufficient_scope"),
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Files};

    const READER: &str = "sk-metrics-reader-0123456789";
    const ADMIN: &str = "sk-metrics-admin-0123456789";

    fn gateway(extra: &str) -> Gateway {
        let token = |name: &str, token: &str, scopes: &str| {
            format!(
                "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes}]\n",
                crate::secret::sha256_hex(token)
            )
        };
        let config = format!(
            "{extra}\n{}{}",
            token("reader", READER, "\"inference\""),
            token("ops", ADMIN, "\"admin\"")
        );
        let files = Files {
            path: "config.toml".into(),
            config: Ok(config.into_bytes()),
            keys: Some(("keys.txt".into(), Ok(b"http://127.0.0.1:9|sk-upstream-key-0123456789\n".to_vec()))),
        };
        let config = Config::from_files(&files).expect("the test config");
        Gateway::new(config, &Default::default(), 0)
    }

    fn scrape(gateway: &Gateway, method: &str, peer: &str, token: Option<&str>) -> (u16, String, LogFields) {
        let headers =
            token.map(|t| ("authorization".to_string(), format!("Bearer {t}"))).into_iter().collect();
        let req = Req { method: method.into(), url: PATH.into(), headers, body: Vec::new(), peer: None };
        let mut log = LogFields::default();
        let registry = Metrics::new();
        let reply = answer_from(&registry, &req, peer.parse().ok(), gateway, Gauges::default(), &mut log);
        match reply {
            Reply::Full { status, body, .. } => (status, String::from_utf8_lossy(&body).into_owned(), log),
            Reply::Stream(_) => panic!("a stream"),
        }
    }

    #[test]
    fn loopback_scrapes_without_a_token_by_default() {
        let gateway = gateway("");
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let (status, text, _) = scrape(&gateway, "GET", peer, None);
            assert_eq!(status, 200, "{peer}: {text}");
            assert!(text.contains(
                "ollama_gateway_key_state{pool=\"default\",key=\"sk-u…6789\",state=\"healthy\"} 1"
            ));
            assert!(!text.contains("upstream-key"), "{text}");
        }
        let (status, _, _) = scrape(&gateway, "GET", "10.1.2.3", None);
        assert_eq!(status, 401, "another address needs a token");
    }

    #[test]
    fn outside_allow_from_a_token_with_the_admin_scope_is_needed() {
        let gateway = gateway("[metrics]\nallow_from = [\"10.0.0.0/8\", \"fd00::/8\"]\n");
        assert_eq!(scrape(&gateway, "GET", "10.9.8.7", None).0, 200);
        assert_eq!(scrape(&gateway, "GET", "fd00::5", None).0, 200);
        let (status, text, _) = scrape(&gateway, "GET", "127.0.0.1", None);
        assert!(status == 401 && text.contains("allow_from") && text.contains("127.0.0.1"), "{text}");
        let (status, text, _) = scrape(&gateway, "GET", "127.0.0.1", Some("sk-wrong-token-0123456789"));
        assert!(status == 401 && !text.contains("sk-wrong"), "{text}");
        let (status, text, log) = scrape(&gateway, "GET", "127.0.0.1", Some(READER));
        assert!(status == 403 && text.contains("'admin' scope"), "{text}");
        assert_eq!(log.token.as_deref(), Some("reader"));
        let (status, text, log) = scrape(&gateway, "GET", "127.0.0.1", Some(ADMIN));
        assert!(status == 200 && text.contains("# TYPE ollama_gateway_requests_total counter"), "{text}");
        assert_eq!(log.token.as_deref(), Some("ops"));
    }

    #[test]
    fn anonymous_access_does_not_open_metrics() {
        let gateway = gateway("allow_anonymous = true\n[metrics]\nallow_from = []\n");
        assert_eq!(scrape(&gateway, "GET", "127.0.0.1", None).0, 401);
    }

    #[test]
    fn only_get_and_head_and_only_when_enabled() {
        let gateway = gateway("");
        assert_eq!(scrape(&gateway, "POST", "127.0.0.1", None).0, 405);
        assert_eq!(scrape(&gateway, "HEAD", "127.0.0.1", None).0, 200);
        let req = |url: &str| Req { method: "GET".into(), url: url.into(), ..Req::default() };
        assert!(wanted(&req("/metrics"), &gateway) && wanted(&req("/metrics?x=1"), &gateway));
        assert!(!wanted(&req("/v1/metrics"), &gateway) && !wanted(&req("/metricsx"), &gateway));
        assert!(!wanted(&req("/metrics"), &self::gateway("[metrics]\nenabled = false\n")));
    }
}
