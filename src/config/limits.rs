//! Every default and every allowed range, in one place: the flags, the config readers, the row
//! reader and the admin API take them from here. A value outside its range is refused where it
//! is read, with the key and the range, so no flag or config value can overflow a timer.

use std::ops::RangeInclusive;
use std::time::Duration;

/// A duration setting: its default and the range it must lie in.
#[derive(Debug, Clone, Copy)]
pub struct DurationSetting {
    pub default: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// A duration setting that is off unless set: only the range it must lie in, so no default
/// exists for anything to read by mistake.
#[derive(Debug, Clone, Copy)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurationSetting {
    /// `500ms`, `15s`, `5m`, `1h` (a bare number is seconds), within the range.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        self.range().parse(text)
    }

    /// The value, or why it is outside the range.
    pub fn check(&self, value: Duration) -> Result<Duration, String> {
        self.range().check(value)
    }

    const fn range(&self) -> DurationRange {
        DurationRange {
            min: self.min,
            max: self.max,
        }
    }
}

impl DurationRange {
    /// `500ms`, `15s`, `5m`, `1h` (a bare number is seconds), within the range.
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let parsed = match text.parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
            }
            Ok(_) => Err("not a finite number of seconds".to_string()),
            Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
        };
        let value =
            parsed.map_err(|e| format!("{text:?} is not a duration like 500ms, 15s or 5m: {e}"))?;
        self.check(value)
    }

    /// The value, or why it is outside the range.
    pub fn check(&self, value: Duration) -> Result<Duration, String> {
        if value < self.min || value > self.max {
            return Err(format!(
                "{} is outside the allowed range {} to {}",
                humantime::format_duration(value),
                humantime::format_duration(self.min),
                humantime::format_duration(self.max)
            ));
        }
        Ok(value)
    }
}

/// A duration flag: parsed (and range-checked) by its [`DurationSetting`], shown in `--help` as
/// humantime writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagDuration(pub Duration);

impl std::fmt::Display for FlagDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `--poll-interval`: the longest wait between two looks at the tables.
pub const POLL_INTERVAL: DurationSetting = DurationSetting {
    default: secs(1),
    min: millis(10),
    max: secs(3600),
};
/// `--lease`: how long a claim holds without renewal.
pub const LEASE: DurationSetting = DurationSetting {
    default: secs(15),
    min: secs(1),
    max: secs(24 * 3600),
};
/// `--shutdown-grace`: how long in-flight calls may finish after a shutdown signal.
pub const SHUTDOWN_GRACE: DurationSetting = DurationSetting {
    default: secs(30),
    min: Duration::ZERO,
    max: secs(24 * 3600),
};
/// `--retry-base` and `retry.baseMs`: the first retry's delay.
pub const RETRY_BASE: DurationSetting = DurationSetting {
    default: secs(1),
    min: millis(1),
    max: secs(24 * 3600),
};
/// `--retry-cap` and `retry.maxDelayMs`: the longest retry delay.
pub const RETRY_CAP: DurationSetting = DurationSetting {
    default: secs(300),
    min: millis(1),
    max: secs(30 * 24 * 3600),
};
/// `enqueue --delay`, the admin API's `delay_ms`, and a row's `delay`.
pub const DELAY: DurationSetting = DurationSetting {
    default: Duration::ZERO,
    min: Duration::ZERO,
    max: secs(365 * 24 * 3600),
};

/// `--connect-timeout`: how long to wait for a database server that does not answer yet. The
/// flag has no default, because `run` waits forever without it; this `default` is the wait of
/// the one-shot commands (`check`, `schema`, `enqueue`, `jobs`), read as
/// `commands::settings::ONE_SHOT_WAIT`.
pub const CONNECT_TIMEOUT: DurationSetting = DurationSetting {
    default: secs(30),
    min: millis(100),
    max: secs(30 * 24 * 3600),
};

/// `bench --duration`: how long the pickup-latency phase inserts.
pub const BENCH_PICKUP: DurationSetting = DurationSetting {
    default: secs(20),
    min: millis(100),
    max: secs(3600),
};

/// `retention.success` / `retention.failed`: how long a finished row is kept. No default: off
/// unless set (a Sp00ky app may read its finished jobs).
pub const RETENTION: DurationRange = DurationRange {
    min: secs(60),
    max: secs(10 * 366 * 24 * 3600),
};

/// How often retention takes a turn, and the most rows of one status one turn deletes per
/// backend: a large backlog goes in bounded steps, never in one long statement.
pub const RETENTION_EVERY: Duration = secs(60);
pub const RETENTION_BATCH: usize = 10_000;

