//! Recurring jobs declared next to a backend (`schedules:` in sp00ky.yml).
//!
//! At each tick exactly one row is created in the backend's job table, however many runners are
//! up: the row's id is derived from the schedule name and the tick time
//! (`sched_<name>_<unix seconds>`), so every runner's `CREATE` after the first is a no-op. The last
//! tick each schedule produced is kept in `sp00ky_schedule`; after downtime the most recent missed
//! tick runs once (or not at all with `missed: skip`), never once per missed tick.
//!
//! `schedule` takes cron expressions (five fields, or six with seconds, via `croner`), the
//! nicknames `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`, `@reboot` (once per runner
//! start), and `rate(N seconds|minutes|hours|days)`. Rates tick on multiples of N since the Unix
//! epoch, so every runner agrees on the tick times.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde_json::Value;

use crate::job::retry::Strategy;

pub mod scheduler;

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Every {
    Cron {
        cron: Box<Cron>,
        timezone: Tz,
    },
    Rate(Duration),
    /// Once per runner start.
    Reboot,
}

/// What happens to ticks missed while no runner was up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// The most recent missed tick runs once.
    RunOnce,
    Skip,
}

/// One `schedules:` entry, checked.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    /// The text as written, for `check`.
    pub expression: String,
    pub every: Every,
    pub path: String,
    pub payload: Value,
    pub max_retries: u32,
    pub retry_strategy: Strategy,
    pub priority: i64,
    pub missed: Missed,
    /// Where it was declared (`apps.api.schedules[0]`), for errors found after loading.
    pub key: String,
}

impl Every {
    /// Parses `schedule` in `timezone` (cron only; rates and `@reboot` have no zone).
    pub fn parse(text: &str, timezone: Option<&str>) -> Result<Every, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("@reboot") {
            return Ok(Every::Reboot);
        }
        if let Some(inner) = text.strip_prefix("rate(").and_then(|t| t.strip_suffix(')')) {
            return parse_rate(inner).map(Every::Rate);
        }
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "{text:?} has {fields} fields; a cron expression has five (minute hour day month weekday) or six (with seconds first)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| format!("{text:?} is not a valid schedule: {e}"))?;
        let timezone = match timezone {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| format!("{name:?} is not an IANA time zone like Europe/Berlin"))?,
        };
        Ok(Every::Cron {
            cron: Box::new(cron),
            timezone,
        })
    }

    /// The first tick strictly after `after`; `None` for `@reboot` (it has no clock).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Every::Cron { cron, timezone } => cron
                .find_next_occurrence(&after.with_timezone(timezone), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Every::Rate(every) => {
                let step = every.as_secs() as i64;
                let next = (after.timestamp().div_euclid(step) + 1) * step;
                Utc.timestamp_opt(next, 0).single()
            }
            Every::Reboot => None,
        }
    }

    /// The latest tick at or before `at`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Every::Cron { cron, timezone } => cron
                .find_previous_occurrence(&at.with_timezone(timezone), true)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Every::Rate(every) => {
                let step = every.as_secs() as i64;
                Utc.timestamp_opt(at.timestamp().div_euclid(step) * step, 0)
                    .single()
            }
            Every::Reboot => None,
        }
    }
}

fn parse_rate(inner: &str) -> Result<Duration, String> {
    let mut parts = inner.split_whitespace();
    let (Some(count), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("rate({inner}) must read like rate(5 minutes)"));
    };
    let count: u64 = count
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("rate({inner}): {count:?} is not a whole number above 0"))?;
    let unit = match unit.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => {
            return Err(format!(
                "rate({inner}): the unit must be seconds, minutes, hours or days"
            ));
        }
    };
    // Longer than a year is no rate; the bound also keeps every time computed from it in range.
    const MAX_SECONDS: u64 = 366 * 86_400;
    count
        .checked_mul(unit)
        .filter(|seconds| *seconds <= MAX_SECONDS)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("rate({inner}) must be at most 366 days"))
}

impl Schedule {
    /// The row key of the tick at `tick`: readable (name and unix time), and unguessable (a
    /// random suffix), so no row can be made in its place ahead of time.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "sched_{}_{}_{}",
            self.name,
            tick.timestamp(),
            crate::store::unguessable_hex()
        )
    }

    /// The next `count` fire times after `after`, for `check`.
    pub fn upcoming(&self, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::new();
        let mut at = after;
        while times.len() < count {
            match self.every.next_after(at) {
                Some(next) => {
                    times.push(next);
                    at = next;
                }
                None => break,
            }
        }
        times
    }
}

