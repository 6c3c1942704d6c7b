//! `Idempotency-Key`: the same key with the same upload returns the same job; the same
//! key with a different upload is a 409 (seed 003's conflict semantics).
//!
//! The mapping key → job lives in S3, so it holds across API server replicas: object
//! `_idempotency/{sha256(key)}` in the output bucket, holding the job id and a
//! fingerprint of the upload. It is created with `If-None-Match: *`, a conditional put
//! that S3 (and LocalStack) performs atomically, so of two concurrent requests with one
//! key exactly one creates the job. Output keys are bare UUIDs, so the `_idempotency/`
//! prefix can never collide with a result.

use aws_sdk_s3::primitives::ByteStream;
use qwp_jobs::JobId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::errors::ApiError;
use crate::store::JobStore;
use qwp_runtime::aws_error::{http_status, is_not_found};

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_BYTES: usize = 255;
const PREFIX: &str = "_idempotency/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Printable ASCII, 1 to 255 bytes (like the IETF draft's examples: UUIDs, hashes).
    pub fn parse(raw: &[u8]) -> Result<Self, ApiError> {
        if raw.is_empty() {
            return Err(ApiError::InvalidIdempotencyKey("it is empty"));
        }
        if raw.len() > MAX_KEY_BYTES {
            return Err(ApiError::InvalidIdempotencyKey(
                "it is longer than 255 bytes",
            ));
        }
        if !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
            return Err(ApiError::InvalidIdempotencyKey(
                "only printable ASCII is allowed",
            ));
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    fn object_key(&self) -> String {
        format!("{PREFIX}{}", hex(&Sha256::digest(self.0.as_bytes())))
    }
}

/// What a key maps to: the job and what was uploaded (name and content hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub job_id: JobId,
    pub filename: String,
    pub content_sha256: String,
}

impl Record {
    fn same_upload(&self, other: &Record) -> bool {
        self.filename == other.filename && self.content_sha256 == other.content_sha256
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: create the job.
    New,
    /// The key was used for this very upload: answer with that job.
    Replay(JobId),
}

#[derive(Clone)]
pub struct Idempotency {
    store: JobStore,
}

impl Idempotency {
    pub fn new(store: JobStore) -> Self {
        Idempotency { store }
    }

    /// Claims `key` for `record`, or finds who has it.
    pub async fn claim(&self, key: &IdempotencyKey, record: &Record) -> Result<Claim, ApiError> {
        let object_key = key.object_key();
        let body = serde_json::to_vec(record).expect("record serialises");
        // A record can vanish between a failed create and our read (its request failed
        // and released it); then the key is free again, so try once more.
        for _ in 0..3 {
            let created = self
                .store
                .s3()
                .put_object()
                .bucket(self.store.output_bucket())
                .key(&object_key)
                .if_none_match("*")
                .content_type("application/json")
                .body(ByteStream::from(body.clone()))
                .send()
                .await;
            match created {
                Ok(_) => return Ok(Claim::New),
                // 412: it exists. 409: a concurrent conditional write is in progress.
                Err(err) if matches!(http_status(&err), Some(412 | 409)) => {}
                Err(err) => {
                    tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "idempotency record create failed");
                    return Err(ApiError::StorageUnavailable);
                }
            }
            match self.read(&object_key).await? {
                Some(existing) if existing.same_upload(record) => {
                    return Ok(Claim::Replay(existing.job_id));
                }
                Some(existing) => {
                    return Err(ApiError::IdempotencyConflict {
                        existing: existing.job_id,
                    });
                }
                None => continue,
            }
        }
        Err(ApiError::StorageUnavailable)
    }

    /// Frees the key after the job could not be created, so a retry can succeed.
    pub async fn release(&self, key: &IdempotencyKey) {
        let deleted = self
            .store
            .s3()
            .delete_object()
            .bucket(self.store.output_bucket())
            .key(key.object_key())
            .send()
            .await;
        if let Err(err) = deleted {
            tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "releasing idempotency key failed");
        }
    }

    async fn read(&self, object_key: &str) -> Result<Option<Record>, ApiError> {
        let got = self
            .store
            .s3()
            .get_object()
            .bucket(self.store.output_bucket())
            .key(object_key)
            .send()
            .await;
        let object = match got {
            Ok(object) => object,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => {
                tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "idempotency record read failed");
                return Err(ApiError::StorageUnavailable);
            }
        };
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "idempotency record read failed");
                ApiError::StorageUnavailable
            })?
            .into_bytes();
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            tracing::error!(error = %e, object_key, "idempotency record is malformed");
            ApiError::StorageUnavailable
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation() {
        assert!(IdempotencyKey::parse(b"order-42").is_ok());
        assert!(IdempotencyKey::parse(b"").is_err());
        assert!(IdempotencyKey::parse(&[b'a'; 256]).is_err());
        assert!(IdempotencyKey::parse(b"a\nb").is_err());
        assert!(IdempotencyKey::parse("ключ".as_bytes()).is_err());
    }

    #[test]
    fn object_key_is_a_fixed_width_hash_under_the_prefix() {
        let key = IdempotencyKey::parse(b"../../etc/passwd").unwrap();
        let object = key.object_key();
        assert!(object.starts_with(PREFIX));
        assert_eq!(object.len(), PREFIX.len() + 64);
        assert!(
            object[PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
    }
}
