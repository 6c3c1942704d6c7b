//! The `face` processor end to end on LocalStack: a gallery under an S3 prefix, photos
//! through the queue, names (or Unknown, or a failed job) in the result documents, and a
//! gallery refresh that picks up a new person. Models and photos come from
//! `make face-fetch`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::*;
use qwp_jobs::JobResult;
use qwp_jobs::result::Outcome;
use qwp_jobs::testing::TestStack;
use qwp_worker::face::{FaceRecognizer, FaceSettings, GallerySource};
use qwp_worker::settings::ProcessorSettings;
use qwp_worker::{CancellationToken, Settings, Worker};

fn cache() -> PathBuf {
    std::env::var_os("QWP_FACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/face"))
}

/// Sorted photos of one person of the johns set.
fn photos(person: &str) -> Vec<PathBuf> {
    let dir = cache().join("photos/johns").join(person);
    let mut photos: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (make face-fetch)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    photos.sort();
    photos
}

fn face_settings(gallery: GallerySource) -> FaceSettings {
    FaceSettings {
        model_dir: cache().join("models"),
        gallery,
        threshold: qwp_face::gallery::DEFAULT_THRESHOLD,
        refresh: Duration::ZERO,
        limits: qwp_face::Limits::default(),
    }
}

/// Uploads two reference photos of `person` as `gallery/{Name With Spaces}/`.
async fn add_to_gallery(stack: &TestStack, person: &str) {
    for photo in &photos(person)[..2] {
        let key = format!(
            "gallery/{}/{}",
            person.replace('_', " "),
            photo.file_name().unwrap().to_string_lossy()
        );
        stack
            .clients
            .s3
            .put_object()
            .bucket(&stack.config.s3_in_bucket)
            .key(key)
            .body(ByteStream::from(std::fs::read(photo).unwrap()))
            .send()
            .await
            .unwrap();
    }
}

fn value(result: &JobResult) -> String {
    match &result.outcome {
        Outcome::Done { result, .. } => result.as_str().unwrap().to_string(),
        Outcome::Failed { error, .. } => format!("failed: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_are_named_from_the_s3_gallery_and_a_new_person_is_picked_up() {
    let stack = stack("w-face", 60, None).await;
    add_to_gallery(&stack, "John_Salley").await;
    add_to_gallery(&stack, "John_Savage").await;
    let recognizer = FaceRecognizer::start(
        &face_settings(GallerySource::S3 {
            bucket: None,
            prefix: "gallery/".into(),
        }),
        &stack.clients.s3,
        &stack.config.s3_in_bucket,
    )
    .await
    .unwrap();
    assert_eq!(
        recognizer.gallery().people(),
        ["John Salley", "John Savage"]
    );

    let settings = Settings {
        concurrency: 2,
        processor: ProcessorSettings::Face(face_settings(GallerySource::Dir("unused".into()))),
        ..Settings::default()
    };
    let worker = Worker::new(
        &stack.config,
        settings,
        &stack.clients,
        stack.queue_url.clone(),
    )
    .unwrap()
    .with_face(recognizer.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));

    let no_face = {
        let image = image::RgbImage::from_fn(320, 240, |x, y| image::Rgb([x as u8, y as u8, 90]));
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        png
    };
    let stranger = std::fs::read(&photos("John_Simm")[4]).unwrap();
    let jobs = vec![
        (
            new_job("salley.jpg"),
            std::fs::read(&photos("John_Salley")[6]).unwrap(),
        ),
        (
            new_job("savage.jpg"),
            std::fs::read(&photos("John_Savage")[9]).unwrap(),
        ),
        (new_job("simm.jpg"), stranger.clone()),
        (
            new_job("broken.jpg"),
            b"\xff\xd8\xff\xe0 not really a jpeg".to_vec(),
        ),
        (new_job("wall.png"), no_face),
    ];
    stack.submit(&jobs).await;
    let ids: Vec<_> = jobs.iter().map(|(job, _)| job.job_id).collect();
    let results = wait_for_results(&stack, &ids).await;
    let got: Vec<String> = ids.iter().map(|id| value(&results[id])).collect();
    assert_eq!(got[0], "John Salley");
    assert_eq!(got[1], "John Savage");
    assert_eq!(got[2], "Unknown");
    assert!(
        got[3].starts_with("failed: cannot decode the image"),
        "{}",
        got[3]
    );
    assert_eq!(got[4], "failed: no face found in the image");

    // A new person in the prefix: the next refresh embeds them, the one after sees no change.
    add_to_gallery(&stack, "John_Simm").await;
    assert!(recognizer.refresh().await.unwrap(), "the listing changed");
    assert!(
        !recognizer.refresh().await.unwrap(),
        "nothing changed since"
    );
    assert_eq!(recognizer.gallery().len(), 6);
    let again = new_job("simm-again.jpg");
    stack.submit(&[(again.clone(), stranger)]).await;
    let results = wait_for_results(&stack, &[again.job_id]).await;
    assert_eq!(value(&results[&again.job_id]), "John Simm");

    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_missing_model_stops_the_start_with_the_fix() {
    let stack = stack("w-face-nomodel", 30, None).await;
    let empty = tempfile::tempdir().unwrap();
    let settings = FaceSettings {
        model_dir: empty.path().to_path_buf(),
        ..face_settings(GallerySource::Dir(empty.path().to_path_buf()))
    };
    let err = FaceRecognizer::start(&settings, &stack.clients.s3, &stack.config.s3_in_bucket)
        .await
        .err()
        .expect("no models, no start");
    let message = format!("{err:#}");
    assert!(message.contains("fr_detect.onnx"), "{message}");
    assert!(message.contains("make face-models"), "{message}");
}

#[tokio::test]
async fn a_gallery_directory_works_without_s3() {
    let stack = stack("w-face-dir", 30, None).await;
    let dir = tempfile::tempdir().unwrap();
    let person = dir.path().join("John Shimkus");
    std::fs::create_dir(&person).unwrap();
    for photo in &photos("John_Shimkus")[..2] {
        std::fs::copy(photo, person.join(photo.file_name().unwrap())).unwrap();
    }
    let recognizer = FaceRecognizer::start(
        &face_settings(GallerySource::Dir(dir.path().to_path_buf())),
        &stack.clients.s3,
        &stack.config.s3_in_bucket,
    )
    .await
    .unwrap();
    let photo = std::fs::read(&photos("John_Shimkus")[7]).unwrap();
    assert_eq!(
        recognizer.recognise(&photo).await.unwrap(),
        serde_json::json!("John Shimkus")
    );
}
