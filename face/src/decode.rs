//! JPEG/PNG bytes → RGB pixels, refusing decompression bombs before decoding.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::FaceError;

/// Bounds on what is decoded: a small file can declare a huge image.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Largest width or height accepted.
    pub max_side: u32,
    /// Largest width × height accepted.
    pub max_pixels: u64,
}

impl Default for Limits {
    /// 8192 px a side and 40 MP: every phone photo, and at most ~120 MB of RGB while decoding.
    fn default() -> Self {
        Limits {
            max_side: 8192,
            max_pixels: 40_000_000,
        }
    }
}

/// Decodes a JPEG or PNG (other formats are refused), applying its EXIF orientation.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<RgbImage, FaceError> {
    let undecodable = |e: image::ImageError| FaceError::Undecodable(e.to_string());
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| FaceError::Undecodable(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
        Some(other) => {
            return Err(FaceError::Undecodable(format!(
                "{other:?} images are not accepted (JPEG or PNG)"
            )));
        }
        None => {
            return Err(FaceError::Undecodable("not a JPEG or PNG file".to_string()));
        }
    }
    let mut decoder = reader.into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    if width.max(height) > limits.max_side {
        return Err(FaceError::TooLarge(format!(
            "{width}×{height} px: at most {} px a side",
            limits.max_side
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(FaceError::TooLarge(format!(
            "{width}×{height} px: at most {} pixels",
            limits.max_pixels
        )));
    }
    if width == 0 || height == 0 {
        return Err(FaceError::Undecodable("the image is empty".into()));
    }
    let orientation = decoder.orientation().map_err(undecodable)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(undecodable)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn png_and_jpeg_decode_to_rgb() {
        let image = decode(&png(7, 5), &Limits::default()).unwrap();
        assert_eq!(image.dimensions(), (7, 5));
        let mut jpeg = Vec::new();
        RgbImage::new(16, 8)
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(
            decode(&jpeg, &Limits::default()).unwrap().dimensions(),
            (16, 8)
        );
    }

    #[test]
    fn garbage_and_truncated_files_are_undecodable() {
        let err = decode(b"definitely not an image", &Limits::default()).unwrap_err();
        assert!(matches!(err, FaceError::Undecodable(_)), "{err:?}");
        let whole = png(64, 64);
        let err = decode(&whole[..whole.len() / 2], &Limits::default()).unwrap_err();
        assert!(matches!(err, FaceError::Undecodable(_)), "{err:?}");
    }

    #[test]
    fn other_formats_are_refused_by_name() {
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[0; 32]);
        let err = decode(&gif, &Limits::default()).unwrap_err();
        assert!(
            matches!(&err, FaceError::Undecodable(m) if m.contains("Gif")),
            "{err:?}"
        );
    }

    #[test]
    fn oversized_images_are_refused_before_decoding() {
        // A 20000×20000 PNG header: a decompression bomb must be refused from its header.
        let limits = Limits::default();
        let err = decode(&bomb_header(20_000, 20_000), &limits).unwrap_err();
        assert!(
            matches!(&err, FaceError::TooLarge(m) if m.contains("a side")),
            "{err:?}"
        );
        let small = Limits {
            max_side: 100,
            max_pixels: 50 * 50,
        };
        let err = decode(&png(60, 60), &small).unwrap_err();
        assert!(
            matches!(&err, FaceError::TooLarge(m) if m.contains("pixels")),
            "{err:?}"
        );
        assert!(decode(&png(50, 50), &small).is_ok());
    }

    /// A PNG declaring `width`×`height`, with a few bytes of pixel data: what a bomb
    /// looks like until it is inflated.
    fn bomb_header(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0, 0])
            .unwrap();
        drop(writer);
        out
    }
}
