//! `Idempotency-Key`: the same key with the same upload returns the same job; the same
//! key with a different upload is a 409 (seed 003's conflict semantics).
//!
//! The mapping key → job lives in S3, so it holds across API server replicas: object
//! `_idempotency/{sha256(caller, key)}` in the output bucket (output keys are bare UUIDs,
//! so the prefix can never collide with a result). Each record is a small state machine:
//!
//! ```text
//!   (absent) ──claim: create, If-None-Match: *──▶ pending ──commit: If-Match──▶ committed
//!                                                    │                            │
//!                                   release: If-Match│ (the job was not created)   │ older than
//!                                                    ▼                            │ IDEMPOTENCY_TTL_HOURS
//!                                                 released ◀── treated as absent ─┘
//! ```
//!
//! - Only a committed record is ever answered with its job id, so a client is never
//!   handed an id of a job that may never exist. A same-key request that finds the key
//!   pending waits for it (up to [`PENDING_WAIT`]) and then answers 409 "in progress".
//! - A pending record older than `IDEMPOTENCY_CLAIM_TIMEOUT_SECONDS` belongs to a request
//!   that died between claiming and committing (every S3/SQS call of a live one is bounded
//!   by `STORE_TIMEOUT_SECONDS`). The next request with that key and upload takes it over
//!   with `If-Match` (so only one does) and finishes the same job id: it stores the input
//!   again and queues the job again (a duplicate message at worst, which at-least-once
//!   SQS delivery allows anyway).
//! - Every transition after the create is a conditional `PutObject` with `If-Match` on the
//!   ETag read, which S3 and LocalStack (4.13) carry out atomically, so of two requests
//!   racing for a key exactly one wins. (Conditional deletes are not implemented by
//!   LocalStack, so a released key is overwritten rather than deleted.)
//! - Records expire: the server honours the stored claim time (`claimed_at_ms`) against
//!   `IDEMPOTENCY_TTL_HOURS`; a bucket lifecycle rule on the prefix only reclaims storage.
//! - A 409 never names the other job: keys are guessable, job ids must not be learnt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use qwp_jobs::JobId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::errors::ApiError;
use crate::metrics::Metrics;
use crate::store::JobStore;
use qwp_runtime::aws_error::{http_status, is_not_found};

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_BYTES: usize = 255;
pub const PREFIX: &str = "_idempotency/";

/// How long a request waits for a same-key request that is still being accepted.
pub const PENDING_WAIT: Duration = Duration::from_secs(5);
const PENDING_POLL_INITIAL: Duration = Duration::from_millis(50);
const PENDING_POLL_MAX: Duration = Duration::from_millis(500);
/// Rounds of create / read / take over before giving up (only reached when many
/// requests fight over one key without end).
const MAX_ROUNDS: usize = 64;

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

    /// The record's object key. Keys are scoped to the caller (the token used), so two
    /// callers never share one; without authentication there is one scope.
    pub fn object_key(&self, caller: &Caller) -> String {
        let digest = if caller.0.is_empty() {
            Sha256::digest(self.0.as_bytes())
        } else {
            Sha256::digest(format!("{}\n{}", caller.0, self.0).as_bytes())
        };
        format!("{PREFIX}{}", hex(&digest))
    }
}

/// What was uploaded, to tell a retry from a different upload under the same key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub filename: String,
    pub content_sha256: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    /// Records written before states existed were kept only for accepted jobs.
    #[default]
    Committed,
    Released,
}

/// The stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub state: State,
    pub job_id: JobId,
    pub filename: String,
    pub content_sha256: String,
    /// When the key was claimed (ms since the epoch); older records fall back to the
    /// object's Last-Modified time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at_ms: Option<u64>,
}

impl Record {
    fn pending(job_id: JobId, upload: &Fingerprint, claimed_at_ms: u64) -> Self {
        Record {
            state: State::Pending,
            job_id,
            filename: upload.filename.clone(),
            content_sha256: upload.content_sha256.clone(),
            claimed_at_ms: Some(claimed_at_ms),
        }
    }

    fn with_state(&self, state: State) -> Self {
        Record {
            state,
            ..self.clone()
        }
    }

    fn same_upload(&self, upload: &Fingerprint) -> bool {
        self.filename == upload.filename && self.content_sha256 == upload.content_sha256
    }
}

/// What to do about an existing record; a pure function of the record, its age and the
/// new upload, so every case is unit-tested.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Replay(JobId),
    Conflict,
    /// Wait for the request that holds the key.
    Wait,
    /// The key is free (released or expired): claim it for a new job.
    Reclaim,
    /// Its request died while pending: finish the same job.
    Recover(JobId),
}

