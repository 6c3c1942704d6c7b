//! qwp-face: recognises the person in a photo, for the worker's `face` processor.
//!
//! Data flow: [`decode`] (JPEG/PNG within [`Limits`]) → [`detect`] (Ultra-Light RFB-320
//! face detector) → [`align`] (68 landmarks → 5 points → similarity warp to the
//! 112×112 reference crop) → [`Models::embed`] (512-d embedding, L2-normalised) →
//! [`Gallery::identify`] (nearest reference photo by cosine similarity, with a threshold).
//!
//! The three ONNX models come from the npm package `faceplugin-face-recognition-js`
//! (`make face-models`, see docs/worker.md) and run on [tract], pure Rust, one core per call.

pub mod align;
pub mod decode;
pub mod detect;
pub mod gallery;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;

pub use decode::Limits;
pub use detect::BoundingBox;
pub use gallery::{Gallery, Identification};

/// The model files [`Models::load`] reads from its directory.
pub const MODEL_FILES: [&str; 3] = [DETECT_MODEL, LANDMARK_MODEL, EMBED_MODEL];
pub const DETECT_MODEL: &str = "fr_detect.onnx";
pub const LANDMARK_MODEL: &str = "fr_landmark.onnx";
pub const EMBED_MODEL: &str = "fr_feature.onnx";
/// Length of an [`Embedding`].
pub const EMBEDDING_LEN: usize = 512;

/// Why a photo gives no embedding. `Undecodable`, `TooLarge` and `NoFace` are the
/// input's fault; `Model` means inference itself failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaceError {
    #[error("cannot decode the image: {0}")]
    Undecodable(String),
    #[error("image refused: {0}")]
    TooLarge(String),
    #[error("no face found in the image")]
    NoFace,
    #[error("face model failed: {0}")]
    Model(String),
}

impl From<TractError> for FaceError {
    fn from(e: TractError) -> Self {
        FaceError::Model(format!("{e:#}"))
    }
}

/// Why the models cannot be loaded (the worker stops at start with this message).
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "face model {} is missing (run `make face-models`, or point WORKER_FACE_MODEL_DIR at a directory holding {})",
        path.display(),
        MODEL_FILES.join(", ")
    )]
    Missing { path: PathBuf },
    #[error("cannot load face model {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// A unit-length face embedding: the cosine similarity of two is their dot product.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `values` to unit length.
    pub fn new(mut values: Vec<f32>) -> Self {
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        values.iter_mut().for_each(|v| *v /= norm);
        Embedding(values)
    }

    pub fn cosine(&self, other: &Embedding) -> f32 {
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    pub fn values(&self) -> &[f32] {
        &self.0
    }
}

/// The face a photo was recognised by: the largest one the detector found.
#[derive(Clone, Debug)]
pub struct Face {
    pub bbox: BoundingBox,
    /// The detector's confidence, 0..1.
    pub score: f32,
    /// How many faces the detector found in the photo.
    pub faces_found: usize,
    pub embedding: Embedding,
    pub timings: Timings,
}

/// Where the time of one [`Models::analyse`] went (for the benchmark and logs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub decode: Duration,
    pub detect: Duration,
    /// Landmarks and the warp to the reference crop.
    pub align: Duration,
    pub embed: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.decode + self.detect + self.align + self.embed
    }
}

type Plan = TypedRunnableModel<TypedModel>;

/// The three optimised models, shareable across threads (each call runs on the caller's thread).
pub struct Models {
    detector: Plan,
    landmarker: Plan,
    embedder: Plan,
    limits: Limits,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Models {
    /// Loads and optimises the models in `dir` (about a second); a missing file is a
    /// [`ModelError::Missing`] naming it.
    pub fn load(dir: &Path, limits: Limits) -> Result<Self, ModelError> {
        Ok(Models {
            detector: load_plan(dir, DETECT_MODEL, &[1, 3, detect::HEIGHT, detect::WIDTH])?,
            landmarker: load_plan(
                dir,
                LANDMARK_MODEL,
                &[1, 1, align::LANDMARK_SIZE, align::LANDMARK_SIZE],
            )?,
            embedder: load_plan(
                dir,
                EMBED_MODEL,
                &[1, 3, align::CROP_SIZE, align::CROP_SIZE],
            )?,
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decode → detect → align → embed the largest face in `bytes`.
    pub fn analyse(&self, bytes: &[u8]) -> Result<Face, FaceError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let image = decode::decode(bytes, &self.limits)?;
        timings.decode = started.elapsed();

        let started = Instant::now();
        let faces = detect::detect(&self.detector, &image)?;
        timings.detect = started.elapsed();
        let (bbox, score) = faces
            .iter()
            .max_by(|a, b| a.0.area().total_cmp(&b.0.area()))
            .copied()
            .ok_or(FaceError::NoFace)?;

        let started = Instant::now();
        let points = align::landmarks(&self.landmarker, &image, &bbox)?;
        let crop = align::warp_to_reference(&image, &align::five_points(&points));
        timings.align = started.elapsed();

        let started = Instant::now();
        let embedding = self.embed(&crop)?;
        timings.embed = started.elapsed();
        Ok(Face {
            bbox,
            score,
            faces_found: faces.len(),
            embedding,
            timings,
        })
    }

    /// The embedding of an aligned 112×112 crop.
    pub fn embed(&self, crop: &image::RgbImage) -> Result<Embedding, FaceError> {
        let input = rgb_tensor(crop);
        let output = self.embedder.run(tvec!(input.into()))?;
        let values = output[0].to_array_view::<f32>()?;
        if values.len() != EMBEDDING_LEN {
            return Err(FaceError::Model(format!(
                "the embedding model returned {} values, expected {EMBEDDING_LEN}",
                values.len()
            )));
        }
        Ok(Embedding::new(values.iter().copied().collect()))
    }
}

fn load_plan(dir: &Path, file: &str, shape: &[usize]) -> Result<Plan, ModelError> {
    let path = dir.join(file);
    if !path.is_file() {
        return Err(ModelError::Missing { path });
    }
    let invalid = |e: TractError| ModelError::Invalid {
        path: path.clone(),
        reason: format!("{e:#}"),
    };
    tract_onnx::onnx()
        .model_for_path(&path)
        .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .map_err(invalid)
}

/// NCHW float tensor of an RGB image, scaled like the models were trained: (v - 127) / 128.
pub(crate) fn rgb_tensor(image: &image::RgbImage) -> Tensor {
    let (width, height) = (image.width() as usize, image.height() as usize);
    tract_ndarray::Array4::from_shape_fn((1, 3, height, width), |(_, c, y, x)| {
        (image.get_pixel(x as u32, y as u32)[c] as f32 - 127.0) / 128.0
    })
    .into()
}
