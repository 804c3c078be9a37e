//! Calendar arithmetic in UTC on Unix seconds, for the few places that need dates.
//!
//! In scope: days since 1970-01-01 to and from a civil date (Howard Hinnant's algorithms,
//! proleptic Gregorian), reading an RFC 3339 time (`2026-12-01T00:00:00Z`, with a fraction
//! or an offset such as `+02:00`), writing one (`2026-11-23T16:31:05Z`, for the admin API;
//! with milliseconds, `2026-11-23T16:31:05.042Z`, the JSON log's `time`), dates
//! (`2026-11-23`, the days usage is counted by), and the short `2026-11-23 16:31Z` form
//! `check` prints.
//! Out of scope: reading the clock (`keystate::now`), time zones beyond an RFC 3339 offset,
//! leap seconds (`:60` reads as the second before), and times before 1970.

/// Seconds in a day.
const DAY: u64 = 86_400;

/// The (year, month 1–12, day 1–31) of `days` since 1970-01-01.
pub fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: a day is at most 31 and a month at most 12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of (`year` ≥ 1970, `month` 1–12, `day` 1–31): the inverse of
/// [`civil_from_days`]. A day past the month's end counts on into the next month.
pub fn days_from_civil(year: u64, month: u32, day: u32) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = u64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + u64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

/// Whether `year` has a 29 February.
fn is_leap(year: u64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: u64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of an RFC 3339 time (`2026-12-01T00:00:00Z`, `2026-12-01 02:00:00.5+02:00`);
/// `None` when `text` is not one, names an impossible date, or lies before 1970. A
/// fraction of a second is dropped.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| b.get(range).and_then(decimal);
    let at = |i: usize, want: &[u8]| b.get(i).is_some_and(|c| want.contains(c));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let day = u32::try_from(day).ok().filter(|d| (1..=days_in_month(year, month)).contains(d))?;
    if year < 1970 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    if let [b'.', tail @ ..] = rest {
        let digits = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &tail[digits..];
    }
    let local = days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + second.min(59);
    match rest {
        [b'Z' | b'z'] => Some(local),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (decimal(&[*h1, *h2])?, decimal(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            // `+02:00` is two hours ahead of UTC: UTC is the local time minus the offset.
            match sign {
                b'+' => local.checked_sub(offset),
                _ => local.checked_add(offset),
            }
        }
        _ => None,
    }
}

/// The number ASCII `digits` spell, if they are all digits (and at most a few).
fn decimal(digits: &[u8]) -> Option<u64> {
    let all = !digits.is_empty() && digits.len() <= 4 && digits.iter().all(u8::is_ascii_digit);
    all.then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `2026-11-23 16:31Z` for Unix seconds.
pub fn short(secs: u64) -> String {
    let (year, month, day) = civil_from_days(secs / DAY);
    let rest = secs % DAY;
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}Z", rest / 3600, rest % 3600 / 60)
}

/// `2026-11-23T16:31:05Z` for Unix seconds.
pub fn rfc3339(secs: u64) -> String {
    let rest = secs % DAY;
    format!("{}T{:02}:{:02}:{:02}Z", date(secs / DAY), rest / 3600, rest % 3600 / 60, rest % 60)
}

/// `2026-11-23` for `days` since 1970-01-01.
pub fn date(days: u64) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The days since 1970-01-01 of a `2026-11-23` date; `None` when `text` is not one.
pub fn parse_date(text: &str) -> Option<u64> {
    (text.len() == 10).then_some(())?;
    parse_rfc3339(&format!("{text}T00:00:00Z")).map(|secs| secs / DAY)
}

/// `2026-11-23T16:31:05.042Z` (RFC 3339 in UTC, to the millisecond) for Unix milliseconds.
pub fn rfc3339_millis(millis: u64) -> String {
    let secs = millis / 1000;
    let rest = secs % DAY;
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        date(secs / DAY),
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        millis % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_rfc3339_times_are_written_and_read_back() {
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339(&rfc3339(1_709_164_799)), Some(1_709_164_799));
        assert_eq!(date(19_675), "2023-11-14");
        assert_eq!(parse_date("2023-11-14"), Some(19_675));
        assert_eq!(parse_date("2024-02-29").map(date).as_deref(), Some("2024-02-29"));
        for bad in ["2023-02-29", "2023-11-14T00:00:00Z", "2023-1-14", "", "yesterday"] {
            assert_eq!(parse_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_are_written_as_rfc3339_to_the_millisecond() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_700_000_000_042), "2023-11-14T22:13:20.042Z");
        assert_eq!(rfc3339_millis(951_868_799_999), "2000-02-29T23:59:59.999Z");
        // What is written reads back as the same second.
        assert_eq!(parse_rfc3339(&rfc3339_millis(1_798_761_599_500)), Some(1_798_761_599));
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(short(1_700_000_000), "2023-11-14 22:13Z");
        assert_eq!(short(1_700_438_400), "2023-11-20 00:00Z");
        assert_eq!(short(951_782_400), "2000-02-29 00:00Z");
        assert_eq!(short(0), "1970-01-01 00:00Z");
    }

    #[test]
    fn civil_dates_and_day_counts_are_inverses() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 1), 29, "2000 is leap");
        assert_eq!(days_from_civil(2100, 3, 1) - days_from_civil(2100, 2, 1), 28, "2100 is not");
        for days in (0..200_000).step_by(37) {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
        }
    }

    #[test]
    fn rfc3339_times_read_with_their_offset() {
        let cases = [
            ("2023-11-14T22:13:20Z", Some(1_700_000_000)),
            ("2023-11-14t22:13:20z", Some(1_700_000_000)),
            ("2023-11-14 22:13:20Z", Some(1_700_000_000)),
            ("2023-11-14T22:13:20.862888005Z", Some(1_700_000_000)),
            ("2023-11-15T00:13:20+02:00", Some(1_700_000_000)),
            ("2023-11-14T17:13:20-05:00", Some(1_700_000_000)),
            (" 2023-11-14T22:13:20Z\n", Some(1_700_000_000)),
            ("2024-02-29T00:00:00Z", Some(1_709_164_800)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2023-11-14T22:13:60Z", Some(1_700_000_039)),
            ("2023-02-29T00:00:00Z", None),
            ("2023-13-01T00:00:00Z", None),
            ("2023-11-31T00:00:00Z", None),
            ("2023-11-14T24:00:00Z", None),
            ("2023-11-14T22:13:20", None),
            ("2023-11-14T22:13:20.Z", None),
            ("2023-11-14T22:13:20+0200", None),
            ("2023-11-14T22:13:20+24:00", None),
            ("2023-11-14", None),
            ("1969-12-31T23:59:59Z", None),
            ("1970-01-01T00:00:00+00:01", None),
            ("２０２３-11-14T22:13:20Z", None),
            ("", None),
            ("in 5 hours", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text), want, "{text:?}");
        }
    }
}
