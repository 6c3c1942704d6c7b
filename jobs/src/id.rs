use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a random (v4) UUID, rendered lowercase and hyphenated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(Uuid);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id {0:?} is not a UUID (expected e.g. 3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f)")]
pub struct JobIdError(pub String);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for JobId {
    type Err = JobIdError;

    /// Accepts only the canonical hyphenated form, so every id has exactly one S3 key.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = Uuid::try_parse(s).map_err(|_| JobIdError(truncate_for_error(s)))?;
        if parsed.hyphenated().to_string() != s.to_ascii_lowercase() || s.len() != 36 {
            return Err(JobIdError(truncate_for_error(s)));
        }
        Ok(JobId(parsed))
    }
}

impl TryFrom<String> for JobId {
    type Error = JobIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.to_string()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Hostile input may be huge; error messages quote only its start.
pub(crate) fn truncate_for_error(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_v4_and_round_trip() {
        let id = JobId::new();
        assert_eq!(id.as_uuid().get_version_num(), 4);
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
    }

    #[test]
    fn rejects_non_canonical_and_garbage() {
        for bad in [
            "",
            "abc-123",
            "3f2b8c1e9d4a4e7b8c1d2a3b4c5d6e7f",
            "{3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f}",
            "urn:uuid:3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f",
            "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f ",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn uppercase_is_accepted_and_normalised() {
        let id: JobId = "3F2B8C1E-9D4A-4E7B-8C1D-2A3B4C5D6E7F".parse().unwrap();
        assert_eq!(id.to_string(), "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f");
    }

    #[test]
    fn error_quotes_only_the_start_of_huge_input() {
        let huge = "x".repeat(100_000);
        let err = huge.parse::<JobId>().unwrap_err();
        assert!(err.to_string().len() < 200);
    }
}