fn decide(
    record: &Record,
    age: Duration,
    upload: &Fingerprint,
    ttl: Duration,
    claim_timeout: Duration,
) -> Decision {
    match record.state {
        State::Released => Decision::Reclaim,
        State::Committed if age > ttl => Decision::Reclaim,
        _ if !record.same_upload(upload) => Decision::Conflict,
        State::Committed => Decision::Replay(record.job_id),
        State::Pending if age > claim_timeout => Decision::Recover(record.job_id),
        State::Pending => Decision::Wait,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key is ours: create (or finish) the job, then [`Idempotency::commit`] or
    /// [`Idempotency::release`].
    Owned(Ticket),
    /// The key was committed for this very upload: answer with that job.
    Replay(JobId),
}

/// Proof of holding a pending key: the record and its ETag.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    object_key: String,
    etag: String,
    record: Record,
    /// Taken over from a request that died: the job may already be stored or queued.
    pub recovered: bool,
}

impl Ticket {
    pub fn job_id(&self) -> JobId {
        self.record.job_id
    }
}

#[derive(Clone)]
pub struct Idempotency {
    store: JobStore,
    metrics: std::sync::Arc<Metrics>,
    ttl: Duration,
    claim_timeout: Duration,
}

enum Condition<'a> {
    Absent,
    Matches(&'a str),
}

struct Found {
    record: Record,
    etag: String,
    age: Duration,
}

impl Idempotency {
    pub fn new(
        store: JobStore,
        metrics: std::sync::Arc<Metrics>,
        ttl: Duration,
        claim_timeout: Duration,
    ) -> Self {
        Idempotency {
            store,
            metrics,
            ttl,
            claim_timeout,
        }
    }

    /// Claims `key` for `upload`, or finds who has it.
    pub async fn claim(
        &self,
        caller: &Caller,
        key: &IdempotencyKey,
        upload: &Fingerprint,
    ) -> Result<Claim, ApiError> {
        let object_key = key.object_key(caller);
        let give_up_waiting = tokio::time::Instant::now() + PENDING_WAIT;
        let mut delay = PENDING_POLL_INITIAL;
        let mut waited = false;
        let mut try_create = true;
        for _ in 0..MAX_ROUNDS {
            if try_create {
                let fresh = Record::pending(JobId::new(), upload, now_ms());
                if let Some(ticket) = self.write(&object_key, fresh, Condition::Absent).await? {
                    self.metrics.idempotency_outcome("created");
                    return Ok(Claim::Owned(ticket));
                }
            }
            try_create = true;
            // Gone between the create and the read (released and cleaned up): create again.
            let Some(found) = self.read(&object_key).await? else {
                continue;
            };
            let taken_over = match decide(
                &found.record,
                found.age,
                upload,
                self.ttl,
                self.claim_timeout,
            ) {
                Decision::Replay(job_id) => {
                    self.metrics
                        .idempotency_outcome(if waited { "waited" } else { "replayed" });
                    return Ok(Claim::Replay(job_id));
                }
                Decision::Conflict => {
                    self.metrics.idempotency_outcome("conflict");
                    return Err(ApiError::IdempotencyConflict);
                }
                Decision::Wait => {
                    if tokio::time::Instant::now() + delay > give_up_waiting {
                        self.metrics.idempotency_outcome("in_progress");
                        return Err(ApiError::IdempotencyInProgress);
                    }
                    if !waited {
                        self.metrics.idempotency_outcome("pending_wait");
                    }
                    waited = true;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(PENDING_POLL_MAX);
                    try_create = false;
                    continue;
                }
                Decision::Reclaim => {
                    let fresh = Record::pending(JobId::new(), upload, now_ms());
                    (fresh, false)
                }
                Decision::Recover(job_id) => {
                    let recovered = Record::pending(job_id, upload, now_ms());
                    (recovered, true)
                }
            };
            let (record, recovered) = taken_over;
            let job_id = record.job_id;
            if let Some(mut ticket) = self
                .write(&object_key, record, Condition::Matches(&found.etag))
                .await?
            {
                ticket.recovered = recovered;
                if recovered {
                    tracing::warn!(%job_id, "taking over an idempotency key whose request died while pending");
                    self.metrics.idempotency_outcome("recovered");
                } else {
                    self.metrics.idempotency_outcome("expired");
                }
                return Ok(Claim::Owned(ticket));
            }
            // Someone else changed the record first: look again.
            try_create = false;
        }
        tracing::error!(
            object_key,
            "gave up on an idempotency key that keeps changing"
        );
        Err(ApiError::StorageUnavailable)
    }

