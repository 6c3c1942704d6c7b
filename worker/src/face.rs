//! The `face` processor: names the person in a photo from a gallery of labelled
//! reference photos (qwp-face does the recognition).
//!
//! The gallery is `{prefix}{Person Name}/{photo}.jpg|png` in an S3 bucket (or the same
//! layout in a directory). It is embedded at start and re-listed every
//! `WORKER_FACE_GALLERY_REFRESH_SECONDS`; a changed listing (keys or ETags) rebuilds it,
//! embedding only the photos that are new or changed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use aws_sdk_s3::error::DisplayErrorContext;
use qwp_face::{Embedding, FaceError, Gallery, Models};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::processor::ProcessError;

/// Where the reference photos are.
#[derive(Clone, Debug, PartialEq)]
pub enum GallerySource {
    /// Objects under `prefix`; `bucket: None` means the input bucket (`S3_IN_BUCKET`).
    S3 {
        bucket: Option<String>,
        prefix: String,
    },
    Dir(PathBuf),
}

impl GallerySource {
    /// `s3://bucket/prefix/`, `s3:///prefix/` (the input bucket) or a directory path.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(GallerySource::S3 {
                bucket: (!bucket.is_empty()).then(|| bucket.to_string()),
                prefix,
            });
        }
        if raw.is_empty() {
            return Err("must be s3://bucket/prefix/ or a directory".into());
        }
        Ok(GallerySource::Dir(PathBuf::from(raw)))
    }
}

/// `WORKER_FACE_*`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaceSettings {
    /// Directory with the three ONNX models (`WORKER_FACE_MODEL_DIR`).
    pub model_dir: PathBuf,
    pub gallery: GallerySource,
    /// Cosine similarity below which the face is `Unknown`.
    pub threshold: f32,
    /// How often the gallery is re-listed; zero turns refreshing off.
    pub refresh: Duration,
    pub limits: qwp_face::Limits,
}

/// The models, the current gallery and what is needed to refresh it; shared by all jobs.
pub struct FaceRecognizer {
    models: Arc<Models>,
    threshold: f32,
    source: ResolvedSource,
    gallery: RwLock<Arc<Gallery>>,
    /// Per S3 key: the ETag last seen and its embedding (None: no usable face);
    /// `None` until the first listing.
    embedded: Mutex<Option<Listing>>,
}

type Listing = HashMap<String, (String, Option<Embedding>)>;

enum ResolvedSource {
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
    Dir(PathBuf),
}

impl FaceRecognizer {
    /// Loads the models (a missing one stops the worker with its path and the fix) and
    /// builds the gallery once.
    pub async fn start(
        settings: &FaceSettings,
        s3: &aws_sdk_s3::Client,
        input_bucket: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let (dir, limits) = (settings.model_dir.clone(), settings.limits.clone());
        let models = tokio::task::spawn_blocking(move || Models::load(&dir, limits))
            .await
            .context("loading the face models")??;
        let source = match &settings.gallery {
            GallerySource::S3 { bucket, prefix } => ResolvedSource::S3 {
                client: s3.clone(),
                bucket: bucket.clone().unwrap_or_else(|| input_bucket.to_string()),
                prefix: prefix.clone(),
            },
            GallerySource::Dir(dir) => ResolvedSource::Dir(dir.clone()),
        };
        let recognizer = Arc::new(FaceRecognizer {
            models: Arc::new(models),
            threshold: settings.threshold,
            source,
            gallery: RwLock::new(Arc::new(Gallery::default())),
            embedded: Mutex::new(None),
        });
        recognizer
            .refresh()
            .await
            .context("loading the face gallery")?;
        Ok(recognizer)
    }

    pub fn gallery(&self) -> Arc<Gallery> {
        self.gallery.read().unwrap().clone()
    }

    /// Re-reads the gallery; returns whether it changed.
    pub async fn refresh(&self) -> anyhow::Result<bool> {
        match &self.source {
            ResolvedSource::Dir(dir) => {
                let (models, dir) = (self.models.clone(), dir.clone());
                let (gallery, rejected) =
                    tokio::task::spawn_blocking(move || Gallery::from_dir(&models, &dir))
                        .await?
                        .context("reading the gallery directory")?;
                for r in rejected {
                    warn!(photo = r.source, error = %r.error, "gallery photo skipped");
                }
                self.install(gallery, "directory");
                Ok(true)
            }
            ResolvedSource::S3 {
                client,
                bucket,
                prefix,
            } => self.refresh_s3(client, bucket, prefix).await,
        }
    }

