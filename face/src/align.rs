//! From a face box to the 112×112 crop the embedding model expects: 68 landmarks on the
//! grey 64×64 box, reduced to eyes, nose tip and mouth corners, then the least-squares
//! similarity (rotation, scale, shift) that maps those onto the reference positions.

use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};
use tract_onnx::prelude::*;

use crate::detect::BoundingBox;
use crate::{FaceError, Plan};

pub const LANDMARK_SIZE: usize = 64;
pub const CROP_SIZE: usize = 112;
/// Where the eyes, nose tip and mouth corners sit in the 112×112 crop (ArcFace convention).
const REFERENCE: [(f32, f32); 5] = [
    (38.294_6, 51.696_3),
    (73.531_8, 51.501_4),
    (56.025_2, 71.736_6),
    (41.549_3, 92.365_5),
    (70.729_9, 92.204_1),
];

pub type Point = (f32, f32);

/// The 68 landmarks (iBUG order) of the face in `bbox`, in the photo's coordinates.
pub fn landmarks(
    plan: &Plan,
    image: &RgbImage,
    bbox: &BoundingBox,
) -> Result<Vec<Point>, FaceError> {
    // A square of the box's height around its centre, as the model was trained on.
    let side = bbox.height().max(bbox.width()).max(1.0);
    let (cx, cy) = ((bbox.x1 + bbox.x2) / 2.0, (bbox.y1 + bbox.y2) / 2.0);
    let (w, h) = (image.width() as f32, image.height() as f32);
    let x1 = (cx - side / 2.0).clamp(0.0, w - 1.0);
    let y1 = (cy - side / 2.0).clamp(0.0, h - 1.0);
    let x2 = (cx + side / 2.0).clamp(x1 + 1.0, w);
    let y2 = (cy + side / 2.0).clamp(y1 + 1.0, h);
    let crop = imageops::crop_imm(
        image,
        x1 as u32,
        y1 as u32,
        ((x2 - x1) as u32).max(1),
        ((y2 - y1) as u32).max(1),
    )
    .to_image();
    let (crop_w, crop_h) = (crop.width() as f32, crop.height() as f32);
    let size = LANDMARK_SIZE as u32;
    let grey: GrayImage =
        imageops::grayscale(&imageops::resize(&crop, size, size, FilterType::Triangle));
    let input: Tensor = tract_ndarray::Array4::from_shape_fn(
        (1, 1, LANDMARK_SIZE, LANDMARK_SIZE),
        |(_, _, y, x)| grey.get_pixel(x as u32, y as u32)[0] as f32 / 256.0,
    )
    .into();
    let output = plan.run(tvec!(input.into()))?;
    let values = output[0].to_array_view::<f32>()?;
    if values.len() != 136 {
        return Err(FaceError::Model(format!(
            "the landmark model returned {} values, expected 136",
            values.len()
        )));
    }
    let x1 = x1.floor();
    let y1 = y1.floor();
    Ok(values
        .as_slice()
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|p| (x1 + p[0] * crop_w, y1 + p[1] * crop_h))
        .collect())
}

/// Eye centres, nose tip and mouth corners from the 68 landmarks.
pub fn five_points(points: &[Point]) -> [Point; 5] {
    let mean = |idx: &[usize]| {
        let n = idx.len() as f32;
        let (x, y) = idx
            .iter()
            .fold((0.0, 0.0), |(x, y), &i| (x + points[i].0, y + points[i].1));
        (x / n, y / n)
    };
    [
        mean(&[37, 38, 40, 41]),
        mean(&[43, 44, 46, 47]),
        points[30],
        mean(&[48, 60]),
        mean(&[54, 64]),
    ]
}

