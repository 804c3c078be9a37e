//! What Ollama Cloud's `GET /api/usage` says about a key's plan: how much of each usage
//! window is used, and until when a used-up one stays used up.
//!
//! The endpoint is undocumented. Its answer, as seen in public reports (ollama/ollama#12532,
//! kunchenguid/quota-axi#86; since 2026-08-31 new plans have only `monthly`, see
//! slkiser/opencode-quota#289):
//!
//! ```json
//! {"limits": {"session": {"usage": 0.046, "models": []}, "weekly": {"usage": 0.051},
//!             "monthly": {"usage": 0.007}},
//!  "activity": {"cost": "0.00000", "period": {"type": "last_4_weeks"}, "models": []}}
//! ```
//!
//! `usage` is the part of the window used (`null` or absent: no such limit); no reset time
//! has been seen, but `resets_at`, `reset_at` or `reset` (RFC 3339 text or Unix seconds)
//! are read when present.
//!
//! In scope: reading that body into a [`PlanUsage`], tolerant of missing and extra
//! fields, with a changed or missing shape reported as [`Reading::Unreadable`] (a
//! warning, never a failure of the key); when a used-up window frees up; the fractions
//! in words. Pure: bytes and the clock in, values out. Out of scope: asking the upstream
//! (`health`) and what a spent quota does to a key (`keystate`).

use crate::keystate::Window;
use crate::utc;
use serde::Deserialize;
use serde_json::Value;

/// One usage window as the upstream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowUsage {
    /// The part used: 0.0 to 1.0, used up at 1.0 and above; `None` when the plan has no
    /// such limit.
    pub used: Option<f64>,
    /// When the window resets (Unix seconds), when the answer says.
    pub resets_at: Option<u64>,
}

/// How much of each usage window of a key's plan is used.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PlanUsage {
    /// The 5-hour session window (plans before 2026-08-31).
    pub session: WindowUsage,
    /// The weekly window, reset on Mondays 00:00 UTC (plans before 2026-08-31).
    pub weekly: WindowUsage,
    /// The monthly pool of usage credits, reset on the first of the month 00:00 UTC.
    pub monthly: WindowUsage,
}

/// What a usage answer turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    /// The plan's usage.
    Usage(PlanUsage),
    /// Not a usage answer, from an upstream that was not expected to give one (a
    /// self-hosted Ollama or a proxy answering `/api/usage` in its own way).
    NotUsage,
    /// A usage answer was expected (Ollama Cloud) or its shape began like one, but it
    /// cannot be read; the text says why.
    Unreadable(String),
}

/// The answer, down to its `limits` (kept as JSON, so that each window is read only if it
/// is an object: serde would read a struct from an array too).
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    limits: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawWindow {
    usage: Option<f64>,
    resets_at: Option<Value>,
    reset_at: Option<Value>,
    reset: Option<Value>,
}

impl RawWindow {
    fn read(&self) -> WindowUsage {
        let resets_at =
            [&self.resets_at, &self.reset_at, &self.reset].into_iter().flatten().find_map(reset_time);
        WindowUsage { used: self.usage, resets_at }
    }
}

/// Unix seconds of a reset time given as RFC 3339 text or a Unix time (in seconds, or in
/// milliseconds when too large for seconds: after the year 5138).
fn reset_time(value: &Value) -> Option<u64> {
    const MILLIS_FROM: f64 = 1e11;
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(text) => match utc::parse_rfc3339(text) {
            Some(secs) => return Some(secs),
            None => text.trim().parse::<f64>().ok()?,
        },
        _ => return None,
    };
    let secs = if secs >= MILLIS_FROM { secs / 1000.0 } else { secs };
    // `as` saturates; a negative or NaN time is no time.
    (secs.is_finite() && secs > 0.0).then_some(secs as u64)
}

