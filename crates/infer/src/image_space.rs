//! Network outputs in image space: logits to 0/1 masks, and boxes and masks in network
//! pixels mapped back through the letterbox to the frame's own pixels. Shared by inference
//! ([`crate::Detector`]), evaluation (metrics at original resolution, example overlays) and
//! prediction (percept-eval).

use burn::prelude::*;
use image::{imageops, GrayImage};

use crate::letterbox::Letterbox;

/// Binary masks (logit > 0) of `[batch, 1, h, w]` logits, flattened.
pub fn masks(logits: Tensor<impl Backend, 4>) -> Vec<u8> {
    logits
        .greater_elem(0.0)
        .int()
        .into_data()
        .convert::<u8>()
        .to_vec()
        .expect("u8 data")
}

/// A network-resolution 0/1 mask cut out of the letterbox and resized (nearest) to the
/// `img_w x img_h` image.
pub fn mask_to_image(net_mask: &GrayImage, lb: &Letterbox, img_w: u32, img_h: u32) -> GrayImage {
    let (w, h) = net_mask.dimensions();
    let x0 = (lb.pad_x.floor().max(0.0) as u32).min(w - 1);
    let y0 = (lb.pad_y.floor().max(0.0) as u32).min(h - 1);
    let cw = ((img_w as f32 * lb.scale).round() as u32).clamp(1, w - x0);
    let ch = ((img_h as f32 * lb.scale).round() as u32).clamp(1, h - y0);
    let crop = imageops::crop_imm(net_mask, x0, y0, cw, ch).to_image();
    imageops::resize(&crop, img_w, img_h, imageops::FilterType::Nearest)
}

/// A box in network pixels mapped back to the `img_w x img_h` image and clipped to it.
pub fn box_to_image(bbox: [f32; 4], lb: &Letterbox, img_w: u32, img_h: u32) -> [f32; 4] {
    let [x1, y1, x2, y2] = lb.to_image(&bbox);
    let (w, h) = (img_w as f32, img_h as f32);
    [
        x1.clamp(0.0, w),
        y1.clamp(0.0, h),
        x2.clamp(0.0, w),
        y2.clamp(0.0, h),
    ]
}

/// The `[batch, 1, h, w]` mask logits of image `j` as a `w x h` 0/1 mask (logit > 0).
pub fn network_mask(masks: &[u8], j: usize, w: usize, h: usize) -> GrayImage {
    let pixels = w * h;
    GrayImage::from_raw(
        w as u32,
        h as u32,
        masks[j * pixels..(j + 1) * pixels].to_vec(),
    )
    .expect("mask size")
}
