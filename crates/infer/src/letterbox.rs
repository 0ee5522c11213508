//! The geometry of fitting a frame into the network input: the largest scale that keeps the
//! aspect ratio, centred, with a grey border. Inference letterboxes with it and maps detections
//! back through it; training's augmentation and batching (percept-data) use the same geometry
//! for frames and labels.

/// Grey level of the letterbox border in images.
pub const PAD_VALUE: u8 = 114;

/// A box given by its corners `[x1, y1, x2, y2]` in continuous pixel coordinates, which
/// [`Letterbox`] maps between image and network pixels. A trait so that percept-data's labelled
/// boxes (which carry a class) map through the same arithmetic as plain corner arrays.
pub trait Corners {
    /// `[x1, y1, x2, y2]`.
    fn corners(&self) -> [f32; 4];
    /// The same box (its other fields unchanged) with corners `c`.
    fn with_corners(&self, c: [f32; 4]) -> Self;
}

impl Corners for [f32; 4] {
    fn corners(&self) -> [f32; 4] {
        *self
    }

    fn with_corners(&self, c: [f32; 4]) -> Self {
        c
    }
}

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
    pub fn to_network<C: Corners>(&self, b: &C) -> C {
        let [x1, y1, x2, y2] = b.corners();
        b.with_corners([
            x1 * self.scale + self.pad_x,
            y1 * self.scale + self.pad_y,
            x2 * self.scale + self.pad_x,
            y2 * self.scale + self.pad_y,
        ])
    }

    /// A box in network pixels back to source-image pixels (inverse of
    /// [`to_network`](Self::to_network)).
    pub fn to_image<C: Corners>(&self, b: &C) -> C {
        let [x1, y1, x2, y2] = b.corners();
        b.with_corners([
            (x1 - self.pad_x) / self.scale,
            (y1 - self.pad_y) / self.scale,
            (x2 - self.pad_x) / self.scale,
            (y2 - self.pad_y) / self.scale,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_maps_to_the_network_and_back() {
        // 1280x720 into 640x384: scale 0.5, resized 640x360, 12 rows of border above.
        let lb = Letterbox::fit(1280, 720, 640, 384);
        assert_eq!(
            lb,
            Letterbox {
                scale: 0.5,
                pad_x: 0.0,
                pad_y: 12.0
            }
        );
        let b = [100.0, 200.0, 300.0, 400.0];
        let n = lb.to_network(&b);
        assert_eq!(n, [50.0, 112.0, 150.0, 212.0]);
        assert_eq!(lb.to_image(&n), b);
        // A tall frame is bordered left and right: 300x600 into 320x320 is scale 0.533...,
        // resized 160x320, 80 columns each side.
        let lb = Letterbox::fit(300, 600, 320, 320);
        assert_eq!((lb.pad_x, lb.pad_y), (80.0, 0.0));
        let back = lb.to_image(&lb.to_network(&[30.0, 60.0, 270.0, 540.0]));
        for (got, want) in back.iter().zip([30.0, 60.0, 270.0, 540.0]) {
            assert!((got - want).abs() < 1e-3, "{back:?}");
        }
    }
}
