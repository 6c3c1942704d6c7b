//! The result document a worker stores under the job id (seed 001):
//! `{"job_id": "...", "status": "done", "result": ...}` or
//! `{"job_id": "...", "status": "failed", "error": "..."}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::JobId;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: JobId,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Done { result: Value },
    Failed { error: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result document is not valid JSON of the expected shape: {0}")]
    Malformed(#[from] serde_json::Error),
}

impl JobResult {
    pub fn done(job_id: JobId, result: impl Into<Value>) -> Self {
        JobResult {
            job_id,
            outcome: Outcome::Done {
                result: result.into(),
            },
        }
    }

    pub fn failed(job_id: JobId, error: impl Into<String>) -> Self {
        JobResult {
            job_id,
            outcome: Outcome::Failed {
                error: error.into(),
            },
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.outcome, Outcome::Done { .. })
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JobResult always serialises")
    }

    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self, ResultError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f";

    #[test]
    fn done_document_matches_the_seed_shape() {
        let doc = JobResult::done(ID.parse().unwrap(), "Person Name");
        let value: Value = serde_json::from_slice(&doc.to_json_bytes()).unwrap();
        assert_eq!(
            value,
            json!({"job_id": ID, "status": "done", "result": "Person Name"})
        );
        assert_eq!(
            JobResult::from_json_bytes(&doc.to_json_bytes()).unwrap(),
            doc
        );
    }

    #[test]
    fn failed_document_matches_the_seed_shape() {
        let doc = JobResult::failed(ID.parse().unwrap(), "input missing");
        let value: Value = serde_json::from_slice(&doc.to_json_bytes()).unwrap();
        assert_eq!(
            value,
            json!({"job_id": ID, "status": "failed", "error": "input missing"})
        );
        assert!(!doc.is_done());
    }

    #[test]
    fn malformed_documents_are_errors() {
        for bad in [
            &b""[..],
            b"{}",
            b"[1,2]",
            b"\xff\xfe",
            br#"{"job_id":"nope","status":"done","result":1}"#,
            br#"{"job_id":"3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f","status":"weird"}"#,
            br#"{"job_id":"3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f","status":"failed"}"#,
        ] {
            assert!(JobResult::from_json_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
