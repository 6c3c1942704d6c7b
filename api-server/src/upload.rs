//! Reading an upload from a request, bounded in size, memory and time.
//!
//! [`plan`] looks at the headers only: the content type (415) and a declared length over
//! `MAX_FILE_MB` (413) are answered before a byte of the body is read, and the plan says
//! how much memory the upload may need, which the caller reserves from the
//! [`crate::budget::UploadBudget`]. [`read_upload`] then reads into a buffer of exactly
//! that size: multipart field chunks or the raw body stream are counted as they arrive
//! and the read stops with 413 one byte past the limit. Content is hashed on the way in
//! for idempotency. The caller bounds the read in time (`BODY_TIMEOUT_SECONDS`, 408).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use qwp_jobs::Filename;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::budget::Reservation;
use crate::errors::ApiError;
use crate::idempotency::hex;

/// Room for multipart boundaries and part headers on top of the file itself.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;

/// A body the server will not use is still read (and thrown away) for at most this long,
/// so a client that is still sending can read the answer instead of a connection reset.
const DRAIN_TIME_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Upload {
    pub filename: Filename,
    pub bytes: Bytes,
    pub content_sha256: String,
    /// The upload's share of the memory budget, given back once the input is stored.
    pub reservation: Reservation,
}

/// Which request shapes an endpoint takes.
#[derive(Clone, Copy, Debug)]
pub struct UploadForm {
    /// Name of the multipart field holding the file.
    pub field: &'static str,
    /// Whether a raw `application/octet-stream` body is accepted too.
    pub raw_body: bool,
}

impl UploadForm {
    fn accepted(&self) -> &'static str {
        if self.raw_body {
            "send multipart/form-data with the file in field `file`, or the raw bytes as \
             application/octet-stream with ?filename=NAME"
        } else {
            "send multipart/form-data with the file in field `inputFile`"
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyKind {
    Multipart,
    Raw,
}

/// What the headers say about an upload, checked before its body is touched.
#[derive(Clone, Copy, Debug)]
pub struct UploadPlan {
    form: UploadForm,
    kind: BodyKind,
    declared: Option<u64>,
    max_bytes: u64,
}

impl UploadPlan {
    /// The most file bytes this upload can put in memory: its declared length (which
    /// includes any multipart framing), else the limit.
    pub fn memory_bytes(&self) -> u64 {
        self.declared
            .map_or(self.max_bytes, |d| d.min(self.max_bytes))
    }

    fn limit_mb(&self) -> u64 {
        self.max_bytes / (1024 * 1024)
    }
}

/// Checks the content type and a declared length against `max_bytes`.
pub fn plan(headers: &HeaderMap, form: UploadForm, max_bytes: u64) -> Result<UploadPlan, ApiError> {
    let kind = body_kind(headers, form)?;
    let overhead = match kind {
        BodyKind::Multipart => MULTIPART_OVERHEAD_BYTES,
        BodyKind::Raw => 0,
    };
    let declared = declared_length(headers);
    if declared.is_some_and(|len| len > max_bytes + overhead) {
        return Err(ApiError::PayloadTooLarge {
            limit_mb: max_bytes / (1024 * 1024),
        });
    }
    Ok(UploadPlan {
        form,
        kind,
        declared,
        max_bytes,
    })
}

/// Reads the upload `plan` describes into memory covered by `reservation`;
/// `query_filename` names raw bodies.
pub async fn read_upload(
    state: &AppState,
    request: Request,
    plan: UploadPlan,
    reservation: Reservation,
    query_filename: Option<&str>,
) -> Result<Upload, ApiError> {
    match plan.kind {
        BodyKind::Raw => {
            let filename = Filename::sanitize(query_filename.unwrap_or_default());
            read_raw(state, request.into_body(), filename, plan, reservation).await
        }
        BodyKind::Multipart => read_multipart(state, request, plan, reservation).await,
    }
}

fn body_kind(headers: &HeaderMap, form: UploadForm) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return if form.raw_body {
            Ok(BodyKind::Raw)
        } else {
            Err(ApiError::UnsupportedMediaType {
                got: "(none)".into(),
                accepted: form.accepted(),
            })
        };
    };
    let raw = String::from_utf8_lossy(value.as_bytes());
    let essence = raw
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "multipart/form-data" => Ok(BodyKind::Multipart),
        "application/octet-stream" if form.raw_body => Ok(BodyKind::Raw),
        _ => Err(ApiError::UnsupportedMediaType {
            got: essence.chars().take(100).collect(),
            accepted: form.accepted(),
        }),
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Accumulates chunks up to the limit, hashing as it goes. The buffer is allocated once,
/// at the planned size, so it never grows (and never holds two copies while growing).
struct BoundedBuffer {
    bytes: BytesMut,
    hasher: Sha256,
    max_bytes: u64,
}

impl BoundedBuffer {
    fn new(plan: &UploadPlan) -> Self {
        BoundedBuffer {
            bytes: BytesMut::with_capacity(usize::try_from(plan.memory_bytes()).unwrap_or(0)),
            hasher: Sha256::new(),
            max_bytes: plan.max_bytes,
        }
    }

