//! The people a photo can be recognised as: reference embeddings by name, and the
//! nearest-neighbour decision with a similarity threshold.

use std::path::Path;

use crate::{Embedding, FaceError, Models};

/// Below this cosine similarity to every reference photo, the face is `Unknown`.
/// Chosen on the johns set (face/tests/johns.rs): a photo scores at least 0.56 against its
/// own person's references and at most 0.29 against anyone else's.
pub const DEFAULT_THRESHOLD: f32 = 0.4;
/// The result for a face that matches nobody in the gallery (the seed system's wording).
pub const UNKNOWN: &str = "Unknown";

/// Reference embeddings, each labelled with a person's name.
#[derive(Clone, Debug, Default)]
pub struct Gallery {
    references: Vec<(String, Embedding)>,
}

/// The gallery's verdict on one face.
#[derive(Clone, Debug, PartialEq)]
pub struct Identification {
    /// The person, or `None` when the best match is below the threshold (or the gallery is empty).
    pub name: Option<String>,
    /// The nearest reference, whatever its similarity.
    pub nearest: Option<(String, f32)>,
}

impl Identification {
    /// The seed's result string: the name, or [`UNKNOWN`].
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(UNKNOWN)
    }
}

/// A reference photo that could not be used, and why (the gallery is built without it).
#[derive(Debug)]
pub struct Rejected {
    pub source: String,
    pub error: FaceError,
}

impl Gallery {
    pub fn add(&mut self, name: impl Into<String>, embedding: Embedding) {
        self.references.push((name.into(), embedding));
    }

    pub fn len(&self) -> usize {
        self.references.len()
    }

    pub fn is_empty(&self) -> bool {
        self.references.is_empty()
    }

    /// Distinct names, sorted.
    pub fn people(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.references.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The nearest reference photo's person, if its similarity reaches `threshold`.
    pub fn identify(&self, face: &Embedding, threshold: f32) -> Identification {
        let nearest = self
            .references
            .iter()
            .map(|(name, reference)| (name, reference.cosine(face)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(name, score)| (name.clone(), score));
        Identification {
            name: nearest
                .as_ref()
                .filter(|(_, score)| *score >= threshold)
                .map(|(name, _)| name.clone()),
            nearest,
        }
    }

    /// A gallery from a directory of `{Person Name}/*.{jpg,jpeg,png}`. Photos without a
    /// usable face are returned as rejected, not fatal; an unreadable directory is an error.
    pub fn from_dir(models: &Models, dir: &Path) -> std::io::Result<(Gallery, Vec<Rejected>)> {
        let mut gallery = Gallery::default();
        let mut rejected = Vec::new();
        let mut people: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .collect();
        people.sort_by_key(|e| e.file_name());
        for person in people {
            let name = person.file_name().to_string_lossy().into_owned();
            let mut photos: Vec<_> = std::fs::read_dir(person.path())?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_photo_name(&p.to_string_lossy()))
                .collect();
            photos.sort();
            for photo in photos {
                let bytes = std::fs::read(&photo)?;
                match models.analyse(&bytes) {
                    Ok(face) => gallery.add(name.clone(), face.embedding),
                    Err(error) => rejected.push(Rejected {
                        source: photo.display().to_string(),
                        error,
                    }),
                }
            }
        }
        Ok((gallery, rejected))
    }
}

/// Whether a file or object name looks like a reference photo (by extension).
pub fn is_photo_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".jpg", ".jpeg", ".png"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f32]) -> Embedding {
        Embedding::new(values.to_vec())
    }

    #[test]
    fn nearest_reference_wins_and_the_threshold_makes_unknown() {
        let mut gallery = Gallery::default();
        gallery.add("Ada", unit(&[1.0, 0.0, 0.0]));
        gallery.add("Ada", unit(&[0.9, 0.1, 0.0]));
        gallery.add("Bob", unit(&[0.0, 1.0, 0.0]));
        let id = gallery.identify(&unit(&[0.2, 1.0, 0.0]), 0.5);
        assert_eq!(id.label(), "Bob");
        let id = gallery.identify(&unit(&[0.0, 0.0, 1.0]), 0.5);
        assert_eq!(id.label(), UNKNOWN);
        assert_eq!(id.name, None);
        assert!(id.nearest.is_some());
        assert_eq!(gallery.people(), ["Ada", "Bob"]);
        assert_eq!(
            Gallery::default().identify(&unit(&[1.0]), 0.0).label(),
            UNKNOWN
        );
    }

    #[test]
    fn photo_names_by_extension() {
        assert!(is_photo_name("gallery/Ada/1.JPG"));
        assert!(is_photo_name("a.png"));
        assert!(!is_photo_name("gallery/Ada/notes.txt"));
        assert!(!is_photo_name("gallery/Ada/"));
    }
}
