use std::fmt;

use crate::id::truncate_for_error;

/// Longest accepted filename in bytes. With the 37-byte `{job_id}_` prefix the S3 key stays
/// far below S3's 1024-byte limit and SQS bodies stay small.
pub const MAX_FILENAME_BYTES: usize = 200;

/// Name used when an upload carries no usable filename.
pub const DEFAULT_FILENAME: &str = "upload.bin";

/// A filename that is safe to embed in an S3 key after the `{job_id}_` prefix:
/// non-empty, at most [`MAX_FILENAME_BYTES`], no path separators, no control characters,
/// and not `.` or `..`. The key can therefore never leave its prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Filename(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilenameError {
    #[error("filename is empty")]
    Empty,
    #[error("filename is {0} bytes long; the limit is {MAX_FILENAME_BYTES}")]
    TooLong(usize),
    #[error("filename {0:?} contains a path separator")]
    PathSeparator(String),
    #[error("filename {0:?} is a relative directory reference")]
    DotName(String),
    #[error("filename {0:?} contains a control character")]
    ControlCharacter(String),
}

impl Filename {
    /// Strict check, used where a name must already be safe (decoding SQS messages).
    pub fn parse(name: &str) -> Result<Self, FilenameError> {
        if name.is_empty() {
            return Err(FilenameError::Empty);
        }
        if name.len() > MAX_FILENAME_BYTES {
            return Err(FilenameError::TooLong(name.len()));
        }
        if name.contains(['/', '\\']) {
            return Err(FilenameError::PathSeparator(truncate_for_error(name)));
        }
        if name == "." || name == ".." {
            return Err(FilenameError::DotName(name.to_string()));
        }
        if name.chars().any(char::is_control) {
            return Err(FilenameError::ControlCharacter(truncate_for_error(name)));
        }
        Ok(Filename(name.to_string()))
    }

    /// Lenient conversion for names supplied by clients: keeps the last path component,
    /// drops control characters, trims to the byte limit on a character boundary and
    /// falls back to [`DEFAULT_FILENAME`] when nothing usable is left.
    pub fn sanitize(raw: &str) -> Self {
        let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
        let mut clean: String = last.chars().filter(|c| !c.is_control()).collect();
        if clean.len() > MAX_FILENAME_BYTES {
            // Keep the extension when it is short: `photo….jpg` stays a `.jpg`.
            let ext = clean
                .rfind('.')
                .map(|dot| clean[dot..].to_string())
                .filter(|ext| ext.len() <= 16)
                .unwrap_or_default();
            let mut cut = MAX_FILENAME_BYTES - ext.len();
            while !clean.is_char_boundary(cut) {
                cut -= 1;
            }
            clean = format!("{}{}", &clean[..cut], ext);
        }
        let clean = clean.trim();
        match Filename::parse(clean) {
            Ok(name) => name,
            Err(_) => Filename(DEFAULT_FILENAME.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Filename {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "photo.jpg",
            "my file (1).png",
            "ünïcødé.txt",
            "a_b_c",
            "..hidden",
            "a..b",
        ] {
            assert_eq!(Filename::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_each_hostile_class() {
        assert_eq!(Filename::parse(""), Err(FilenameError::Empty));
        assert!(matches!(
            Filename::parse("a/b"),
            Err(FilenameError::PathSeparator(_))
        ));
        assert!(matches!(
            Filename::parse("..\\x"),
            Err(FilenameError::PathSeparator(_))
        ));
        assert!(matches!(
            Filename::parse("../etc/passwd"),
            Err(FilenameError::PathSeparator(_))
        ));
        assert!(matches!(
            Filename::parse(".."),
            Err(FilenameError::DotName(_))
        ));
        assert!(matches!(
            Filename::parse("."),
            Err(FilenameError::DotName(_))
        ));
        assert!(matches!(
            Filename::parse("a\nb"),
            Err(FilenameError::ControlCharacter(_))
        ));
        assert!(matches!(
            Filename::parse("a\u{0}b"),
            Err(FilenameError::ControlCharacter(_))
        ));
        assert!(matches!(
            Filename::parse("a\u{7f}"),
            Err(FilenameError::ControlCharacter(_))
        ));
        let long = "x".repeat(MAX_FILENAME_BYTES + 1);
        assert_eq!(
            Filename::parse(&long),
            Err(FilenameError::TooLong(MAX_FILENAME_BYTES + 1))
        );
    }

    #[test]
    fn sanitize_strips_directories_and_controls() {
        assert_eq!(Filename::sanitize("../../etc/passwd").as_str(), "passwd");
        assert_eq!(
            Filename::sanitize("C:\\Users\\me\\cat.png").as_str(),
            "cat.png"
        );
        assert_eq!(
            Filename::sanitize("evil\r\nname.txt").as_str(),
            "evilname.txt"
        );
        assert_eq!(Filename::sanitize("  spaced.txt  ").as_str(), "spaced.txt");
    }

    #[test]
    fn sanitize_falls_back_to_default() {
        for raw in ["", "/", "dir/", "..", ".", "\u{1}\u{2}", "   "] {
            assert_eq!(
                Filename::sanitize(raw).as_str(),
                DEFAULT_FILENAME,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn sanitize_bounds_length_on_char_boundary_and_keeps_extension() {
        let long = format!("{}.jpeg", "é".repeat(300));
        let name = Filename::sanitize(&long);
        assert!(name.as_str().len() <= MAX_FILENAME_BYTES);
        assert!(name.as_str().ends_with(".jpeg"));
        // Every sanitised name passes the strict check.
        assert_eq!(Filename::parse(name.as_str()).unwrap(), name);
    }
}