    /// `false` when the chunk would take the total past the limit (nothing is kept).
    fn push(&mut self, chunk: &[u8]) -> bool {
        if self.bytes.len() as u64 + chunk.len() as u64 > self.max_bytes {
            return false;
        }
        self.hasher.update(chunk);
        self.bytes.extend_from_slice(chunk);
        true
    }

    fn finish(self, filename: Filename, reservation: Reservation) -> Upload {
        Upload {
            filename,
            bytes: self.bytes.freeze(),
            content_sha256: hex(&self.hasher.finalize()),
            reservation,
        }
    }
}

async fn read_raw(
    state: &AppState,
    body: Body,
    filename: Filename,
    plan: UploadPlan,
    reservation: Reservation,
) -> Result<Upload, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buffer = BoundedBuffer::new(&plan);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BodyUnreadable)?;
        if !buffer.push(&chunk) {
            drop((buffer, reservation));
            drain(state, stream.map(|c| c.map(|b| b.len()).map_err(|_| ()))).await;
            return Err(ApiError::PayloadTooLarge {
                limit_mb: plan.limit_mb(),
            });
        }
    }
    Ok(buffer.finish(filename, reservation))
}

async fn read_multipart(
    state: &AppState,
    request: Request,
    plan: UploadPlan,
    reservation: Reservation,
) -> Result<Upload, ApiError> {
    let limit_mb = plan.limit_mb();
    let field_name = plan.form.field;
    let mut multipart = Multipart::from_request(request, &()).await.map_err(|_| {
        ApiError::MalformedMultipart(
            "the Content-Type header has no usable boundary parameter".into(),
        )
    })?;
    let multipart_error = |err: axum::extract::multipart::MultipartError| {
        if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit_mb }
        } else {
            ApiError::MalformedMultipart(err.body_text())
        }
    };
    loop {
        let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? else {
            return Err(ApiError::MissingField { field: field_name });
        };
        if field.name() != Some(field_name) {
            // Other form fields are skipped; the body limit bounds them too.
            while field.chunk().await.map_err(multipart_error)?.is_some() {}
            continue;
        }
        let filename = Filename::sanitize(field.file_name().unwrap_or_default());
        let mut buffer = BoundedBuffer::new(&plan);
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if !buffer.push(&chunk) {
                drop((field, buffer));
                drop(reservation);
                drain(state, rest_of(multipart)).await;
                return Err(ApiError::PayloadTooLarge { limit_mb });
            }
        }
        return Ok(buffer.finish(filename, reservation));
    }
}

/// The sizes of the chunks left in a multipart body, for [`drain`].
fn rest_of(multipart: Multipart) -> impl futures::Stream<Item = Result<usize, ()>> {
    futures::stream::unfold(multipart, |mut m| async move {
        match m.next_field().await {
            Ok(Some(mut f)) => {
                let mut n = 0;
                while let Ok(Some(c)) = f.chunk().await {
                    n += c.len();
                }
                drop(f);
                Some((Ok(n), m))
            }
            _ => None,
        }
    })
}

/// Throws away a body the server answers without using (401, 503, 415): read for at most
/// [`DRAIN_TIME_LIMIT`] so the client, still sending, can read the answer. A client that
/// sent `Expect: 100-continue` has not sent its body yet and never will: nothing to read.
pub async fn discard(state: &AppState, headers: &HeaderMap, body: Body) {
    let expects_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    drain(
        state,
        body.into_data_stream()
            .map(|c| c.map(|b| b.len()).map_err(|_| ())),
    )
    .await;
}

/// Reads and drops what the client is still sending, bounded in bytes and time. It
/// costs no memory beyond the connection's read buffer, and `MAX_CONNECTIONS` bounds how
/// many run at once.
async fn drain(state: &AppState, stream: impl futures::Stream<Item = Result<usize, ()>>) {
    let limit = state.settings.config.max_file_bytes() + MULTIPART_OVERHEAD_BYTES;
    let mut stream = std::pin::pin!(stream);
    let mut drained = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME_LIMIT, async {
        while let Some(Ok(n)) = stream.next().await {
            drained += n as u64;
            if drained > limit {
                break;
            }
        }
    })
    .await;
}
