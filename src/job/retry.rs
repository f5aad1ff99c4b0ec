//! When a failed attempt runs again.
//!
//! The delay for retry number `n` (1 for the first retry) is
//!
//! ```text
//! linear:      base × n
//! exponential: base × 2^(n−1)
//! then:        min(that, cap), times a random factor in [0.8, 1.0] (jitter)
//! Retry-After: when the backend's hint is longer, the hint wins (still at most cap)
//! ```
//!
//! The result becomes the row's `due_at`, so a scheduled retry survives a restart: there are no
//! in-memory retry timers. The `backoff` crate is unmaintained and its successors run retry loops
//! in memory, which is exactly what must not happen here, so the formula lives in this file.

use std::time::Duration;

use crate::config::limits;

/// `retry_strategy` of a row: one closed set from the flag (clap) through the admin API (serde)
/// to the row (SurrealQL strings from [`Strategy::as_str`]).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(try_from = "String", into = "&'static str")]
pub enum Strategy {
    /// `base × n` (the contract's default).
    #[default]
    Linear,
    /// `base × 2^(n−1)`.
    Exponential,
}

impl TryFrom<String> for Strategy {
    type Error = String;

    fn try_from(text: String) -> Result<Strategy, String> {
        Strategy::parse(&text)
            .ok_or_else(|| format!("retry_strategy must be linear or exponential, got {text:?}"))
    }
}

impl From<Strategy> for &'static str {
    fn from(strategy: Strategy) -> &'static str {
        strategy.as_str()
    }
}

impl Strategy {
    pub fn parse(text: &str) -> Option<Strategy> {
        match text {
            "linear" => Some(Strategy::Linear),
            "exponential" => Some(Strategy::Exponential),
            _ => None,
        }
    }

    /// The value a row holds.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Linear => "linear",
            Strategy::Exponential => "exponential",
        }
    }
}

/// Base and cap of the delay formula, per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: limits::RETRY_BASE.default,
            cap: limits::RETRY_CAP.default,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based), before jitter and `Retry-After`.
    pub fn nominal_delay(&self, strategy: Strategy, retry: u32) -> Duration {
        let retry = retry.max(1);
        let raw = match strategy {
            Strategy::Linear => self.base.saturating_mul(retry),
            Strategy::Exponential => {
                let factor = 2u32.checked_pow(retry - 1).unwrap_or(u32::MAX);
                self.base.saturating_mul(factor)
            }
        };
        raw.min(self.cap)
    }

    /// The delay actually used: nominal, jittered down by up to 20 % (`jitter` in `[0, 1)` picks
    /// where), and replaced by `retry_after` when that is longer, never above the cap.
    pub fn delay(
        &self,
        strategy: Strategy,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let nominal = self.nominal_delay(strategy, retry);
        let jittered = nominal.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(hint) if hint > jittered => hint.min(self.cap),
            _ => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

    #[test]
    fn linear_grows_by_base() {
        let delays: Vec<u64> = (1..=4)
            .map(|n| POLICY.nominal_delay(Strategy::Linear, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 3, 4]);
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let delays: Vec<u64> = (1..=10)
            .map(|n| POLICY.nominal_delay(Strategy::Exponential, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(
            POLICY.nominal_delay(Strategy::Exponential, 64),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn jitter_only_shortens_by_at_most_a_fifth() {
        let full = POLICY.delay(Strategy::Linear, 5, None, 0.0);
        let most = POLICY.delay(Strategy::Linear, 5, None, 0.999_999);
        assert_eq!(full, Duration::from_secs(5));
        assert!(most >= Duration::from_secs(4) && most < full, "{most:?}");
    }

    #[test]
    fn retry_after_wins_when_longer_but_not_past_the_cap() {
        let hint = Some(Duration::from_secs(30));
        assert_eq!(
            POLICY.delay(Strategy::Linear, 1, hint, 0.0),
            Duration::from_secs(30)
        );
        let short = Some(Duration::from_millis(10));
        assert_eq!(
            POLICY.delay(Strategy::Linear, 2, short, 0.0),
            Duration::from_secs(2)
        );
        let huge = Some(Duration::from_secs(86_400));
        assert_eq!(
            POLICY.delay(Strategy::Linear, 1, huge, 0.0),
            Duration::from_secs(300)
        );
    }
}
