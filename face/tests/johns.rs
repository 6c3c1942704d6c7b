//! Recognition accuracy on dlib's "johns" photos (5 people × 11 aligned face photos,
//! from the Debian package libdlib19.1), with the real models. Both come from
//! `make face-fetch` (hack/face/fetch.sh); the test fails, naming it, when they are missing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use qwp_face::{FaceError, Gallery, Limits, Models, gallery::DEFAULT_THRESHOLD};

fn cache() -> PathBuf {
    std::env::var_os("QWP_FACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/face"))
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        Models::load(&cache().join("models"), Limits::default())
            .unwrap_or_else(|e| panic!("{e} (make face-fetch)"))
    })
}

/// (person, sorted photo paths) of the johns set.
fn johns() -> Vec<(String, Vec<PathBuf>)> {
    let dir = cache().join("photos/johns");
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (make face-fetch)", dir.display()));
    let mut people: Vec<(String, Vec<PathBuf>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| {
            let mut photos: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            photos.sort();
            (
                p.file_name().unwrap().to_string_lossy().replace('_', " "),
                photos,
            )
        })
        .collect();
    people.sort();
    people
}

#[test]
fn two_reference_photos_per_person_name_the_other_photos() {
    let people = johns();
    assert_eq!(people.len(), 5, "the johns set has five people");
    let mut gallery = Gallery::default();
    let mut references = Vec::new();
    for (name, photos) in &people {
        for photo in &photos[..2] {
            let face = models()
                .analyse(&std::fs::read(photo).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", photo.display()));
            gallery.add(name.clone(), face.embedding.clone());
            references.push((name.clone(), face.embedding));
        }
    }
    let (mut correct, mut total) = (0, 0);
    let mut wrong = Vec::new();
    // The similarity to the nearest reference of the same person and of anyone else:
    // how far apart they stay decides how safe the threshold is.
    let (mut lowest_same, mut highest_other) = (f32::MAX, f32::MIN);
    for (name, photos) in &people {
        for photo in &photos[2..] {
            total += 1;
            let face = models().analyse(&std::fs::read(photo).unwrap());
            if let Ok(face) = &face {
                for (reference_name, reference) in &references {
                    let score = reference.cosine(&face.embedding);
                    if reference_name == name {
                        lowest_same = lowest_same.min(score);
                    } else {
                        highest_other = highest_other.max(score);
                    }
                }
            }
            let outcome = face.map(|face| gallery.identify(&face.embedding, DEFAULT_THRESHOLD));
            match outcome {
                Ok(id) if id.name.as_deref() == Some(name.as_str()) => correct += 1,
                other => wrong.push(format!("{}: {other:?}", photo.display())),
            }
        }
    }
    let accuracy = correct as f64 / total as f64;
    println!(
        "johns top-1: {correct}/{total} = {:.1} % (threshold {DEFAULT_THRESHOLD})",
        accuracy * 100.0
    );
    println!(
        "similarity to a reference: same person >= {lowest_same:.3}, other people <= {highest_other:.3}"
    );
    for w in &wrong {
        println!("  wrong: {w}");
    }
    assert!(total >= 40, "{total} test photos");
    assert!(accuracy >= 0.95, "top-1 {:.1} % < 95 %", accuracy * 100.0);
}

#[test]
fn gallery_from_a_directory_labels_by_folder_name() {
    let dir = tempfile::tempdir().unwrap();
    let people = johns();
    for (name, photos) in &people[..2] {
        let folder = dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        for photo in &photos[..2] {
            std::fs::copy(photo, folder.join(photo.file_name().unwrap())).unwrap();
        }
        std::fs::write(folder.join("notes.txt"), "not a photo").unwrap();
    }
    let (gallery, rejected) = Gallery::from_dir(models(), dir.path()).unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(gallery.len(), 4);
    assert_eq!(
        gallery.people(),
        [people[0].0.as_str(), people[1].0.as_str()]
    );
    let probe = models()
        .analyse(&std::fs::read(&people[1].1[5]).unwrap())
        .unwrap();
    assert_eq!(
        gallery
            .identify(&probe.embedding, DEFAULT_THRESHOLD)
            .label(),
        people[1].0
    );
    // Someone not in the gallery is Unknown.
    let stranger = models()
        .analyse(&std::fs::read(&people[4].1[0]).unwrap())
        .unwrap();
    let id = gallery.identify(&stranger.embedding, DEFAULT_THRESHOLD);
    assert_eq!(id.label(), "Unknown", "{id:?}");
}

#[test]
fn a_photo_without_a_face_is_no_face() {
    // Smooth colour gradients with a few stripes: an image, but nobody in it.
    let image = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([
            (x / 3) as u8,
            (y / 2) as u8,
            if (x / 40) % 2 == 0 { 40 } else { 200 },
        ])
    });
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(models().analyse(&png).unwrap_err(), FaceError::NoFace);
}

#[test]
fn a_corrupt_file_fails_cleanly() {
    let photo = &johns()[0].1[0];
    let mut bytes = std::fs::read(photo).unwrap();
    // Keep the JPEG signature, scramble everything after the first markers.
    for (i, b) in bytes.iter_mut().enumerate().skip(20) {
        *b = (i * 31 % 251) as u8;
    }
    let err = models().analyse(&bytes).unwrap_err();
    assert!(matches!(err, FaceError::Undecodable(_)), "{err:?}");
    let err = models().analyse(b"GIF89a....").unwrap_err();
    assert!(matches!(err, FaceError::Undecodable(_)), "{err:?}");
}

#[test]
fn a_missing_model_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let err = Models::load(dir.path(), Limits::default()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("fr_detect.onnx"), "{message}");
    assert!(message.contains("make face-models"), "{message}");
}
