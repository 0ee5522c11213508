//! Reading source images and label masks from disk, with the same size limits as shards.

use std::io::Cursor;
use std::path::Path;

use image::codecs::jpeg::JpegDecoder;
use image::{ColorType, DynamicImage, GrayImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use percept_data::shard::{check_jpeg_complete, MAX_IMAGE_PIXELS};

/// Reads an image file (JPEG or PNG, any colour type) as RGB.
///
/// Returns the original bytes too when the file is an RGB JPEG, so the shard can keep them
/// as they are. The size is checked from the header before any pixel buffer is allocated.
pub fn read_image(path: &Path) -> Result<(RgbImage, Option<Vec<u8>>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the image: {e}"))?;
    decode_image(bytes)
}

/// [`read_image`] of a file's bytes (the fuzz target `image_import` calls it directly).
pub fn decode_image(bytes: Vec<u8>) -> Result<(RgbImage, Option<Vec<u8>>), String> {
    let format = image::guess_format(&bytes)
        .map_err(|_| "not an image file this importer reads (JPEG or PNG)".to_string())?;
    if format == ImageFormat::Jpeg {
        // The decoder pads a truncated JPEG without a word; refuse it like any bad image.
        check_jpeg_complete(&bytes)?;
        let decoder =
            JpegDecoder::new(Cursor::new(&bytes)).map_err(|e| format!("bad JPEG: {e}"))?;
        let (w, h) = decoder.dimensions();
        check_size(w, h)?;
        if decoder.color_type() == ColorType::Rgb8 {
            let mut image = RgbImage::new(w, h);
            decoder
                .read_image(&mut image)
                .map_err(|e| format!("bad JPEG: {e}"))?;
            return Ok((image, Some(bytes)));
        }
    }
    let image = decode(&bytes, format)?;
    Ok((image.to_rgb8(), None))
}

/// Reads a single-channel 8-bit PNG label mask (class ids or 0/255 values), refusing other
/// colour types: converting a palette or RGB image to grey would silently change the ids.
pub fn read_grey_png(path: &Path) -> Result<GrayImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the mask: {e}"))?;
    match decode(&bytes, ImageFormat::Png)? {
        DynamicImage::ImageLuma8(mask) => Ok(mask),
        other => Err(format!(
            "the mask is {:?}; expected an 8-bit single-channel (grey) PNG",
            other.color()
        )),
    }
}

/// Reads a PNG mask of any colour type as 8-bit grey (luma), for formats whose masks are
/// black and white but sometimes saved in colour.
pub fn read_png_as_grey(path: &Path) -> Result<GrayImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read the mask: {e}"))?;
    Ok(decode(&bytes, ImageFormat::Png)?.to_luma8())
}

fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, String> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Bound what a forged header can make us allocate: the largest frame a shard holds.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 4 + (64 << 20));
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| format!("bad {format:?}: {e}"))?;
    let (w, h) = decoder.dimensions();
    check_size(w, h)?;
    DynamicImage::from_decoder(decoder).map_err(|e| format!("bad {format:?}: {e}"))
}

fn check_size(w: u32, h: u32) -> Result<(), String> {
    if w == 0 || h == 0 || u64::from(w) * u64::from(h) > MAX_IMAGE_PIXELS {
        return Err(format!(
            "the image is {w}x{h}; shards hold 1..={MAX_IMAGE_PIXELS} pixels"
        ));
    }
    Ok(())
}

/// Checks a mask's size against its image's.
pub fn check_mask_size(what: &str, mask: &GrayImage, image: &RgbImage) -> Result<(), String> {
    if mask.dimensions() != image.dimensions() {
        let ((mw, mh), (w, h)) = (mask.dimensions(), image.dimensions());
        return Err(format!("the {what} is {mw}x{mh} but its image is {w}x{h}"));
    }
    Ok(())
}