/// Reads a `/api/usage` answer. `expected`: the upstream is Ollama Cloud, whose answer
/// must have this shape; from another upstream, only a body with `limits` is read.
pub fn read(body: &[u8], expected: bool) -> Reading {
    let unreadable = |why: &str| match expected {
        true => Reading::Unreadable(why.to_string()),
        false => Reading::NotUsage,
    };
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let answer = serde_json::from_slice::<Answer>(body).ok().filter(|_| object);
    let Some(answer) = answer else { return unreadable("the answer is not a JSON object") };
    let limits = match answer.limits {
        None | Some(Value::Null) => return unreadable("the answer has no \"limits\""),
        Some(Value::Object(limits)) => limits,
        Some(_) => return Reading::Unreadable("unexpected \"limits\": not an object".to_string()),
    };
    let window = |name: &str| match limits.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value @ Value::Object(_)) => {
            RawWindow::deserialize(value).map(Some).map_err(|err| err.to_string())
        }
        Some(_) => Err("not an object".to_string()),
    };
    let windows = (window("session"), window("weekly"), window("monthly"));
    let (session, weekly, monthly) = match windows {
        (Ok(session), Ok(weekly), Ok(monthly)) => (session, weekly, monthly),
        (Err(why), ..) | (_, Err(why), _) | (.., Err(why)) => {
            return Reading::Unreadable(format!("unexpected \"limits\": {why}"))
        }
    };
    if session.is_none() && weekly.is_none() && monthly.is_none() {
        return Reading::Unreadable("\"limits\" has no session, weekly or monthly window".to_string());
    }
    let read = |window: Option<RawWindow>| window.map(|w| w.read()).unwrap_or_default();
    Reading::Usage(PlanUsage { session: read(session), weekly: read(weekly), monthly: read(monthly) })
}

impl PlanUsage {
    /// Each window with its name and reset rule.
    fn windows(&self) -> [(&'static str, Window, &WindowUsage); 3] {
        [
            ("session", Window::Session, &self.session),
            ("weekly", Window::Weekly, &self.weekly),
            ("monthly", Window::Monthly, &self.monthly),
        ]
    }

    /// When the key may be used again, if a window is used up at `now`: the latest reset
    /// of the used-up windows (its own reset time when the answer gave one still ahead and
    /// at most a day past the window's rule, else the window's rule).
    pub fn exhausted_until(&self, now: u64) -> Option<u64> {
        self.windows()
            .into_iter()
            .filter(|(_, _, usage)| usage.used.is_some_and(|used| used >= 1.0))
            .map(|(_, window, usage)| {
                // A reset later than a day past the window's own rule is not believed: a
                // bogus date would keep the key out for good.
                let rule = window.resets_after(now);
                let believable = |at: &u64| *at > now && *at <= rule.saturating_add(86_400);
                usage.resets_at.filter(believable).unwrap_or(rule)
            })
            .max()
    }

    /// The names of the used-up windows: `monthly`, `session and weekly`.
    pub fn used_up(&self) -> String {
        let names: Vec<&str> = self
            .windows()
            .into_iter()
            .filter(|(_, _, usage)| usage.used.is_some_and(|used| used >= 1.0))
            .map(|(name, ..)| name)
            .collect();
        names.join(" and ")
    }

    /// The highest part used of any window, in thousandths (rounded down, so 999 is not
    /// yet used up); `None` when no window has a limit.
    pub fn highest_permille(&self) -> Option<u32> {
        self.windows().into_iter().filter_map(|(_, _, usage)| usage.used.map(permille)).max()
    }

    /// `session 42%, weekly 7%, monthly 91%`: the windows with a limit (`no limits` when
    /// none has one), in whole percent rounded down.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .windows()
            .into_iter()
            .filter_map(|(name, _, usage)| Some(format!("{name} {}%", permille(usage.used?) / 10)))
            .collect();
        match parts.is_empty() {
            true => "no limits".to_string(),
            false => parts.join(", "),
        }
    }
}

