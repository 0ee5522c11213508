//! Prediction on one image: letterbox, forward, decode, map back to the image, overlay.

use std::path::{Path, PathBuf};

use burn::vision::VisionBackend;
use image::{GrayImage, ImageDecoder, RgbImage};
use percept_data::shard::MAX_IMAGE_PIXELS;
use percept_infer::{detect_with, Detections};
use percept_model::PerceptionModel;
use serde::Serialize;

use crate::metrics::Detection;
use crate::model_file::ModelCard;
use crate::overlay::draw_overlay;
use crate::EvalError;
use percept_data::{save_png_atomic, write_atomic};

/// A detection in original image pixels, as written to JSON: inference's own type.
pub use percept_infer::Detection as PredictedBox;

/// Everything predicted for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    pub width: u32,
    pub height: u32,
    pub detections: Vec<PredictedBox>,
    /// Fraction of image pixels predicted drivable.
    pub drivable_fraction: Option<f64>,
    /// Image pixels predicted to be lane line.
    pub lane_pixels: Option<u64>,
    /// The drivable-area mask in image pixels, 255 drivable, 0 not.
    #[serde(skip)]
    pub drivable: Option<GrayImage>,
    /// The lane-line mask in image pixels, 255 on a line, 0 off.
    #[serde(skip)]
    pub lanes: Option<GrayImage>,
}

/// Reads an image file (JPEG, PNG), naming the file on failure. A truncated JPEG is refused:
/// the decoder would pad it with grey and predict on that without a word.
pub fn read_image(path: &Path) -> Result<RgbImage, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let bad = |message: String| EvalError::Image {
        path: path.to_path_buf(),
        message,
    };
    let format = image::guess_format(&bytes)
        .map_err(|e| bad(format!("{e} (percept reads JPEG and PNG)")))?;
    if format == image::ImageFormat::Jpeg {
        percept_data::shard::check_jpeg_complete(&bytes).map_err(bad)?;
    }
    let decode_error = |e: image::ImageError| bad(format!("{e} (percept reads JPEG and PNG)"));
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    // A forged header must not make predict allocate more than the largest frame a shard
    // holds (the importers' bound).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4 + (64 << 20));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(bad(format!(
            "the image is {w}x{h}; percept reads images of 1..={MAX_IMAGE_PIXELS} pixels"
        )));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok(img.to_rgb8())
}

/// Runs `net` on `image`: inference's path ([`detect_with`]), plus the mask statistics.
pub fn predict_image<B: VisionBackend>(
    net: &impl PerceptionModel<B>,
    card: &ModelCard,
    image: &RgbImage,
    image_path: &Path,
    device: &B::Device,
) -> Prediction {
    let Detections {
        boxes,
        drivable,
        lanes,
    } = detect_with(net, card, image, device);
    let (iw, ih) = image.dimensions();
    let count = |m: &GrayImage| m.pixels().filter(|p| p.0[0] > 0).count() as u64;
    Prediction {
        image: image_path.to_path_buf(),
        width: iw,
        height: ih,
        detections: boxes,
        drivable_fraction: drivable
            .as_ref()
            .map(|m| count(m) as f64 / (iw as f64 * ih as f64)),
        lane_pixels: lanes.as_ref().map(count),
        drivable,
        lanes,
    }
}

/// Writes the overlay PNG and the detections JSON of a prediction.
pub fn write_prediction(
    prediction: &Prediction,
    image: &RgbImage,
    card: &ModelCard,
    png: &Path,
    json: &Path,
) -> Result<(), EvalError> {
    let detections: Vec<Detection> = prediction
        .detections
        .iter()
        .map(|d| Detection::new(d.class, d.score, d.bbox))
        .collect();
    let overlay = draw_overlay(
        image,
        prediction.drivable.as_ref(),
        prediction.lanes.as_ref(),
        &detections,
        &card.classes,
    );
    save_png_atomic(&overlay, png)?;
    let text = serde_json::to_string_pretty(prediction).expect("serialises");
    Ok(write_atomic(json, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use image::codecs::jpeg::JpegEncoder;
    use image::Rgb;

    use super::*;

    #[test]
    fn a_truncated_jpeg_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = RgbImage::from_fn(48, 32, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&image)
            .unwrap();
        let whole = dir.path().join("whole.jpg");
        std::fs::write(&whole, &jpeg).unwrap();
        assert_eq!(read_image(&whole).unwrap().dimensions(), (48, 32));

        let cut = dir.path().join("cut.jpg");
        std::fs::write(&cut, &jpeg[..jpeg.len() - 20]).unwrap();
        assert_eq!(
            read_image(&cut).unwrap_err().to_string(),
            format!(
                "image {}: the JPEG is truncated: its {} bytes end in the image data, before \
                 the end-of-image marker (FFD9)",
                cut.display(),
                jpeg.len() - 20
            )
        );
    }
}
