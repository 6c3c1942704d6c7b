//! The S3 key scheme (seed 001): input `{job_id}_{filename}` in the input bucket,
//! result `{job_id}` in the output bucket.

use crate::filename::Filename;
use crate::id::JobId;

pub fn input_key(job_id: &JobId, filename: &Filename) -> String {
    format!("{job_id}_{filename}")
}

pub fn output_key(job_id: &JobId) -> String {
    job_id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_seed_scheme() {
        let id: JobId = "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f".parse().unwrap();
        let name = Filename::parse("face.jpg").unwrap();
        assert_eq!(
            input_key(&id, &name),
            "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f_face.jpg"
        );
        assert_eq!(output_key(&id), "3f2b8c1e-9d4a-4e7b-8c1d-2a3b4c5d6e7f");
    }
}