/// The 112×112 crop whose `REFERENCE` points line up with `face` (bilinear sampling,
/// black outside the photo).
pub fn warp_to_reference(image: &RgbImage, face: &[Point; 5]) -> RgbImage {
    let (scale, shift) = similarity(face, &REFERENCE);
    // Inverse map: photo point = (crop point - shift) / scale, in complex arithmetic.
    let norm = scale.0 * scale.0 + scale.1 * scale.1;
    let inverse = (scale.0 / norm, -scale.1 / norm);
    let size = CROP_SIZE as u32;
    RgbImage::from_fn(size, size, |x, y| {
        let (qx, qy) = (x as f32 - shift.0, y as f32 - shift.1);
        let px = inverse.0 * qx - inverse.1 * qy;
        let py = inverse.1 * qx + inverse.0 * qy;
        bilinear(image, px, py)
    })
}

/// Least-squares `q ≈ a·p + t` with `a` complex (scale and rotation, no reflection):
/// returns (a, t).
fn similarity(from: &[Point; 5], to: &[Point; 5]) -> (Point, Point) {
    let centroid = |pts: &[Point; 5]| {
        let (x, y) = pts.iter().fold((0.0, 0.0), |(x, y), p| (x + p.0, y + p.1));
        (x / 5.0, y / 5.0)
    };
    let (mp, mq) = (centroid(from), centroid(to));
    let (mut re, mut im, mut energy) = (0.0f32, 0.0f32, 0.0f32);
    for (p, q) in from.iter().zip(to) {
        let (px, py) = (p.0 - mp.0, p.1 - mp.1);
        let (qx, qy) = (q.0 - mq.0, q.1 - mq.1);
        // conj(p) · q
        re += px * qx + py * qy;
        im += px * qy - py * qx;
        energy += px * px + py * py;
    }
    let energy = energy.max(1e-6);
    let a = (re / energy, im / energy);
    let t = (
        mq.0 - (a.0 * mp.0 - a.1 * mp.1),
        mq.1 - (a.1 * mp.0 + a.0 * mp.1),
    );
    (a, t)
}

fn bilinear(image: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let (x0, y0) = (x.floor() as i64, y.floor() as i64);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let pixel = |xx: i64, yy: i64| -> [f32; 3] {
        if xx < 0 || yy < 0 || xx >= w || yy >= h {
            return [0.0; 3];
        }
        let p = image.get_pixel(xx as u32, yy as u32).0;
        [p[0] as f32, p[1] as f32, p[2] as f32]
    };
    let (a, b, c, d) = (
        pixel(x0, y0),
        pixel(x0 + 1, y0),
        pixel(x0, y0 + 1),
        pixel(x0 + 1, y0 + 1),
    );
    let mut out = [0u8; 3];
    for i in 0..3 {
        let top = a[i] * (1.0 - fx) + b[i] * fx;
        let bottom = c[i] * (1.0 - fx) + d[i] * fx;
        out[i] = (top * (1.0 - fy) + bottom * fy).round().clamp(0.0, 255.0) as u8;
    }
    Rgb(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_rotation_scale_and_shift() {
        // q = (2i)·p + (10, 5): scale 2, rotated by 90°.
        let from = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (2.0, 3.0), (-1.0, 4.0)];
        let to = from.map(|(x, y)| (-2.0 * y + 10.0, 2.0 * x + 5.0));
        let (a, t) = similarity(&from, &to);
        assert!((a.0).abs() < 1e-4 && (a.1 - 2.0).abs() < 1e-4, "{a:?}");
        assert!(
            (t.0 - 10.0).abs() < 1e-3 && (t.1 - 5.0).abs() < 1e-3,
            "{t:?}"
        );
    }

    #[test]
    fn warping_reference_points_is_the_identity() {
        let image = RgbImage::from_fn(112, 112, |x, y| Rgb([x as u8, y as u8, 7]));
        let crop = warp_to_reference(&image, &REFERENCE);
        assert_eq!(crop.get_pixel(20, 30), &Rgb([20, 30, 7]));
        assert_eq!(crop.get_pixel(100, 5), &Rgb([100, 5, 7]));
    }
}