/// A fraction in thousandths, rounded down (after a nudge, so 0.29 is 290, not 289).
fn permille(used: f64) -> u32 {
    // `as` saturates: a negative fraction is 0, a huge one u32::MAX.
    (used * 1000.0 + 1e-6).floor() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystate::{first_of_next_month_utc, next_monday_utc, SESSION_WINDOW_SECS};

    const NOW: u64 = 1_700_000_000; // Tuesday 2023-11-14 22:13:20 UTC

    fn usage(body: &str) -> PlanUsage {
        match read(body.as_bytes(), true) {
            Reading::Usage(usage) => usage,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn used(fraction: f64) -> WindowUsage {
        WindowUsage { used: Some(fraction), resets_at: None }
    }

    /// A live answer of a plan from before 2026-08-31 (kunchenguid/quota-axi#86), extra
    /// fields and all.
    const OLD_PLAN: &str = r#"{
        "activity": {"cost": "0.00000", "models": [], "period": {"ending_at": "2026-08-12T21:43:56.862888005Z",
            "starting_at": "2026-07-20T00:00:00Z", "type": "last_4_weeks"}},
        "limits": {"session": {"models": [], "usage": 0.42}, "weekly": {"models": [], "usage": 0.07}}
    }"#;

    /// A live answer of a monthly plan (can1357/oh-my-pi#10513).
    const MONTHLY_PLAN: &str = r#"{
        "activity": {"cost": "1.68054", "period": {"type": "last_4_weeks"},
            "models": [{"name": "kimi-k3", "request_count": 47, "cost": "1.68054"}]},
        "limits": {"monthly": {"usage": 0.007, "models": [{"name": "glm-5.3-flash", "request_count": 213}]}}
    }"#;

    #[test]
    fn live_answers_read_with_their_extra_fields() {
        let old = usage(OLD_PLAN);
        assert_eq!(
            old,
            PlanUsage { session: used(0.42), weekly: used(0.07), monthly: WindowUsage::default() }
        );
        assert_eq!(
            (old.summary(), old.highest_permille(), old.exhausted_until(NOW)),
            ("session 42%, weekly 7%".into(), Some(420), None)
        );
        let monthly = usage(MONTHLY_PLAN);
        assert_eq!(monthly.monthly, used(0.007));
        assert_eq!((monthly.summary(), monthly.highest_permille()), ("monthly 0%".into(), Some(7)));
    }

    #[test]
    fn each_window_used_up_rests_until_its_own_reset() {
        #[rustfmt::skip]
        let cases = [
            (r#"{"limits":{"session":{"usage":1.0},"weekly":{"usage":0.5}}}"#, NOW + SESSION_WINDOW_SECS, "session"),
            (r#"{"limits":{"session":{"usage":0.2},"weekly":{"usage":1}}}"#, next_monday_utc(NOW), "weekly"),
            (r#"{"limits":{"monthly":{"usage":1.0}}}"#, first_of_next_month_utc(NOW), "monthly"),
            (r#"{"limits":{"monthly":{"usage":1.37}}}"#, first_of_next_month_utc(NOW), "monthly"),
            // Two used up: the key waits for the later reset.
            (r#"{"limits":{"session":{"usage":1},"weekly":{"usage":1}}}"#, next_monday_utc(NOW), "session and weekly"),
        ];
        for (body, until, names) in cases {
            let usage = usage(body);
            assert_eq!(usage.exhausted_until(NOW), Some(until), "{body}");
            assert_eq!(usage.used_up(), names, "{body}");
        }
    }

    #[test]
    fn a_reset_time_far_past_the_windows_rule_is_not_believed() {
        let bogus = usage(r#"{"limits":{"session":{"usage":1,"resets_at":"4000-01-01T00:00:00Z"}}}"#);
        assert_eq!(bogus.exhausted_until(NOW), Some(NOW + SESSION_WINDOW_SECS));
        let sooner = NOW + 600;
        let given = usage(&format!(r#"{{"limits":{{"session":{{"usage":1,"resets_at":{sooner}}}}}}}"#));
        assert_eq!(given.exhausted_until(NOW), Some(sooner), "a believable reset time wins");
    }

    #[test]
    fn nothing_used_up_is_no_rest() {
        for body in [
            r#"{"limits":{"session":{"usage":0.999},"weekly":{"usage":0},"monthly":{"usage":0.9999}}}"#,
            r#"{"limits":{"session":{"usage":null},"weekly":{}}}"#,
            r#"{"limits":{"monthly":{"usage":-0.5}}}"#,
        ] {
            let usage = usage(body);
            assert_eq!((usage.exhausted_until(NOW), usage.used_up()), (None, String::new()), "{body}");
        }
        let almost = usage(r#"{"limits":{"session":{"usage":0.9999}}}"#);
        assert_eq!((almost.summary(), almost.highest_permille()), ("session 99%".into(), Some(999)));
    }

    #[test]
    fn missing_fields_are_no_limit() {
        let free = usage(r#"{"limits":{"session":{"usage":null},"weekly":{"models":[]}}}"#);
        assert_eq!(free, PlanUsage::default());
        assert_eq!((free.summary(), free.highest_permille()), ("no limits".into(), None));
        let partial = usage(r#"{"limits":{"weekly":{"usage":0.29}}}"#);
        assert_eq!((partial.summary(), partial.highest_permille()), ("weekly 29%".into(), Some(290)));
    }

    #[test]
    fn reset_times_are_read_in_any_of_their_spellings() {
        let december = 1_701_388_800; // 2023-12-01 00:00 UTC
        let soon = NOW + 600;
        #[rustfmt::skip]
        let cases = [
            (r#"{"usage":1,"resets_at":"2023-11-14T22:23:20Z"}"#.to_string(), soon),
            (r#"{"usage":1,"reset_at":"2023-11-15T00:23:20+02:00"}"#.to_string(), soon),
            (format!(r#"{{"usage":1,"reset":{soon}}}"#), soon),
            (format!(r#"{{"usage":1,"reset":{soon}.75}}"#), soon),
            (format!(r#"{{"usage":1,"resets_at":{}}}"#, soon * 1000), soon),
            (format!(r#"{{"usage":1,"resets_at":"{soon}"}}"#), soon),
            // Unreadable, in the past or of another type: the window's own rule.
            (r#"{"usage":1,"resets_at":"next month"}"#.to_string(), december),
            (format!(r#"{{"usage":1,"resets_at":{}}}"#, NOW - 1), december),
            (format!(r#"{{"usage":1,"resets_at":{NOW}}}"#), december),
            (r#"{"usage":1,"resets_at":{"in":"5h"}}"#.to_string(), december),
            (r#"{"usage":1,"resets_at":-5}"#.to_string(), december),
            (r#"{"usage":1,"resets_at":null,"reset":"2023-11-14T22:23:20Z"}"#.to_string(), soon),
        ];
        for (window, until) in cases {
            let body = format!(r#"{{"limits":{{"monthly":{window}}}}}"#);
            assert_eq!(usage(&body).exhausted_until(NOW), Some(until), "{body}");
        }
    }

    #[test]
    fn other_shapes_are_warnings_from_ollama_cloud_and_nothing_elsewhere() {
        #[rustfmt::skip]
        let cases: [(&[u8], &str); 6] = [
            (b"404 page not found", "not a JSON object"),
            (b"<html><body>Sign in</body></html>", "not a JSON object"),
            (b"", "not a JSON object"),
            (b"{\"usage\":{}}", "no \"limits\""),
            (b"{\"limits\":null}", "no \"limits\""),
            (b"\xff\xfe{", "not a JSON object"),
        ];
        for (body, why) in cases {
            let text = String::from_utf8_lossy(body);
            match read(body, true) {
                Reading::Unreadable(said) => assert!(said.contains(why), "{text}: {said}"),
                other => panic!("{text}: {other:?}"),
            }
            assert_eq!(read(body, false), Reading::NotUsage, "{text}");
        }
    }

    #[test]
    fn a_changed_limits_shape_is_a_warning_wherever_it_comes_from() {
        for (body, why) in [
            (r#"{"limits":{}}"#, "no session, weekly or monthly window"),
            (r#"{"limits":{"daily":{"usage":0.5}}}"#, "no session, weekly or monthly window"),
            (r#"{"limits":[{"window":"monthly","usage":0.5}]}"#, "unexpected \"limits\""),
            (r#"{"limits":{"monthly":{"usage":"50%"}}}"#, "unexpected \"limits\""),
            (r#"{"limits":{"monthly":0.5}}"#, "unexpected \"limits\""),
        ] {
            for expected in [true, false] {
                match read(body.as_bytes(), expected) {
                    Reading::Unreadable(said) => assert!(said.contains(why), "{body}: {said}"),
                    other => panic!("{body}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn a_plain_answer_from_elsewhere_is_not_usage() {
        for body in ["{}", r#"{"usage":{}}"#, r#"{"version":"0.12.0"}"#] {
            assert_eq!(read(body.as_bytes(), false), Reading::NotUsage, "{body}");
        }
        assert_eq!(
            read(br#"{"limits":{"monthly":{"usage":1}}}"#, false),
            Reading::Usage(PlanUsage { monthly: used(1.0), ..PlanUsage::default() }),
            "the shape itself is read from any upstream"
        );
    }
}
