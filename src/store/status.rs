//! A job row's `status`, as one type. The four strings are a contract that Sp00ky's client, the
//! schema and operators' queries share, so they are spelled in one place only
//! ([`JobStatus::as_str`]); the rest of the crate compares and counts with the enum.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life: `pending` until claimed, `processing` while a runner holds its
/// lease, then `success` or `failed` for good (an operator may put a failed job back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Processing,
    Success,
    Failed,
}

impl JobStatus {
    /// In the order a job meets them, which is also the order the dashboard shows them.
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Pending,
        JobStatus::Processing,
        JobStatus::Success,
        JobStatus::Failed,
    ];

    /// The contract's spelling, as stored in rows and bound into statements.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Success => "success",
            JobStatus::Failed => "failed",
        }
    }

    /// `success` and `failed` are final: only they may be deleted, and only they count as done.
    pub const fn is_final(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Failed)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is none of the four statuses. Parsing is exact (no case folding): rows and
/// requests spell statuses the contract's way, and anything else is a mistake worth reporting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job status (pending, processing, success or failed)")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(text: &str) -> Result<JobStatus, UnknownStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownStatus(text.to_string()))
    }
}

/// The two final statuses, the only ones whose rows may be deleted in bulk: a type of its own so
/// that no caller can ask to delete pending or running jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Finished {
    Success,
    Failed,
}

impl Finished {
    pub fn as_str(self) -> &'static str {
        JobStatus::from(self).as_str()
    }
}

impl From<Finished> for JobStatus {
    fn from(finished: Finished) -> JobStatus {
        match finished {
            Finished::Success => JobStatus::Success,
            Finished::Failed => JobStatus::Failed,
        }
    }
}

impl TryFrom<JobStatus> for Finished {
    type Error = JobStatus;

    /// Gives the status back when it is not final.
    fn try_from(status: JobStatus) -> Result<Finished, JobStatus> {
        match status {
            JobStatus::Success => Ok(Finished::Success),
            JobStatus::Failed => Ok(Finished::Failed),
            other => Err(other),
        }
    }
}

/// Rows per status of one table. Named fields rather than an array, so no reader depends on an
/// order, and serde writes the dashboard's object of counts (one key per status) by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub processing: u64,
    pub success: u64,
    pub failed: u64,
}

impl StatusCounts {
    pub fn get(&self, status: JobStatus) -> u64 {
        match status {
            JobStatus::Pending => self.pending,
            JobStatus::Processing => self.processing,
            JobStatus::Success => self.success,
            JobStatus::Failed => self.failed,
        }
    }

    /// Adds `n` rows of `status` (a `GROUP BY status` answer may in principle name one twice).
    pub fn add(&mut self, status: JobStatus, n: u64) {
        let slot = match status {
            JobStatus::Pending => &mut self.pending,
            JobStatus::Processing => &mut self.processing,
            JobStatus::Success => &mut self.success,
            JobStatus::Failed => &mut self.failed,
        };
        *slot = slot.saturating_add(n);
    }

    /// Each status with its count, in [`JobStatus::ALL`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (JobStatus, u64)> + '_ {
        JobStatus::ALL
            .into_iter()
            .map(|status| (status, self.get(status)))
    }

    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_own_spelling() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.as_str().into())
            );
            assert_eq!(
                serde_json::from_value::<JobStatus>(status.as_str().into()).unwrap(),
                status
            );
            let name = clap::ValueEnum::to_possible_value(&status).unwrap();
            assert_eq!(
                name.get_name(),
                status.as_str(),
                "the CLI spells it the same"
            );
        }
    }

    #[test]
    fn other_spellings_are_refused() {
        for text in ["", "Pending", "PENDING", " pending", "done", "retry"] {
            assert_eq!(
                text.parse::<JobStatus>(),
                Err(UnknownStatus(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn finished_is_exactly_the_final_statuses() {
        for status in JobStatus::ALL {
            let finished = Finished::try_from(status);
            assert_eq!(finished.is_ok(), status.is_final(), "{status}");
            if let Ok(finished) = finished {
                assert_eq!(JobStatus::from(finished), status);
                assert_eq!(finished.as_str(), status.as_str());
            }
        }
    }

    #[test]
    fn counts_serialise_by_name() {
        let mut counts = StatusCounts::default();
        counts.add(JobStatus::Pending, 3);
        counts.add(JobStatus::Failed, 1);
        counts.add(JobStatus::Failed, 1);
        assert_eq!(counts.get(JobStatus::Failed), 2);
        assert_eq!(counts.total(), 5);
        // Each field is named by its status's own spelling.
        let expected: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(status, n)| (status.as_str().to_string(), serde_json::Value::from(n)))
            .collect();
        assert_eq!(
            serde_json::to_value(counts).unwrap(),
            serde_json::Value::Object(expected)
        );
        assert_eq!(serde_json::to_value(counts).unwrap()["pending"], 3);
    }
}