/// How early before a rate-limit window a grant may count against it; its calls then wait for
/// the window, so a call that leaves up to this late still lands inside its own window.
pub const RATE_LEAD: Duration = millis(50);

/// `--concurrency`: backend calls running at once.
pub const CONCURRENCY: usize = 32;
/// The range of `--concurrency`.
pub const CONCURRENCY_RANGE: RangeInclusive<usize> = 1..=10_000;

/// `--claim-ahead`: 0 up to the largest concurrency.
pub fn parse_claim_ahead(text: &str) -> Result<usize, String> {
    let most = *CONCURRENCY_RANGE.end();
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= most)
        .ok_or_else(|| format!("{text:?} is not a whole number from 0 to {most}"))
}

/// Per-call timeout when a backend does not set `deploy.timeout` (CONTRACT.md).
pub const TIMEOUT: Duration = secs(10);
/// The range CONTRACT.md allows for `deploy.timeout` and a row's `timeout`, in seconds.
pub const TIMEOUT_RANGE_SECS: RangeInclusive<u64> = 1..=3600;

/// A row's `max_retries` when it has none (CONTRACT.md).
pub const MAX_RETRIES: u32 = 3;
/// `limits.maxRetries`: a row asking for more retries runs with this many, so no row can make
/// the runner call a backend without bound.
pub const MAX_RETRIES_CAP: u32 = 25;
/// The range of `limits.maxRetries`.
pub const MAX_RETRIES_CAP_RANGE: RangeInclusive<u64> = 0..=1000;
/// `limits.payloadBytes`: a bigger payload ends `failed` (`row`) before it is parsed or
/// validated.
pub const PAYLOAD_BYTES: usize = 1024 * 1024;
/// The range of `limits.payloadBytes`.
pub const PAYLOAD_BYTES_RANGE: RangeInclusive<u64> = 1024..=64 * 1024 * 1024;
/// The longest `path` a job may have, in characters: every route of a spec is far shorter, and
/// the schema refuses a longer one from a record user.
pub const PATH_CHARS: usize = 2048;

/// A row's `errors` keeps at most this many entries: the first [`ERRORS_HEAD`], a note of what
/// was left out, and the most recent ones.
pub const ERRORS_KEPT: usize = 25;
/// How many of the first failures `errors` always keeps.
pub const ERRORS_HEAD: usize = 5;

/// `limits.perUser.pending`: the most jobs one record user may have pending in a table at
/// once; the database refuses the next `db.run()` (the table's create permission, so system
/// users are never limited).
pub const PENDING_PER_USER: u32 = 1000;
/// The range of `limits.perUser.pending`.
pub const PENDING_PER_USER_RANGE: RangeInclusive<u64> = 1..=10_000_000;

/// What one row, and one user, may cost, per backend (the `limits:` block, a key of this
/// runner's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLimits {
    /// The largest payload, in bytes of its JSON text.
    pub payload_bytes: usize,
    /// The most retries a row gets, whatever its `max_retries` says.
    pub max_retries: u32,
    /// The most pending jobs of one record user ([`PENDING_PER_USER`]).
    pub pending_per_user: u32,
}

impl Default for RowLimits {
    fn default() -> Self {
        RowLimits {
            payload_bytes: PAYLOAD_BYTES,
            max_retries: MAX_RETRIES_CAP,
            pending_per_user: PENDING_PER_USER,
        }
    }
}

/// Where the operations listener binds.
pub const LISTEN: &str = "127.0.0.1:8787";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(RETRY_CAP.parse("500ms").unwrap(), millis(500));
        assert_eq!(RETRY_CAP.parse("2").unwrap(), secs(2));
        assert_eq!(RETRY_CAP.parse("5m").unwrap(), secs(300));
        assert!(RETRY_CAP.parse("soon").is_err());
        assert!(RETRY_CAP.parse("-1").is_err());
    }

    #[test]
    fn durations_outside_their_range_are_refused_with_the_range() {
        assert_eq!(LEASE.parse("15s").unwrap(), secs(15));
        assert_eq!(LEASE.parse("2").unwrap(), secs(2));
        for text in ["1e20", "1e400", "NaN", "-1", "inf", "1000000000000h"] {
            let err = LEASE.parse(text).unwrap_err();
            assert!(!err.is_empty(), "{text}");
        }
        let err = LEASE.parse("500ms").unwrap_err();
        assert!(
            err.contains("outside the allowed range 1s to 1day"),
            "{err}"
        );
        assert!(POLL_INTERVAL.parse("abc").unwrap_err().contains("\"abc\""));
    }
}
