//! Usage accounting: requests, errors and tokens per client token, model and UTC day.
//!
//! In scope: the [`Usage`] store that every generation shares (one [`Usage::record`] per
//! finished request), its bounds, the [`Row`]s the admin API and `ollama-gateway usage`
//! show, the text table of the latter, and a token's tokens today ([`Usage::tokens_today`],
//! for a daily limit). Out of scope: where the numbers come from (`server` passes what the
//! request's log line says), keeping them across restarts (`statefile` stores the rows),
//! and the clock (`keystate::now`).
//!
//! Bounded, so that neither time nor clients grow it without end: the last [`KEEP_DAYS`]
//! days, today included, and nothing older; token names come from the config; model names
//! come from requests, so a day holds at most [`MAX_MODELS_PER_DAY`] of them, none longer
//! than [`MAX_MODEL_BYTES`] or holding a control character, and every other one is counted
//! as [`OTHER`]. A request that names no model (a model list, an admin call) spends
//! nothing and is not counted; neither is one without a token (refused before auth).

use crate::translate;
use crate::utc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Days kept, today included.
pub const KEEP_DAYS: u64 = 90;
/// Distinct model names counted in one day; later ones are counted as [`OTHER`].
pub const MAX_MODELS_PER_DAY: usize = 200;
/// Longest model name counted as itself.
pub const MAX_MODEL_BYTES: usize = 200;
/// Where the models past the bounds are counted.
pub const OTHER: &str = "(other)";

/// What one token spent on one model in one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests finished.
    pub requests: u64,
    /// Those answered with a status of 400 or more.
    pub errors: u64,
    /// Prompt tokens, as the upstream counted them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the upstream counted them.
    pub completion_tokens: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// One line of the usage table: a token's use of a model on a day. The state file holds
/// these, and the admin API answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The UTC day, `2026-11-23`.
    pub date: String,
    /// The token's name in config.toml.
    pub token: String,
    /// The model asked for (or [`OTHER`]).
    pub model: String,
    /// Requests finished.
    pub requests: u64,
    /// Those answered with a status of 400 or more.
    pub errors: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl Row {
    fn counts(&self) -> Counts {
        Counts {
            requests: self.requests,
            errors: self.errors,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        }
    }
}

/// One day: counts by model, then by token. Keyed by model first, so the model bound is
/// the map's length.
type Day = BTreeMap<String, BTreeMap<String, Counts>>;

/// Every day's counts, shared by all generations (like the key states).
#[derive(Debug, Default)]
pub struct Usage {
    /// By days since 1970-01-01.
    days: Mutex<BTreeMap<u64, Day>>,
    dirty: AtomicBool,
}

impl Usage {
    /// A store holding `rows` (as read from the state file), within the bounds as of now.
    pub fn new(rows: Vec<Row>) -> Usage {
        Usage::from_rows(rows, crate::keystate::now())
    }

