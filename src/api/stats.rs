//! `GET /stats`: the public page of a shared gateway (`[status] public = true`), open
//! without a token: requests and tokens per model and day, and how many keys of each pool
//! can serve now.
//!
//! In scope: what the page may show and its two forms, JSON (for `Accept:
//! application/json`) and a small HTML page written on the server (escaped, no script,
//! under the same headers as `/admin`). Out of scope: whether the route exists (`api`
//! answers 404 while `public` is off), counting (`usage`, `keystate`).
//!
//! Aggregates only, by construction: usage rows are summed over tokens before anything is
//! written, and pools are counted, not listed. No answer holds a key, a key's label or id,
//! a token's name, an address or an error text; the only names in it are pool names (the
//! keys.txt sections, which clients already use in paths) and model names.

use crate::api::admin;
use crate::api::page;
use crate::gateway::Gateway;
use crate::http::{Reply, Req};
use crate::keystate;
use crate::utc;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::OnceLock;

/// The days shown, today included.
pub const DAYS: u64 = 7;

/// The answer, JSON or HTML.
#[derive(Debug, Serialize)]
struct Stats {
    /// When it was read, RFC 3339 UTC.
    generated_at: String,
    /// The days it covers, today included.
    days: u64,
    /// Every pool, in keys.txt order.
    pools: Vec<PoolHealth>,
    /// Use per day and model, newest day first, then by model.
    models: Vec<ModelDay>,
}

#[derive(Debug, Serialize)]
struct PoolHealth {
    name: String,
    keys: usize,
    usable: usize,
}

#[derive(Debug, Default, Serialize)]
struct ModelDay {
    date: String,
    model: String,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The page, as JSON when `req` accepts `application/json`, else as HTML.
pub fn handle(req: &Req, gateway: &Gateway) -> Reply {
    let stats = collect(gateway, keystate::now());
    let json =
        req.header("accept").is_some_and(|accept| accept.to_ascii_lowercase().contains("application/json"));
    let mut reply = match json {
        true => {
            let mut reply = Reply::json(200, &stats);
            reply.add_headers(vec![("Cache-Control", "no-store".to_string())]);
            reply
        }
        false => {
            static CSP: OnceLock<String> = OnceLock::new();
            page::html(200, render(&stats).into_bytes(), CSP.get_or_init(|| page::policy(None, Some(STYLE))))
        }
    };
    // The same URL answers two ways: a cache must keep them apart.
    reply.add_headers(vec![("Vary", "Accept".to_string())]);
    reply
}

fn collect(gateway: &Gateway, now: u64) -> Stats {
    let pools = admin::pools_in_order(gateway)
        .into_iter()
        .map(|pool| PoolHealth {
            name: pool.name.clone(),
            keys: pool.ids.len(),
            usable: gateway.store.availability(&pool.ids, None, now).iter().filter(|a| a.is_ok()).count(),
        })
        .collect();
    // Summed over tokens here, so that no token's share reaches the answer.
    let mut by_day: BTreeMap<(String, String), ModelDay> = BTreeMap::new();
    for row in gateway.usage.rows(DAYS) {
        let sum = by_day.entry((row.date.clone(), row.model.clone())).or_default();
        sum.requests += row.requests;
        sum.prompt_tokens += row.prompt_tokens;
        sum.completion_tokens += row.completion_tokens;
    }
    let mut models: Vec<ModelDay> =
        by_day.into_iter().map(|((date, model), sum)| ModelDay { date, model, ..sum }).collect();
    models.sort_by(|a, b| b.date.cmp(&a.date).then_with(|| a.model.cmp(&b.model)));
    Stats { generated_at: utc::rfc3339(now), days: DAYS, pools, models }
}

/// The page's only style, allowed by its hash.
const STYLE: &str =
    "body{margin:0 auto;max-width:900px;padding:16px 20px;font:14px/1.4 system-ui,sans-serif;\
color:#1d2329}h1{font-size:18px}h2{font-size:15px;margin-top:24px}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:4px 8px;border-top:1px solid #dde2e6}th{color:#66707a;border-top:0}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#1f883d}.none{color:#cf222e}\
.muted{color:#66707a}";

fn render(stats: &Stats) -> String {
    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>ollama-gateway stats</title><style>{STYLE}</style></head><body>\
         <h1>ollama-gateway</h1><p class=\"muted\">As of {}. Everything below is a total over all clients.</p>\
         <h2>Keys usable now</h2><table><thead><tr><th>Pool</th><th class=\"n\">Usable</th>\
         <th class=\"n\">Keys</th></tr></thead><tbody>",
        page::escape(&stats.generated_at)
    );
    for pool in &stats.pools {
        let class = if pool.usable > 0 { "ok" } else { "none" };
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n {class}\">{}</td><td class=\"n\">{}</td></tr>",
            page::escape(&pool.name),
            pool.usable,
            pool.keys
        );
    }
    let _ = write!(
        out,
        "</tbody></table><h2>Use over the last {} days (UTC)</h2><table><thead><tr><th>Day</th>\
         <th>Model</th><th class=\"n\">Requests</th><th class=\"n\">Prompt tokens</th>\
         <th class=\"n\">Completion tokens</th></tr></thead><tbody>",
        stats.days
    );
    for day in &stats.models {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            page::escape(&day.date),
            page::escape(&day.model),
            day.requests,
            day.prompt_tokens,
            day.completion_tokens
        );
    }
    if stats.models.is_empty() {
        out.push_str("<tr><td colspan=\"5\" class=\"muted\">No requests yet.</td></tr>");
    }
    out.push_str("</tbody></table><p class=\"muted\">Also as JSON: send <code>Accept: application/json</code>.</p></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_html_escapes_model_names_and_shows_counts() {
        let stats = Stats {
            generated_at: "2026-05-01T10:00:00Z".into(),
            days: DAYS,
            pools: vec![PoolHealth { name: "default".into(), keys: 3, usable: 0 }],
            models: vec![ModelDay {
                date: "2026-05-01".into(),
                model: "<script>alert(1)</script>".into(),
                requests: 4,
                prompt_tokens: 12,
                completion_tokens: 20,
            }],
        };
        let html = render(&stats);
        assert!(
            !html.contains("<script") && html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(html.contains("<td class=\"n none\">0</td><td class=\"n\">3</td>"), "{html}");
        assert!(
            html.contains("<td class=\"n\">4</td><td class=\"n\">12</td><td class=\"n\">20</td>"),
            "{html}"
        );
        assert_eq!(html.matches("<style>").count(), 1);
        assert!(html.contains(&format!("<style>{STYLE}</style>")), "the hashed style, byte for byte");
    }
}
