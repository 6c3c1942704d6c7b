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

    /// The job id at the start of a body that may be malformed otherwise (a bad filename,
    /// too long): the worker can still store a `failed` result its client will read.
    pub fn job_id_in(body: &str) -> Option<JobId> {
        body.split_once('_')?.0.parse().ok()
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
    use proptest::prelude::*;

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

    /// What `decode_bytes` must answer for `body`, derived from the format's definition
    /// rather than from the decoder: the oracle the exhaustive and property tests check.
    fn expected(body: &[u8]) -> Result<JobMessage, MessageError> {
        let Ok(text) = std::str::from_utf8(body) else {
            return Err(MessageError::NotUtf8);
        };
        if text.len() > MAX_BODY_BYTES {
            return Err(MessageError::TooLong(text.len()));
        }
        let Some(separator) = text.find('_') else {
            return Err(MessageError::NoSeparator(truncate_for_error(text)));
        };
        let (id, name) = (&text[..separator], &text[separator + 1..]);
        Ok(JobMessage {
            job_id: id.parse()?,
            filename: Filename::parse(name)?,
        })
    }

    /// Decoding is total and agrees with the oracle; a decoded message encodes to the body
    /// (up to the id's case, which decoding normalises) and decodes back to itself.
    fn check(body: &[u8]) -> Result<JobMessage, MessageError> {
        let decoded = JobMessage::decode_bytes(body);
        assert_eq!(
            decoded,
            expected(body),
            "{:?}",
            String::from_utf8_lossy(body)
        );
        if let Ok(msg) = &decoded {
            let encoded = msg.encode();
            assert!(
                encoded.as_bytes().eq_ignore_ascii_case(body)
                    && encoded.as_bytes()[37..] == body[37..],
                "{msg:?} encodes to {encoded:?}, not to the body it came from"
            );
            assert_eq!(JobMessage::decode(&encoded).as_ref(), Ok(msg));
        }
        decoded
    }

    /// Checks `body` alone and after a valid `{id}_` prefix; returns whether the prefixed
    /// one decoded. Alone, no body this short can hold a 36-byte id.
    fn check_alone_and_after_an_id(body: &[u8], prefix: &mut Vec<u8>) -> bool {
        assert!(check(body).is_err(), "{body:?} decoded");
        let id_len = prefix.len();
        prefix.extend_from_slice(body);
        let decoded = check(prefix).is_ok();
        prefix.truncate(id_len);
        decoded
    }

    #[test]
    fn a_malformed_body_may_still_name_its_job() {
        let id: JobId = ID.parse().unwrap();
        assert_eq!(JobMessage::job_id_in(&format!("{ID}_../../x")), Some(id));
        assert_eq!(
            JobMessage::job_id_in(&format!("{ID}_{}", "x".repeat(5000))),
            Some(id)
        );
        for body in ["garbage", "not-a-uuid_file.jpg", "", ID] {
            assert_eq!(JobMessage::job_id_in(body), None, "{body:?}");
        }
    }

    /// Every byte string of length 0..=2 (65 793 of them), alone and as the filename after a
    /// valid id. (All 16.8 M of length 3 take over a minute in the dev profile; longer input
    /// is covered by the property tests below.)
    #[test]
    fn decodes_every_byte_pattern_up_to_two_bytes() {
        let mut prefix = format!("{ID}_").into_bytes();
        let mut decoded = 0;
        for len in 0..=2u32 {
            for pattern in 0..(1u32 << (8 * len)) {
                let body: Vec<u8> = (0..len).map(|i| (pattern >> (8 * i)) as u8).collect();
                decoded += usize::from(check_alone_and_after_an_id(&body, &mut prefix));
            }
        }
        // Accepted filenames, counted from the rules: 92 printable ASCII characters other than
        // `/`, `\\` and `.`; 93 × 93 pairs of those or `.`, less `..`; and the 1 920 two-byte
        // UTF-8 characters less the 32 C1 controls.
        assert_eq!(decoded, 92 + (93 * 93 - 1) + (1_920 - 32));
    }

    /// Every string of length 3 and 4 over one byte of each class the codec tells apart:
    /// separators, path separators, dots, control bytes, ASCII, every UTF-8 lead and
    /// continuation byte shape and bytes that never occur in UTF-8.
    #[test]
    fn decodes_every_three_and_four_byte_string_over_each_byte_class() {
        const CLASSES: [u8; 22] = [
            b'_', b'/', b'\\', b'.', b'a', b'Z', b'0', b'-', b' ', 0x00, b'\t', 0x1f, 0x7f, 0x80,
            0xbf, 0xc2, 0xc3, 0xe2, 0xf0, 0xf4, 0xc0, 0xff,
        ];
        let mut prefix = format!("{ID}_").into_bytes();
        let mut decoded = 0;
        for len in 3..=4u32 {
            for pattern in 0..CLASSES.len().pow(len) {
                let body: Vec<u8> = (0..len)
                    .map(|i| CLASSES[pattern / CLASSES.len().pow(i) % CLASSES.len()])
                    .collect();
                decoded += usize::from(check_alone_and_after_an_id(&body, &mut prefix));
            }
        }
        // Not vacuous: about 3 300 of them are valid filenames.
        assert!(decoded > 3_000, "only {decoded} patterns decoded");
    }

    /// Any id-shaped text: hex digits and hyphens of about the right length, any case.
    fn id_like() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(ID.to_string()),
            Just(ID.to_ascii_uppercase()),
            "[0-9a-fA-F-]{30,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn arbitrary_bytes_decode_as_the_format_says(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = check(&body);
        }

        #[test]
        fn arbitrary_text_after_an_id_decodes_as_the_format_says(id in id_like(), name in r"\PC{0,60}|[ -~_/.]{0,250}|.{0,10}") {
            let _ = check(format!("{id}_{name}").as_bytes());
        }

        #[test]
        fn every_valid_message_round_trips(name in r"[^/\\\p{Cc}]{1,50}") {
            prop_assume!(name != "." && name != ".." && name.len() <= crate::filename::MAX_FILENAME_BYTES);
            let msg = JobMessage::new(JobId::new(), Filename::parse(&name).unwrap());
            prop_assert_eq!(JobMessage::decode(&msg.encode()), Ok(msg.clone()));
            prop_assert_eq!(JobMessage::decode_bytes(msg.encode().as_bytes()), Ok(msg));
        }
    }
}