    fn from_rows(rows: Vec<Row>, now: u64) -> Usage {
        let usage = Usage::default();
        {
            let mut days = usage.lock();
            for row in rows {
                // A row with a date that does not read is dropped, not the file.
                if let Some(day) = utc::parse_date(&row.date) {
                    add(&mut days, day, (&row.token, &row.model), &row.counts(), true);
                }
            }
            // A file is held to the window strictly: a day after today is a clock gone wrong.
            let today = today(now);
            prune(&mut days, today);
            days.retain(|day, _| *day <= today);
        }
        usage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Day>> {
        self.days.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one finished request of `token` for `model`, answered with `status`, whose
    /// reply used `tokens` (when known). Without a token or a model, nothing is counted.
    pub fn record(
        &self,
        token: Option<&str>,
        model: Option<&str>,
        status: u16,
        tokens: Option<translate::Usage>,
    ) {
        self.record_at(crate::keystate::now(), token, model, status, tokens);
    }

    fn record_at(
        &self,
        now: u64,
        token: Option<&str>,
        model: Option<&str>,
        status: u16,
        tokens: Option<translate::Usage>,
    ) {
        let (Some(token), Some(model)) = (token, model) else { return };
        let tokens = tokens.unwrap_or_default();
        let counts = Counts {
            requests: 1,
            errors: u64::from(status >= 400),
            prompt_tokens: tokens.prompt,
            completion_tokens: tokens.completion,
        };
        let today = today(now);
        let mut days = self.lock();
        if !days.contains_key(&today) {
            prune(&mut days, today);
        }
        add(&mut days, today, (token, model), &counts, status < 400);
        drop(days);
        self.dirty.store(true, Ordering::Release);
    }

    /// The rows of the last `days` days (today included), newest day first, then by token
    /// and model.
    pub fn rows(&self, days: u64) -> Vec<Row> {
        self.rows_at(crate::keystate::now(), days)
    }

    fn rows_at(&self, now: u64, days: u64) -> Vec<Row> {
        let first = (today(now) + 1).saturating_sub(days);
        let stored = self.lock();
        let mut rows: Vec<Row> = stored
            .range(first..)
            .flat_map(|(day, models)| {
                models.iter().flat_map(move |(model, tokens)| {
                    tokens.iter().map(move |(token, counts)| Row {
                        date: utc::date(*day),
                        token: token.clone(),
                        model: model.clone(),
                        requests: counts.requests,
                        errors: counts.errors,
                        prompt_tokens: counts.prompt_tokens,
                        completion_tokens: counts.completion_tokens,
                    })
                })
            })
            .collect();
        rows.sort_by(|a, b| {
            b.date.cmp(&a.date).then_with(|| (&a.token, &a.model).cmp(&(&b.token, &b.model)))
        });
        rows
    }

    /// Every row kept, for the state file.
    pub fn all_rows(&self) -> Vec<Row> {
        self.rows(KEEP_DAYS)
    }

    /// The prompt and completion tokens `token` has used today (UTC), over every model.
    pub fn tokens_today(&self, token: &str) -> u64 {
        self.tokens_today_at(crate::keystate::now(), token)
    }

    fn tokens_today_at(&self, now: u64, token: &str) -> u64 {
        let days = self.lock();
        let Some(models) = days.get(&today(now)) else { return 0 };
        models
            .values()
            .filter_map(|tokens| tokens.get(token))
            .map(|counts| counts.prompt_tokens + counts.completion_tokens)
            .sum()
    }

    /// Whether anything was counted since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Marks the store as changed, so it is saved again (the state file was written by
    /// another process from an older copy).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

fn today(now: u64) -> u64 {
    now / 86_400
}

/// Adds `counts` to `token`'s use of `model` on `day`, within the model bounds.
/// Adds `counts` to a day's row of `token` and `model`. A model name new to the day takes
/// a place only when `may_name` (the request succeeded, or the row was read back).
fn add(
    days: &mut BTreeMap<u64, Day>,
    day: u64,
    (token, model): (&str, &str),
    counts: &Counts,
    may_name: bool,
) {
    let models = days.entry(day).or_default();
    let named = models.len() - usize::from(models.contains_key(OTHER));
    let fits = model.len() <= MAX_MODEL_BYTES && !model.chars().any(char::is_control);
    // A name no request has yet been served for today takes a place only with a success:
    // made-up names fail upstream, so they cannot fill the day's places.
    let new_name_earned = may_name && named < MAX_MODELS_PER_DAY;
    let model = match fits && (models.contains_key(model) || new_name_earned) {
        true => model,
        false => OTHER,
    };
    // Known pairs (every request after a day's first) are found without allocating.
    let tokens = match models.get_mut(model) {
        Some(tokens) => tokens,
        None => models.entry(model.to_string()).or_default(),
    };
    match tokens.get_mut(token) {
        Some(known) => known.add(counts),
        None => tokens.entry(token.to_string()).or_default().add(counts),
    }
}

/// Drops the days before the last [`KEEP_DAYS`]. Days after today (a clock set back while
/// running) stay, so that a clock corrected by a few seconds around midnight loses nothing.
fn prune(days: &mut BTreeMap<u64, Day>, today: u64) {
    let first = (today + 1).saturating_sub(KEEP_DAYS);
    days.retain(|day, _| *day >= first);
}

/// The rows as an aligned table, then one total line per token (tokens sorted by name).
pub fn table(rows: &[Row]) -> String {
    const HEAD: [&str; 7] = ["DATE", "TOKEN", "MODEL", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION"];
    let mut totals: BTreeMap<&str, Counts> = BTreeMap::new();
    for row in rows {
        totals.entry(&row.token).or_default().add(&row.counts());
    }
    let line = |date: &str, token: &str, model: &str, counts: &Counts| {
        [
            date.to_string(),
            token.to_string(),
            model.to_string(),
            counts.requests.to_string(),
            counts.errors.to_string(),
            counts.prompt_tokens.to_string(),
            counts.completion_tokens.to_string(),
        ]
    };
    let mut cells: Vec<[String; 7]> = vec![HEAD.map(str::to_string)];
    cells.extend(rows.iter().map(|row| line(&row.date, &row.token, &row.model, &row.counts())));
    cells.extend(totals.iter().map(|(token, counts)| line("total", token, "", counts)));
    let mut widths = [0; 7];
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut text = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            let pad = " ".repeat(width - cell.chars().count());
            // Names left, numbers right.
            match column < 3 {
                true => text.push_str(&format!("{cell}{pad}  ")),
                false => text.push_str(&format!("{pad}{cell}  ")),
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
    const DAY: u64 = 86_400;

    fn tokens(prompt: u64, completion: u64) -> Option<translate::Usage> {
        Some(translate::Usage { prompt, completion })
    }

    #[test]
    fn requests_errors_and_tokens_add_up_per_token_model_and_day() {
        let usage = Usage::default();
        usage.record_at(NOW, Some("alice"), Some("m"), 200, tokens(3, 5));
        usage.record_at(NOW + 60, Some("alice"), Some("m"), 429, None);
        usage.record_at(NOW, Some("bob"), Some("m"), 200, tokens(1, 1));
        usage.record_at(NOW - DAY, Some("alice"), Some("m"), 200, tokens(10, 20));
        usage.record_at(NOW, Some("alice"), None, 200, None);
        usage.record_at(NOW, None, Some("m"), 401, None);
        assert!(usage.take_dirty() && !usage.take_dirty());
        let row = |date: &str, token: &str, counts: [u64; 4]| Row {
            date: date.into(),
            token: token.into(),
            model: "m".into(),
            requests: counts[0],
            errors: counts[1],
            prompt_tokens: counts[2],
            completion_tokens: counts[3],
        };
        assert_eq!(
            usage.rows_at(NOW, 7),
            [
                row("2023-11-14", "alice", [2, 1, 3, 5]),
                row("2023-11-14", "bob", [1, 0, 1, 1]),
                row("2023-11-13", "alice", [1, 0, 10, 20]),
            ]
        );
        assert_eq!(usage.rows_at(NOW, 1).len(), 2, "today only");
        assert_eq!(usage.tokens_today_at(NOW, "alice"), 8);
        assert_eq!(usage.tokens_today_at(NOW + DAY, "alice"), 0, "a new day starts at zero");
        assert_eq!(usage.tokens_today_at(NOW, "carol"), 0);
    }

    #[test]
    fn only_the_last_90_days_are_kept() {
        let usage = Usage::default();
        for day in 0..120 {
            usage.record_at(NOW + day * DAY, Some("alice"), Some("m"), 200, tokens(1, 0));
        }
        let today = NOW + 119 * DAY;
        let rows = usage.rows_at(today, KEEP_DAYS);
        assert_eq!(rows.len(), 90);
        assert_eq!(rows[0].date, utc::date(today / DAY));
        assert_eq!(rows[89].date, utc::date(today / DAY - 89));
        assert_eq!(usage.lock().len(), 90, "older days are gone, not only hidden");
        // Rows read back from a file are held to the same bounds.
        let mut old = rows.clone();
        old.push(Row { date: "2000-01-01".into(), ..rows[0].clone() });
        old.push(Row { date: "not a date".into(), ..rows[0].clone() });
        assert_eq!(Usage::from_rows(old, today).rows_at(today, KEEP_DAYS), rows);
        assert!(Usage::from_rows(rows, today + KEEP_DAYS * DAY).rows_at(today, KEEP_DAYS).is_empty());
    }

    #[test]
    fn a_day_counts_at_most_200_models_and_folds_the_rest_into_other() {
        let usage = Usage::default();
        for n in 0..250 {
            usage.record_at(NOW, Some("mallory"), Some(&format!("model-{n}")), 200, tokens(1, 1));
        }
        usage.record_at(NOW, Some("alice"), Some("model-7"), 200, None);
        usage.record_at(NOW, Some("alice"), Some("new"), 200, None);
        usage.record_at(NOW, Some("alice"), Some(&"x".repeat(MAX_MODEL_BYTES + 1)), 200, None);
        usage.record_at(NOW, Some("alice"), Some("evil\u{1b}[2J"), 200, None);
        // A name that failed (a made-up one the upstream does not know) takes no place.
        let fresh = Usage::default();
        fresh.record_at(NOW, Some("mallory"), Some("no-such-model"), 404, None);
        fresh.record_at(NOW, Some("alice"), Some("llama3.2"), 200, None);
        fresh.record_at(NOW, Some("alice"), Some("llama3.2"), 502, None);
        let names: Vec<(String, u64)> =
            fresh.rows_at(NOW, 1).into_iter().map(|r| (r.model, r.errors)).collect();
        assert!(
            names.contains(&(OTHER.to_string(), 1)) && names.contains(&("llama3.2".to_string(), 1)),
            "{names:?}"
        );
        let rows = usage.rows_at(NOW, 1);
        let models: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(models.len(), MAX_MODELS_PER_DAY + 1, "200 names and (other)");
        let other =
            |token: &str| rows.iter().find(|r| r.model == OTHER && r.token == token).map(|r| r.requests);
        assert_eq!(other("mallory"), Some(50));
        assert_eq!(other("alice"), Some(3), "new, too long, control characters");
        assert!(
            rows.iter().any(|r| r.model == "model-7" && r.token == "alice"),
            "a known model still counts"
        );
        assert_eq!(usage.tokens_today_at(NOW, "mallory"), 500, "tokens folded into (other) still count");
        // The next day starts afresh.
        usage.record_at(NOW + DAY, Some("alice"), Some("new"), 200, None);
        assert_eq!(usage.rows_at(NOW + DAY, 1)[0].model, "new");
    }

    #[test]
    fn the_table_aligns_its_columns_and_totals_each_token() {
        let row = |date: &str, token: &str, model: &str, requests: u64, prompt: u64| Row {
            date: date.into(),
            token: token.into(),
            model: model.into(),
            requests,
            errors: 1,
            prompt_tokens: prompt,
            completion_tokens: 7,
        };
        let rows = [
            row("2023-11-14", "alice", "gpt-oss:20b", 12, 1234),
            row("2023-11-14", "bob", "m", 1, 5),
            row("2023-11-13", "alice", "m", 3, 10),
        ];
        let table = table(&rows);
        let expected = "\
DATE        TOKEN  MODEL        REQUESTS  ERRORS  PROMPT  COMPLETION
2023-11-14  alice  gpt-oss:20b        12       1    1234           7
2023-11-14  bob    m                   1       1       5           7
2023-11-13  alice  m                   3       1      10           7
total       alice                     15       2    1244          14
total       bob                        1       1       5           7
";
        assert_eq!(table, expected, "\n{table}");
    }
}
