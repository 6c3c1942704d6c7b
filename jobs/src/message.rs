//! The SQS message body codec: `{job_id}_{filename}`, which is also the S3 input key.

use crate::filename::{Filename, FilenameError};
use crate::id::{JobId, JobIdError, truncate_for_error};
use crate::keys;

/// Bodies longer than this cannot be ours (36-byte id + `_` + bounded filename).
const MAX_BODY_BYTES: usize = 36 + 1 + crate::filename::MAX_FILENAME_BYTES;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobMessage {
    pub job_id: JobId,
    pub filename: Filename,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message body is not UTF-8")]
    NotUtf8,
    #[error("message body is {0} bytes; a job message is at most {MAX_BODY_BYTES}")]
    TooLong(usize),
    #[error("message body {0:?} has no `_` between job id and filename")]
    NoSeparator(String),
    #[error("message body has a bad job id: {0}")]
    BadJobId(#[from] JobIdError),
    #[error("message body has a bad filename: {0}")]
    BadFilename(#[from] FilenameError),
}

impl JobMessage {
    pub fn new(job_id: JobId, filename: Filename) -> Self {
        JobMessage { job_id, filename }
    }

    /// The SQS body; identical to the S3 input key.
    pub fn encode(&self) -> String {
        self.input_key()
    }

    pub fn input_key(&self) -> String {
        keys::input_key(&self.job_id, &self.filename)
    }

    pub fn output_key(&self) -> String {
        keys::output_key(&self.job_id)
    }

    /// Total: every input gives a message or a typed error, never a panic.
    pub fn decode_bytes(body: &[u8]) -> Result<Self, MessageError> {
        let body = std::str::from_utf8(body).map_err(|_| MessageError::NotUtf8)?;
        Self::decode(body)
    }

    pub fn decode(body: &str) -> Result<Self, MessageError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(MessageError::TooLong(body.len()));
        }
        // The id is fixed-width and has no `_`, so the first `_` is the separator;
        // filenames may contain further underscores.
        let (id, name) = body
            .split_once('_')
            .ok_or_else(|| MessageError::NoSeparator(truncate_for_error(body)))?;
        Ok(JobMessage {
            job_id: id.parse()?,
            filename: Filename::parse(name)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f";

    #[test]
    fn round_trips_and_keeps_underscores_in_filename() {
        let msg = JobMessage::decode(&format!("{ID}_my_face_1.jpg")).unwrap();
        assert_eq!(msg.job_id.to_string(), ID);
        assert_eq!(msg.filename.as_str(), "my_face_1.jpg");
        assert_eq!(msg.encode(), format!("{ID}_my_face_1.jpg"));
        assert_eq!(msg.input_key(), msg.encode());
        assert_eq!(msg.output_key(), ID);
        assert_eq!(JobMessage::decode(&msg.encode()).unwrap(), msg);
    }

    #[test]
    fn each_hostile_class_is_a_typed_error() {
        type IsExpected = fn(&MessageError) -> bool;
        let cases: Vec<(Vec<u8>, IsExpected)> = vec![
            (b"no-separator-here".to_vec(), |e| {
                matches!(e, MessageError::NoSeparator(_))
            }),
            (b"".to_vec(), |e| matches!(e, MessageError::NoSeparator(_))),
            (b"not-a-uuid_file.jpg".to_vec(), |e| {
                matches!(e, MessageError::BadJobId(_))
            }),
            (b"_file.jpg".to_vec(), |e| {
                matches!(e, MessageError::BadJobId(_))
            }),
            (format!("{ID}_").into_bytes(), |e| {
                matches!(e, MessageError::BadFilename(FilenameError::Empty))
            }),
            (format!("{ID}_../../x").into_bytes(), |e| {
                matches!(
                    e,
                    MessageError::BadFilename(FilenameError::PathSeparator(_))
                )
            }),
            (format!("{ID}_..").into_bytes(), |e| {
                matches!(e, MessageError::BadFilename(FilenameError::DotName(_)))
            }),
            (format!("{ID}_a\tb").into_bytes(), |e| {
                matches!(
                    e,
                    MessageError::BadFilename(FilenameError::ControlCharacter(_))
                )
            }),
            (format!("{ID}_{}", "x".repeat(5000)).into_bytes(), |e| {
                matches!(e, MessageError::TooLong(_))
            }),
            (vec![0xff, 0xfe, b'_', b'a'], |e| {
                matches!(e, MessageError::NotUtf8)
            }),
        ];
        for (body, expected) in cases {
            let err = JobMessage::decode_bytes(&body).unwrap_err();
            assert!(
                expected(&err),
                "{:?} gave {err:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every byte pattern up to length 3 plus random-ish longer ones.
        let mut seed: u64 = 0x9e3779b97f4a7c15;
        for len in 0..300 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = JobMessage::decode_bytes(&body);
            let mut with_id = format!("{ID}_").into_bytes();
            with_id.extend_from_slice(&body);
            let _ = JobMessage::decode_bytes(&with_id);
        }
    }
}