/// Names become part of row ids: letters, digits, `_` and `-` only.
pub fn is_schedule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn next_three(expression: &str, timezone: Option<&str>, from: &str) -> Vec<String> {
        let every = Every::parse(expression, timezone).unwrap();
        let mut out = Vec::new();
        let mut t = at(from);
        for _ in 0..3 {
            t = every.next_after(t).unwrap();
            out.push(t.to_rfc3339());
        }
        out
    }

    #[test]
    fn overflowing_rates_are_refused_not_panicked_on() {
        for text in [
            "rate(18446744073709551615 days)",
            "rate(9999999999999 hours)",
            "rate(367 days)",
        ] {
            let err = Every::parse(text, None).unwrap_err();
            assert!(err.contains("at most 366 days"), "{text}: {err}");
        }
        assert!(Every::parse("rate(366 days)", None).is_ok());
    }

    #[test]
    fn five_field_cron() {
        assert_eq!(
            next_three("0 0 * * *", None, "2026-11-23T15:00:00Z"),
            [
                "2026-11-24T00:00:00+00:00",
                "2026-11-25T00:00:00+00:00",
                "2026-11-26T00:00:00+00:00"
            ]
        );
        assert_eq!(
            next_three("*/15 * * * *", None, "2026-11-23T15:07:30Z"),
            [
                "2026-11-23T15:15:00+00:00",
                "2026-11-23T15:30:00+00:00",
                "2026-11-23T15:45:00+00:00"
            ]
        );
    }

    #[test]
    fn six_field_cron_has_seconds() {
        assert_eq!(
            next_three("*/20 * * * * *", None, "2026-11-23T15:00:05Z"),
            [
                "2026-11-23T15:00:20+00:00",
                "2026-11-23T15:00:40+00:00",
                "2026-11-23T15:01:00+00:00"
            ]
        );
    }

    #[test]
    fn nicknames() {
        let from = "2026-11-23T15:00:00Z";
        assert_eq!(
            next_three("@hourly", None, from)[0],
            "2026-11-23T16:00:00+00:00"
        );
        assert_eq!(
            next_three("@daily", None, from)[0],
            "2026-11-24T00:00:00+00:00"
        );
        assert_eq!(
            next_three("@weekly", None, from)[0],
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            next_three("@monthly", None, from)[0],
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            next_three("@yearly", None, from)[0],
            "2027-01-01T00:00:00+00:00"
        );
        assert!(matches!(
            Every::parse("@reboot", None).unwrap(),
            Every::Reboot
        ));
    }

    #[test]
    fn rates_tick_on_epoch_multiples() {
        assert_eq!(
            next_three("rate(90 seconds)", None, "2026-11-23T15:00:10Z"),
            [
                "2026-11-23T15:01:30+00:00",
                "2026-11-23T15:03:00+00:00",
                "2026-11-23T15:04:30+00:00"
            ]
        );
        assert_eq!(
            next_three("rate(1 day)", None, "2026-11-23T15:00:00Z")[0],
            "2026-11-24T00:00:00+00:00"
        );
        assert_eq!(
            next_three("rate(2 hours)", None, "2026-11-23T15:00:00Z")[0],
            "2026-11-23T16:00:00+00:00"
        );
        let every = Every::parse("rate(5 minutes)", None).unwrap();
        assert_eq!(
            every
                .previous_at_or_before(at("2026-11-23T15:07:00Z"))
                .unwrap(),
            at("2026-11-23T15:05:00Z")
        );
    }

    #[test]
    fn time_zones_shift_cron_ticks() {
        // 09:00 in Berlin is 08:00 UTC in winter.
        assert_eq!(
            next_three("0 9 * * *", Some("Europe/Berlin"), "2026-11-23T10:00:00Z")[0],
            "2026-11-24T08:00:00+00:00"
        );
    }

    #[test]
    fn invalid_schedules_say_why() {
        for (text, expected) in [
            ("61 * * * *", "not a valid schedule"),
            ("* * *", "has 3 fields"),
            ("rate(0 minutes)", "above 0"),
            ("rate(5 fortnights)", "the unit must be"),
            ("rate(soon)", "must read like"),
            ("@sometimes", "not a valid schedule"),
        ] {
            let err = Every::parse(text, None).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(
            Every::parse("0 9 * * *", Some("Mars/Olympus"))
                .unwrap_err()
                .contains("IANA")
        );
    }
}
