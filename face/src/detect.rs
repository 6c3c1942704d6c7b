//! Face boxes from the Ultra-Light RFB-320 detector: the photo is stretched to 320×240,
//! the model scores 4420 anchor boxes (already decoded to corners in 0..1), and the
//! confident ones are merged by non-maximum suppression.

use image::RgbImage;
use image::imageops::{self, FilterType};
use tract_onnx::prelude::*;

use crate::{FaceError, Plan, rgb_tensor};

pub const WIDTH: usize = 320;
pub const HEIGHT: usize = 240;
/// Below this the detector's box is ignored (the upstream demo uses 0.65–0.7).
pub const MIN_SCORE: f32 = 0.7;
/// Boxes overlapping a better one by more than this (intersection over union) are dropped.
const NMS_IOU: f32 = 0.3;

/// A face box in the photo's pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundingBox {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoundingBox {
    pub fn width(&self) -> f32 {
        (self.x2 - self.x1).max(0.0)
    }

    pub fn height(&self) -> f32 {
        (self.y2 - self.y1).max(0.0)
    }

    pub fn area(&self) -> f32 {
        self.width() * self.height()
    }

    fn iou(&self, other: &BoundingBox) -> f32 {
        let inter = BoundingBox {
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
            x2: self.x2.min(other.x2),
            y2: self.y2.min(other.y2),
        }
        .area();
        inter / (self.area() + other.area() - inter).max(1e-6)
    }
}

/// Every face found, best first, with the detector's score.
pub fn detect(plan: &Plan, image: &RgbImage) -> Result<Vec<(BoundingBox, f32)>, FaceError> {
    let (w, h) = (WIDTH as u32, HEIGHT as u32);
    // Big photos are averaged down (fast); small ones interpolated up.
    let input = if image.width() >= w && image.height() >= h {
        imageops::thumbnail(image, w, h)
    } else {
        imageops::resize(image, w, h, FilterType::Triangle)
    };
    let outputs = plan.run(tvec!(rgb_tensor(&input).into()))?;
    let (mut scores, mut boxes) = (None, None);
    for output in &outputs {
        match output.shape().last() {
            Some(2) => scores = Some(output.to_array_view::<f32>()?),
            Some(4) => boxes = Some(output.to_array_view::<f32>()?),
            _ => {}
        }
    }
    let (Some(scores), Some(boxes)) = (scores, boxes) else {
        return Err(FaceError::Model(
            "the detector did not return scores and boxes".into(),
        ));
    };
    let scores = scores.as_slice().unwrap_or_default();
    let boxes = boxes.as_slice().unwrap_or_default();
    let (sx, sy) = (image.width() as f32, image.height() as f32);
    let mut candidates: Vec<(BoundingBox, f32)> = scores
        .chunks_exact(2)
        .zip(boxes.chunks_exact(4))
        .filter(|(score, _)| score[1] >= MIN_SCORE)
        .map(|(score, b)| {
            let bbox = BoundingBox {
                x1: (b[0] * sx).clamp(0.0, sx),
                y1: (b[1] * sy).clamp(0.0, sy),
                x2: (b[2] * sx).clamp(0.0, sx),
                y2: (b[3] * sy).clamp(0.0, sy),
            };
            (bbox, score[1])
        })
        .filter(|(bbox, _)| bbox.area() > 0.0)
        .collect();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept: Vec<(BoundingBox, f32)> = Vec::new();
    for (bbox, score) in candidates {
        if kept.iter().all(|(k, _)| k.iou(&bbox) <= NMS_IOU) {
            kept.push((bbox, score));
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_identical_disjoint_and_half_overlapping_boxes() {
        let a = BoundingBox {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
        };
        assert!((a.iou(&a) - 1.0).abs() < 1e-6);
        let far = BoundingBox {
            x1: 20.0,
            y1: 20.0,
            x2: 30.0,
            y2: 30.0,
        };
        assert_eq!(a.iou(&far), 0.0);
        let half = BoundingBox {
            x1: 5.0,
            y1: 0.0,
            x2: 15.0,
            y2: 10.0,
        };
        assert!((a.iou(&half) - 50.0 / 150.0).abs() < 1e-6);
    }
}
