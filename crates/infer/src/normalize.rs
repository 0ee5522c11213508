//! The network input from an RGB frame: letterboxed to the input size through the warp
//! ([`crate::warp`]), then `(pixel / 255 - mean) / std` per channel, as `[3, height, width]`
//! floats. Training's batches (percept-data) are normalised by the same table and writer.

use std::mem::MaybeUninit;

use image::RgbImage;

use crate::input::{Normalization, NORM_MEAN, NORM_STD};
use crate::letterbox::{Letterbox, PAD_VALUE};
use crate::warp::{filled_canvas, run_simd, warp_image, Placement, SimdKernel};

/// Letterboxes an image to `width x height` (bilinear, grey-[`PAD_VALUE`] border).
pub fn letterbox_image(img: &RgbImage, width: u32, height: u32) -> (RgbImage, Letterbox) {
    letterbox_image_padded(img, width, height, PAD_VALUE)
}

/// [`letterbox_image`] with a border of grey level `pad` (a model card's `pad_value`).
pub fn letterbox_image_padded(
    img: &RgbImage,
    width: u32,
    height: u32,
    pad: u8,
) -> (RgbImage, Letterbox) {
    let lb = Letterbox::fit(img.width(), img.height(), width, height);
    let mut out = filled_canvas(width, height, pad);
    warp_image(img, &Placement::letterbox(&lb, width, height), &mut out);
    (out, lb)
}

/// `lut[c][v]` = normalised value of channel `c` at 8-bit level `v`: one table lookup per
/// value instead of a division.
pub fn norm_lut(mean: [f32; 3], std: [f32; 3]) -> [[f32; 256]; 3] {
    let mut lut = [[0.0; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - mean[c]) / std[c];
        }
    }
    lut
}

/// Writes `img`'s pixels, normalised through `lut` ([`norm_lut`]), into the three planes of
/// `slots` (`[3, height, width]`: `slots.len() / 3` values a plane) and returns how many
/// pixels it wrote: all of them when the planes are the image's size. One pass over the
/// interleaved pixels; the slots need not be initialised (for a batch, zero-filling first
/// costs about as much as the writing).
pub fn write_chw(img: &RgbImage, slots: &mut [MaybeUninit<f32>], lut: &[[f32; 256]; 3]) -> usize {
    run_simd(WriteChw { img, slots, lut })
}

struct WriteChw<'a> {
    img: &'a RgbImage,
    slots: &'a mut [MaybeUninit<f32>],
    lut: &'a [[f32; 256]; 3],
}

impl SimdKernel for WriteChw<'_> {
    type Output = usize;

    #[inline(always)]
    fn run(self) -> usize {
        let plane = self.slots.len() / 3;
        let (r, rest) = self.slots.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        let pixels = self.img.as_raw().chunks_exact(3);
        // The zip below runs exactly this often (a counter in the loop would keep it scalar).
        let written = pixels.len().min(plane);
        for (((px, r), g), b) in pixels.zip(r).zip(g).zip(b) {
            r.write(self.lut[0][px[0] as usize]);
            g.write(self.lut[1][px[1] as usize]);
            b.write(self.lut[2][px[2] as usize]);
        }
        written
    }
}

/// An RGB image as `[3, height, width]` floats normalised with `mean` and `std`.
pub fn image_to_chw_with(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let pixels = img.width() as usize * img.height() as usize;
    let mut out = Vec::with_capacity(3 * pixels);
    let written = write_chw(
        img,
        &mut out.spare_capacity_mut()[..3 * pixels],
        &norm_lut(mean, std),
    );
    assert_eq!(written, pixels, "image of {written} pixels, not {pixels}");
    // SAFETY: `write_chw` wrote index `i` of all three planes for each of the `pixels` pixels
    // it counted, which is every slot of `0..3 * pixels`.
    unsafe { out.set_len(3 * pixels) };
    out
}

/// An RGB image as `[3, height, width]` floats normalised with [`NORM_MEAN`]/[`NORM_STD`]
/// (the predictor's input).
pub fn image_to_chw(img: &RgbImage) -> Vec<f32> {
    image_to_chw_with(img, NORM_MEAN, NORM_STD)
}

/// A frame as the network input a model card describes: letterboxed to `width x height` with
/// the card's border, normalised with its mean and std: `[3, height, width]` floats, and the
/// letterbox that maps outputs back to the frame.
pub fn prepare(
    img: &RgbImage,
    width: u32,
    height: u32,
    norm: &Normalization,
) -> (Vec<f32>, Letterbox) {
    let (letterboxed, lb) = letterbox_image_padded(img, width, height, norm.pad_value);
    (image_to_chw_with(&letterboxed, norm.mean, norm.std), lb)
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    #[test]
    fn a_frame_is_letterboxed_and_normalised_per_channel() {
        // 4x2 red frame into 4x4: scale 1, one grey row above and below.
        let img = RgbImage::from_pixel(4, 2, Rgb([255, 0, 51]));
        let (chw, lb) = prepare(&img, 4, 4, &Normalization::default());
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (1.0, 0.0, 1.0));
        assert_eq!(chw.len(), 3 * 16);
        let norm = |v: f32, c: usize| (v / 255.0 - NORM_MEAN[c]) / NORM_STD[c];
        let at = |c: usize, y: usize, x: usize| chw[c * 16 + y * 4 + x];
        for (c, level) in [255.0, 0.0, 51.0].into_iter().enumerate() {
            for x in 0..4 {
                assert_eq!(at(c, 0, x), norm(114.0, c), "border row, channel {c}");
                assert_eq!(at(c, 1, x), norm(level, c), "frame, channel {c}");
                assert_eq!(at(c, 2, x), norm(level, c), "frame, channel {c}");
                assert_eq!(at(c, 3, x), norm(114.0, c), "border row, channel {c}");
            }
        }
        // A card's own statistics and border are used.
        let grey = Normalization {
            mean: [0.5; 3],
            std: [0.5; 3],
            pad_value: 0,
        };
        let (chw, _) = prepare(&img, 4, 4, &grey);
        assert_eq!(chw[0], -1.0);
        assert_eq!(chw[4], 1.0);
    }
}