    /// Marks the job as created: from now on the key answers with it. The job is queued
    /// whatever happens here, so a failure is logged, not returned: the record stays
    /// pending and the next request with the key recovers it.
    pub async fn commit(&self, ticket: &Ticket) {
        let committed = ticket.record.with_state(State::Committed);
        let job_id = ticket.job_id();
        match self
            .write(
                &ticket.object_key,
                committed,
                Condition::Matches(&ticket.etag),
            )
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(%job_id, "idempotency key was taken over before its commit")
            }
            Err(_) => {
                tracing::error!(%job_id, "idempotency key left pending; it will be recovered")
            }
        }
    }

    /// Frees the key after the job could not be created, so a retry can succeed.
    pub async fn release(&self, ticket: &Ticket) {
        let released = ticket.record.with_state(State::Released);
        if let Ok(None) = self
            .write(
                &ticket.object_key,
                released,
                Condition::Matches(&ticket.etag),
            )
            .await
        {
            tracing::warn!(job_id = %ticket.job_id(), "idempotency key was taken over before its release");
        }
    }

    /// A conditional put: `Some(ticket)` when it took effect, `None` when the condition
    /// failed (412, or 409 for a concurrent conditional write, or 404 when an `If-Match`
    /// record is gone).
    async fn write(
        &self,
        object_key: &str,
        record: Record,
        condition: Condition<'_>,
    ) -> Result<Option<Ticket>, ApiError> {
        let body = serde_json::to_vec(&record).expect("record serialises");
        let request = self
            .store
            .s3()
            .put_object()
            .bucket(self.store.output_bucket())
            .key(object_key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let request = match condition {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        };
        match request.send().await {
            Ok(out) => Ok(Some(Ticket {
                object_key: object_key.to_string(),
                etag: out.e_tag.unwrap_or_default(),
                record,
                recovered: false,
            })),
            Err(err) if matches!(http_status(&err), Some(412 | 409)) || is_not_found(&err) => {
                Ok(None)
            }
            Err(err) => {
                tracing::error!(error = %aws_sdk_s3::error::DisplayErrorContext(err), "idempotency record write failed");
                Err(ApiError::StorageUnavailable)
            }
        }
    }

    async fn read(&self, object_key: &str) -> Result<Option<Found>, ApiError> {
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
        let etag = object.e_tag.clone().unwrap_or_default();
        let modified_ms = object
            .last_modified
            .and_then(|t| u64::try_from(t.to_millis().ok()?).ok());
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "idempotency record read failed");
                ApiError::StorageUnavailable
            })?
            .into_bytes();
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
            tracing::error!(error = %e, object_key, "idempotency record is malformed");
            ApiError::StorageUnavailable
        })?;
        let claimed_ms = record.claimed_at_ms.or(modified_ms).unwrap_or(0);
        let age = Duration::from_millis(now_ms().saturating_sub(claimed_ms));
        Ok(Some(Found { record, etag, age }))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
    fn object_key_is_a_fixed_width_hash_under_the_prefix_scoped_to_the_caller() {
        let key = IdempotencyKey::parse(b"../../etc/passwd").unwrap();
        let object = key.object_key(&Caller::default());
        assert!(object.starts_with(PREFIX));
        assert_eq!(object.len(), PREFIX.len() + 64);
        assert!(
            object[PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit())
        );
        let alice = key.object_key(&Caller("a1".into()));
        let bob = key.object_key(&Caller("b2".into()));
        assert_ne!(alice, bob);
        assert_ne!(alice, object);
    }

    const TTL: Duration = Duration::from_secs(24 * 3600);
    const CLAIM: Duration = Duration::from_secs(60);

    fn upload(content: &str) -> Fingerprint {
        Fingerprint {
            filename: "a.jpg".into(),
            content_sha256: content.into(),
        }
    }

    fn record(state: State, content: &str) -> Record {
        Record {
            state,
            ..Record::pending(JobId::new(), &upload(content), 0)
        }
    }

    #[test]
    fn decisions_cover_every_state() {
        let s = Duration::from_secs;
        let same = upload("x");
        let other = upload("y");

        let committed = record(State::Committed, "x");
        let id = committed.job_id;
        assert_eq!(
            decide(&committed, s(1), &same, TTL, CLAIM),
            Decision::Replay(id)
        );
        assert_eq!(
            decide(&committed, s(1), &other, TTL, CLAIM),
            Decision::Conflict
        );
        // Expired: free, whatever the content.
        assert_eq!(
            decide(&committed, TTL + s(1), &same, TTL, CLAIM),
            Decision::Reclaim
        );
        assert_eq!(
            decide(&committed, TTL + s(1), &other, TTL, CLAIM),
            Decision::Reclaim
        );

        let pending = record(State::Pending, "x");
        let id = pending.job_id;
        assert_eq!(decide(&pending, s(1), &same, TTL, CLAIM), Decision::Wait);
        assert_eq!(
            decide(&pending, s(1), &other, TTL, CLAIM),
            Decision::Conflict
        );
        assert_eq!(
            decide(&pending, CLAIM + s(1), &same, TTL, CLAIM),
            Decision::Recover(id)
        );
        assert_eq!(
            decide(&pending, CLAIM + s(1), &other, TTL, CLAIM),
            Decision::Conflict
        );

        let released = record(State::Released, "x");
        assert_eq!(
            decide(&released, s(1), &same, TTL, CLAIM),
            Decision::Reclaim
        );
        assert_eq!(
            decide(&released, s(1), &other, TTL, CLAIM),
            Decision::Reclaim
        );
    }

    #[test]
    fn records_of_the_stateless_format_read_as_committed() {
        let old = r#"{"job_id":"3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f","filename":"a","content_sha256":"x"}"#;
        let record: Record = serde_json::from_str(old).unwrap();
        assert_eq!(record.state, State::Committed);
        assert_eq!(record.claimed_at_ms, None);
        let json = serde_json::to_value(record.with_state(State::Pending)).unwrap();
        assert_eq!(json["state"], "pending");
    }
}
