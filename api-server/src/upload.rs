//! Reading an upload from a request, bounded: multipart field chunks or the raw body
//! stream are counted as they arrive and the read stops with 413 one byte past
//! `MAX_FILE_MB`, so memory per request never exceeds the limit. Content is hashed on
//! the way in for idempotency.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use qwp_jobs::Filename;
use sha2::{Digest, Sha256};

use crate::errors::ApiError;
use crate::idempotency::hex;

/// Room for multipart boundaries and part headers on top of the file itself.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 64 * 1024;

/// After a 413 the server reads (and discards) at most this much more, so a client
/// still sending can read the answer instead of a connection reset.
const DRAIN_LIMIT_BYTES: u64 = 4 * 1024 * 1024;
const DRAIN_TIME_LIMIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Upload {
    pub filename: Filename,
    pub bytes: Bytes,
    pub content_sha256: String,
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

enum BodyKind {
    Multipart,
    Raw,
}

/// Reads the upload described by `form`; `query_filename` names raw bodies.
pub async fn read_upload(
    request: Request,
    form: UploadForm,
    query_filename: Option<&str>,
    max_bytes: u64,
) -> Result<Upload, ApiError> {
    let limit_mb = max_bytes / (1024 * 1024);
    let kind = body_kind(request.headers(), form)?;
    // A declared length over the limit is refused before reading a byte.
    let overhead = match kind {
        BodyKind::Multipart => MULTIPART_OVERHEAD_BYTES,
        BodyKind::Raw => 0,
    };
    if declared_length(request.headers()).is_some_and(|len| len > max_bytes + overhead) {
        return Err(ApiError::PayloadTooLarge { limit_mb });
    }
    match kind {
        BodyKind::Raw => {
            let filename = Filename::sanitize(query_filename.unwrap_or_default());
            read_raw(request.into_body(), filename, max_bytes, limit_mb).await
        }
        BodyKind::Multipart => read_multipart(request, form.field, max_bytes, limit_mb).await,
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

/// Accumulates chunks up to the limit, hashing as it goes.
struct BoundedBuffer {
    bytes: BytesMut,
    hasher: Sha256,
    max_bytes: u64,
}

impl BoundedBuffer {
    fn new(max_bytes: u64) -> Self {
        BoundedBuffer {
            bytes: BytesMut::new(),
            hasher: Sha256::new(),
            max_bytes,
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

    fn finish(self, filename: Filename) -> Upload {
        Upload {
            filename,
            bytes: self.bytes.freeze(),
            content_sha256: hex(&self.hasher.finalize()),
        }
    }
}

async fn read_raw(
    body: Body,
    filename: Filename,
    max_bytes: u64,
    limit_mb: u64,
) -> Result<Upload, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buffer = BoundedBuffer::new(max_bytes);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BodyUnreadable)?;
        if !buffer.push(&chunk) {
            drain(stream.map(|c| c.map(|b| b.len()).map_err(|_| ()))).await;
            return Err(ApiError::PayloadTooLarge { limit_mb });
        }
    }
    Ok(buffer.finish(filename))
}

async fn read_multipart(
    request: Request,
    field_name: &'static str,
    max_bytes: u64,
    limit_mb: u64,
) -> Result<Upload, ApiError> {
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
        let mut buffer = BoundedBuffer::new(max_bytes);
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            if !buffer.push(&chunk) {
                drop(field);
                drain(futures::stream::unfold(multipart, |mut m| async move {
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
                }))
                .await;
                return Err(ApiError::PayloadTooLarge { limit_mb });
            }
        }
        return Ok(buffer.finish(filename));
    }
}

/// Discards what the client is still sending, bounded in bytes and time.
async fn drain(stream: impl futures::Stream<Item = Result<usize, ()>>) {
    let mut stream = std::pin::pin!(stream);
    let mut drained = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME_LIMIT, async {
        while let Some(Ok(n)) = stream.next().await {
            drained += n as u64;
            if drained > DRAIN_LIMIT_BYTES {
                break;
            }
        }
    })
    .await;
}