    async fn refresh_s3(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
    ) -> anyhow::Result<bool> {
        let mut listing: Vec<(String, String)> = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page
                .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .with_context(|| format!("listing s3://{bucket}/{prefix}"))?;
            for object in page.contents() {
                let (Some(key), etag) = (object.key(), object.e_tag().unwrap_or_default()) else {
                    continue;
                };
                if person_of(prefix, key).is_some() {
                    listing.push((key.to_string(), etag.to_string()));
                }
            }
        }
        let unchanged = self
            .embedded
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|embedded| {
                embedded.len() == listing.len()
                    && listing
                        .iter()
                        .all(|(key, etag)| embedded.get(key).is_some_and(|(e, _)| e == etag))
            });
        if unchanged {
            return Ok(false);
        }
        let mut fresh = HashMap::new();
        for (key, etag) in listing {
            let known = self
                .embedded
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|embedded| embedded.get(&key).cloned());
            let embedding = match known {
                Some((seen, embedding)) if seen == etag => embedding,
                _ => self.embed_object(client, bucket, &key).await?,
            };
            fresh.insert(key, (etag, embedding));
        }
        let mut gallery = Gallery::default();
        let mut keys: Vec<&String> = fresh.keys().collect();
        keys.sort();
        for key in keys {
            if let (Some(person), (_, Some(embedding))) = (person_of(prefix, key), &fresh[key]) {
                gallery.add(person, embedding.clone());
            }
        }
        *self.embedded.lock().unwrap() = Some(fresh);
        self.install(gallery, &format!("s3://{bucket}/{prefix}"));
        Ok(true)
    }

    async fn embed_object(
        &self,
        client: &aws_sdk_s3::Client,
        bucket: &str,
        key: &str,
    ) -> anyhow::Result<Option<Embedding>> {
        let object = client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(e)))
            .with_context(|| format!("reading s3://{bucket}/{key}"))?;
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("reading s3://{bucket}/{key}"))?
            .into_bytes();
        let models = self.models.clone();
        match tokio::task::spawn_blocking(move || models.analyse(&bytes)).await? {
            Ok(face) => Ok(Some(face.embedding)),
            Err(error) => {
                warn!(photo = key, %error, "gallery photo skipped");
                Ok(None)
            }
        }
    }

    fn install(&self, gallery: Gallery, from: &str) {
        let people = gallery.people().len();
        if gallery.is_empty() {
            warn!(from, "the face gallery is empty: every face is Unknown");
        } else {
            info!(from, people, photos = gallery.len(), "face gallery loaded");
        }
        *self.gallery.write().unwrap() = Arc::new(gallery);
    }

    /// Re-lists the gallery every `every` until `stop`; errors are logged and retried next time.
    pub fn spawn_refresher(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; start() has just loaded it
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                if let Err(error) = self.refresh().await {
                    warn!(error = format!("{error:#}"), "face gallery refresh failed");
                }
            }
        })
    }

    /// The person in `input`: their name, `Unknown`, or a failed job for no face or
    /// an undecodable file. Runs on the blocking pool: one core per job.
    pub async fn recognise(&self, input: &[u8]) -> Result<Value, ProcessError> {
        let (models, input) = (self.models.clone(), input.to_vec());
        let face = tokio::task::spawn_blocking(move || models.analyse(&input))
            .await
            .map_err(|e| ProcessError::Transient(format!("face recognition panicked: {e}")))?
            .map_err(|e| match e {
                FaceError::Model(_) => ProcessError::Transient(e.to_string()),
                _ => ProcessError::Failed(e.to_string()),
            })?;
        let id = self.gallery().identify(&face.embedding, self.threshold);
        tracing::debug!(
            name = id.label(),
            nearest = ?id.nearest,
            detect_score = face.score,
            faces = face.faces_found,
            ms = face.timings.total().as_millis() as u64,
            "face recognised"
        );
        Ok(Value::String(id.label().to_string()))
    }
}

/// `{prefix}{Person Name}/{photo}` → the person, for photo names only.
fn person_of<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    let (person, file) = key.strip_prefix(prefix)?.split_once('/')?;
    (!person.is_empty() && !file.contains('/') && qwp_face::gallery::is_photo_name(file))
        .then_some(person)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gallery_sources_parse() {
        assert_eq!(
            GallerySource::parse("s3://faces/gallery").unwrap(),
            GallerySource::S3 {
                bucket: Some("faces".into()),
                prefix: "gallery/".into()
            }
        );
        assert_eq!(
            GallerySource::parse("s3:///gallery/").unwrap(),
            GallerySource::S3 {
                bucket: None,
                prefix: "gallery/".into()
            }
        );
        assert_eq!(
            GallerySource::parse("/srv/gallery").unwrap(),
            GallerySource::Dir("/srv/gallery".into())
        );
        assert!(GallerySource::parse(" ").is_err());
    }

    #[test]
    fn keys_name_their_person() {
        assert_eq!(
            person_of("gallery/", "gallery/Ada Lovelace/1.jpg"),
            Some("Ada Lovelace")
        );
        assert_eq!(person_of("gallery/", "gallery/Ada/x/1.jpg"), None);
        assert_eq!(person_of("gallery/", "gallery/Ada/notes.txt"), None);
        assert_eq!(person_of("gallery/", "gallery/1.jpg"), None);
        assert_eq!(person_of("gallery/", "other/Ada/1.jpg"), None);
    }
}
