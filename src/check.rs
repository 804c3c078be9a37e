//! `ollama-gateway check`: probe every key once, record the results, report, exit.
//!
//! Meant for cron. Every key of keys.txt is probed in parallel (at most
//! [`health::PARALLEL`] at once) as `[health]` says; the results go into the state file, where a running gateway
//! picks them up within seconds; a table (or `--json`) says what was found. Exit codes: 0
//! when every pool has at least one usable key, 1 when some pool has none, 2 on a config
//! error.
//!
//! Where the upstream reports its plan's usage (Ollama Cloud's `/api/usage`), each key's
//! row says how much of each window is used (`session 42%, weekly 7%`); a window used up
//! makes the key exhausted until it resets. An answer the gateway cannot read is a warning
//! in the note, never a failed key.

use crate::config::{Config, ConfigError};
use crate::health::{self, Outcome, ProbeResult};
use crate::keys::KeyEntry;
use crate::keystate::{key_id, Failure, KeyState};
use crate::quota::PlanUsage;
use crate::statefile::{self, Loaded, Saved};
use crate::upstream;
use crate::utc;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// One row of the report.
struct Row<'a> {
    entry: &'a KeyEntry,
    result: &'a ProbeResult,
    state: KeyState,
    usable: bool,
}

/// Runs the check for the config at `config_path`.
pub fn run(config_path: &Path, as_json: bool) -> Result<ExitCode, ConfigError> {
    let config = Config::load(config_path)?;
    let upstream_cfg = &config.raw.upstream;
    let agent = upstream::agent(
        Duration::from_secs(upstream_cfg.connect_timeout_secs),
        Duration::from_secs(upstream_cfg.idle_timeout_secs.min(60)),
        health::PARALLEL,
    );
    let policy = crate::keystate::Policy {
        cooldown_secs: upstream_cfg.cooldown_secs,
        failure_threshold: upstream_cfg.failure_threshold,
    };
    let probe = config.raw.health.probe();
    let now = crate::keystate::now();
    let results = health::probe_config_keys(&agent, &config, now, &policy);

    // Read the file again just before writing, so what a running gateway saved meanwhile
    // (its counters, the keys the operator disabled, usage) is kept; only the probed keys'
    // health changes.
    let Saved { keys: mut states, usage } = match statefile::load(&config.state_file) {
        Loaded::Read(saved) => saved,
        Loaded::Fresh => Saved::default(),
        Loaded::Corrupt(why) => {
            eprintln!("warning: {}: {why}; writing fresh key states", config.state_file.display());
            Saved::default()
        }
    };
    let mut rows = Vec::with_capacity(results.len());
    for (entry, result) in config.keys.iter().zip(&results) {
        let state = states.entry(key_id(&entry.base_url, entry.key.as_ref())).or_default();
        health::apply(state, result, Some(&probe.model), now, &policy);
        // Usable means free now (a spent quota stays spent whatever a free probe says) and
        // not failing this probe (an unreachable key counts as down even before it has
        // failed often enough to back off).
        let usable = state.available(None, now).is_ok() && !matches!(result.outcome, Outcome::Failed(_));
        rows.push(Row { entry, result, state: state.clone(), usable });
    }
    if let Err(err) = statefile::save(&config.state_file, &states, &usage) {
        eprintln!("warning: {}: cannot save key states: {err}", config.state_file.display());
    }

    let pools = pool_summary(&rows);
    let report = if as_json { to_json(&rows, &pools).to_string() + "\n" } else { to_table(&rows, &pools) };
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    Ok(match pools.values().all(|(usable, _)| *usable > 0) {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

/// Usable and total keys per pool, sorted by name.
fn pool_summary(rows: &[Row<'_>]) -> BTreeMap<String, (usize, usize)> {
    let mut pools: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for row in rows {
        let counts = pools.entry(row.entry.pool.clone()).or_default();
        counts.1 += 1;
        if row.usable {
            counts.0 += 1;
        }
    }
    pools
}

/// The key as `check` shows it: its `name=` when it has one, else masked.
fn shown(entry: &KeyEntry) -> String {
    match &entry.options.name {
        Some(name) => name.clone(),
        None => masked(entry),
    }
}

fn masked(entry: &KeyEntry) -> String {
    entry.key.as_ref().map(|k| k.mask()).unwrap_or_else(|| "(no key)".to_string())
}

fn state_word(row: &Row<'_>) -> String {
    if row.state.disabled {
        // The probe's finding still goes in the file, for when the key is enabled.
        return format!("disabled (probe: {})", probe_word(row));
    }
    probe_word(row)
}

/// What the probe found, with until when the key rests when the probe made it rest.
fn probe_word(row: &Row<'_>) -> String {
    let word = row.result.outcome.word();
    match (&row.result.outcome, row.state.until) {
        (
            Outcome::Failed(Failure::Exhausted { .. } | Failure::Transient { .. } | Failure::Busy),
            Some(until),
        ) => {
            format!("{word} until {}", utc::short(until))
        }
        _ => word.to_string(),
    }
}

/// `session 42%, weekly 7%, monthly 91%` as this probe read them; `-` when it read none.
fn usage_words(row: &Row<'_>) -> String {
    row.result.usage.as_ref().map_or_else(|| "-".to_string(), PlanUsage::summary)
}

fn to_table(rows: &[Row<'_>], pools: &BTreeMap<String, (usize, usize)>) -> String {
    let usage: Vec<String> = rows.iter().map(usage_words).collect();
    let width = usage.iter().map(|words| words.chars().count()).fold(5, usize::max);
    let mut out = format!(
        "{:<12} {:<12} {:<32} {:<34} {:<width$} {:>8}  {}\n",
        "POOL", "KEY", "UPSTREAM", "STATE", "USAGE", "LATENCY", "NOTE"
    );
    for (row, usage) in rows.iter().zip(&usage) {
        out.push_str(&format!(
            "{:<12} {:<12} {:<32} {:<34} {:<width$} {:>6}ms  {}\n",
            row.entry.pool,
            shown(row.entry),
            row.entry.shown_url(),
            state_word(row),
            usage,
            row.result.latency.as_millis(),
            row.result.note
        ));
    }
    for (pool, (usable, total)) in pools {
        let verdict = if *usable > 0 { "ok" } else { "NO USABLE KEY" };
        out.push_str(&format!("pool '{pool}': {usable} of {total} keys usable: {verdict}\n"));
    }
    out
}

fn to_json(rows: &[Row<'_>], pools: &BTreeMap<String, (usize, usize)>) -> Value {
    let keys: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "pool": row.entry.pool,
                "key": masked(row.entry),
                "name": row.entry.options.name,
                "line": row.entry.line,
                "upstream": row.entry.shown_url(),
                "state": row.state.state,
                "until": row.state.until,
                "usable": row.usable,
                "disabled": row.state.disabled,
                "result": state_word(row),
                "latency_ms": row.result.latency.as_millis() as u64,
                "usage": row.result.usage.as_ref().map(|usage| json!({
                    "session": usage.session.used,
                    "weekly": usage.weekly.used,
                    "monthly": usage.monthly.used,
                })),
                "warning": row.result.warning,
                "note": row.result.note,
            })
        })
        .collect();
    let pools: serde_json::Map<String, Value> = pools
        .iter()
        .map(|(name, (usable, total))| (name.clone(), json!({"usable": usable, "keys": total})))
        .collect();
    let ok = pools.values().all(|p| p["usable"].as_u64().unwrap_or(0) > 0);
    json!({"ok": ok, "pools": pools, "keys": keys})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::WindowUsage;
    use crate::secret::Secret;

    fn entry(line: usize) -> KeyEntry {
        KeyEntry {
            pool: "default".into(),
            base_url: "https://ollama.com".into(),
            key: Some(Secret::new(format!("0123456789abcdef.KEY-{line}"))),
            line,
            options: Default::default(),
        }
    }

    #[test]
    fn rows_show_the_usage_fractions_read_and_a_dash_for_none() {
        let used = |fraction| WindowUsage { used: Some(fraction), resets_at: None };
        let usage = PlanUsage { session: used(0.42), weekly: used(0.07), monthly: used(0.91) };
        let spent = PlanUsage { monthly: used(1.0), ..PlanUsage::default() };
        let (first, second, third) = (entry(1), entry(2), entry(3));
        let results = [
            ProbeResult {
                outcome: Outcome::Good,
                usage: Some(usage),
                ..health::not_probed("200 via /api/usage")
            },
            ProbeResult {
                outcome: Outcome::Failed(Failure::Exhausted { until: 1_701_388_800 }),
                usage: Some(spent),
                ..health::not_probed("200 via /api/usage: monthly used up")
            },
            ProbeResult {
                outcome: Outcome::Good,
                warning: Some("the answer has no \"limits\"; usage fractions unknown".into()),
                ..health::not_probed("200 via /api/usage (warning: …)")
            },
        ];
        let exhausted = KeyState {
            state: crate::keystate::Health::Exhausted,
            until: Some(1_701_388_800),
            ..KeyState::default()
        };
        let rows = [
            Row { entry: &first, result: &results[0], state: KeyState::default(), usable: true },
            Row { entry: &second, result: &results[1], state: exhausted, usable: false },
            Row { entry: &third, result: &results[2], state: KeyState::default(), usable: true },
        ];
        let pools = pool_summary(&rows);
        let table = to_table(&rows, &pools);
        let lines: Vec<&str> = table.lines().collect();
        // Columns by characters: a masked key holds a `…`.
        let column = |line: &str, at: usize| line.chars().skip(at).collect::<String>();
        let usage_at = lines[0].find("USAGE").expect("a USAGE column");
        let latency_at = lines[0].find("LATENCY").expect("a LATENCY column");
        for (line, words) in
            lines[1..4].iter().zip(["session 42%, weekly 7%, monthly 91%", "monthly 100%", "-"])
        {
            assert_eq!(column(line, usage_at).split("  ").next(), Some(words), "{table}");
            assert!(column(line, latency_at).trim_start().starts_with("0ms  200 via"), "aligned:\n{table}");
        }
        assert!(lines[2].contains("exhausted until 2023-12-01 00:00Z"), "{table}");
        assert!(!table.contains("KEY-"), "keys are masked:\n{table}");

        let report = to_json(&rows, &pools);
        let keys = report["keys"].as_array().expect("keys");
        assert_eq!(keys[0]["usage"], json!({"session": 0.42, "weekly": 0.07, "monthly": 0.91}));
        assert_eq!(keys[1]["usage"], json!({"session": null, "weekly": null, "monthly": 1.0}));
        assert_eq!(
            (&keys[2]["usage"], keys[2]["warning"].as_str()),
            (&Value::Null, results[2].warning.as_deref())
        );
        assert_eq!(keys[0]["warning"], Value::Null);
    }
}
