//! The geometry of fitting a frame into the network input: the largest scale that keeps the
//! aspect ratio, centred, with a grey border. Augmentation warps through it and batching
//! letterboxes with it; both map labels with it.

use crate::sample::BoxLabel;

/// Grey level of the letterbox border in images.
pub const PAD_VALUE: u8 = 114;

/// The geometry of one letterbox: network = image * scale + pad.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Factor from source pixels to network pixels (the same on both axes).
    pub scale: f32,
    /// Left border in network pixels (a whole number).
    pub pad_x: f32,
    /// Top border in network pixels (a whole number).
    pub pad_y: f32,
}

impl Letterbox {
    /// Letterbox of a `src_w x src_h` image into `dst_w x dst_h`: the largest scale that fits,
    /// the resized image centred (borders rounded down on the left/top).
    ///
    /// Degenerate sizes (a side of 0) give scale 1 and no padding.
    pub fn fit(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Letterbox {
        if src_w == 0 || src_h == 0 || dst_w == 0 || dst_h == 0 {
            return Letterbox {
                scale: 1.0,
                pad_x: 0.0,
                pad_y: 0.0,
            };
        }
        let scale = (dst_w as f32 / src_w as f32).min(dst_h as f32 / src_h as f32);
        let mut lb = Letterbox {
            scale,
            pad_x: 0.0,
            pad_y: 0.0,
        };
        let (w, h) = lb.resized_size(src_w, src_h, dst_w, dst_h);
        lb.pad_x = ((dst_w - w) / 2) as f32;
        lb.pad_y = ((dst_h - h) / 2) as f32;
        lb
    }

    /// Size of the resized image inside the canvas, `(width, height)`, each in
    /// `1..=dst` (rounded to the nearest pixel).
    pub fn resized_size(&self, src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> (u32, u32) {
        let side = |src: u32, dst: u32| ((src as f32 * self.scale).round() as u32).clamp(1, dst);
        (side(src_w, dst_w), side(src_h, dst_h))
    }

    /// A box in source-image pixels to network pixels.
    pub fn to_network(&self, b: &BoxLabel) -> BoxLabel {
        BoxLabel {
            class: b.class,
            x1: b.x1 * self.scale + self.pad_x,
            y1: b.y1 * self.scale + self.pad_y,
            x2: b.x2 * self.scale + self.pad_x,
            y2: b.y2 * self.scale + self.pad_y,
        }
    }

    /// A box in network pixels back to source-image pixels (inverse of
    /// [`to_network`](Self::to_network)).
    pub fn to_image(&self, b: &BoxLabel) -> BoxLabel {
        BoxLabel {
            class: b.class,
            x1: (b.x1 - self.pad_x) / self.scale,
            y1: (b.y1 - self.pad_y) / self.scale,
            x2: (b.x2 - self.pad_x) / self.scale,
            y2: (b.y2 - self.pad_y) / self.scale,
        }
    }
}
