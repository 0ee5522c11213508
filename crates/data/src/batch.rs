//! Network input preparation: letterboxing to the network size, normalisation, and collating
//! frames into flat batch arrays that the model crate turns into tensors.
//!
//! Images are resized keeping their aspect ratio and centred on a canvas of the network size;
//! the border is grey 114 in images and 0 (not drivable, no lane) in masks. Resampling is the
//! warp of percept-infer (bilinear with box pre-averaging below half scale for images, nearest
//! for masks), which [`crate::augment`] warps through too, so letterboxed and augmented frames
//! are resampled the same way. Pixel
//! values are normalised as `(v / 255 - NORM_MEAN[c]) / NORM_STD[c]`.

use std::mem::MaybeUninit;

use image::{GrayImage, RgbImage};
use rayon::prelude::*;

use percept_infer::warp::{run_simd, warp_masks, Placement, SimdKernel};
// The letterbox and normalisation of one frame are inference's (percept-infer): one copy, so a
// deployed model sees frames prepared exactly as in training and evaluation.
pub use percept_infer::{image_to_chw, letterbox_image, NORM_MEAN, NORM_STD};
use percept_infer::{norm_lut, write_chw};

use crate::augment::{augment, AugmentParams, Augmented};
pub use crate::letterbox::{Letterbox, PAD_VALUE};
use crate::manifest::LabelledTasks;
use crate::sample::{BoxLabel, IgnoreRegion, Sample, TrafficSide};

/// Letterboxes a 0/1 mask to `width x height` (nearest, so values stay 0/1; border 0).
pub fn letterbox_mask(mask: &GrayImage, width: u32, height: u32) -> (GrayImage, Letterbox) {
    let lb = Letterbox::fit(mask.width(), mask.height(), width, height);
    let mut out = GrayImage::new(width, height);
    warp_masks(
        [mask],
        &Placement::letterbox(&lb, width, height),
        [&mut out],
    );
    (out, lb)
}

/// A collated batch, as flat row-major arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch_size, 3, height, width]`, RGB, normalised with [`NORM_MEAN`]/[`NORM_STD`].
    pub images: Vec<f32>,
    /// `[batch_size, height, width]`, 1.0 drivable, 0.0 not (border 0).
    pub drivable: Vec<f32>,
    /// `[batch_size, height, width]`, 1.0 lane marking, 0.0 not (border 0).
    pub lanes: Vec<f32>,
    /// Per image, boxes in network pixel coordinates, clipped to the canvas.
    pub boxes: Vec<Vec<BoxLabel>>,
    /// Per image, ignore regions in network pixel coordinates (see [`Augmented::ignore`]).
    pub ignore: Vec<Vec<IgnoreRegion>>,
    /// Per image, which tasks its dataset labels ([`LabelledTasks::ALL`] unless the loader
    /// says otherwise): an unlabelled task contributes no loss and no metric for the image.
    pub tasks: Vec<LabelledTasks>,
    /// Per image, the traffic side it shows (after any flip).
    pub traffic_sides: Vec<TrafficSide>,
    pub batch_size: usize,
    pub height: usize,
    pub width: usize,
}

impl Batch {
    /// The batch cut into `parts` consecutive batches of equal size: part `r` holds images
    /// `r * n .. (r + 1) * n` with `n = batch_size / parts` (what data-parallel rank `r`
    /// trains on).
    ///
    /// # Panics
    /// If `parts` is 0 or does not divide `batch_size`; the loader builds batches of
    /// `batch_size * devices` images, so it always does.
    pub fn split(&self, parts: usize) -> Vec<Batch> {
        assert!(
            parts > 0 && self.batch_size.is_multiple_of(parts),
            "a batch of {} images cannot be cut into {parts} equal parts",
            self.batch_size
        );
        let n = self.batch_size / parts;
        let plane = self.height * self.width;
        (0..parts)
            .map(|r| {
                let images = r * n..(r + 1) * n;
                Batch {
                    images: self.images[images.start * 3 * plane..images.end * 3 * plane].to_vec(),
                    drivable: self.drivable[images.start * plane..images.end * plane].to_vec(),
                    lanes: self.lanes[images.start * plane..images.end * plane].to_vec(),
                    boxes: self.boxes[images.clone()].to_vec(),
                    ignore: self.ignore[images.clone()].to_vec(),
                    tasks: self.tasks[images.clone()].to_vec(),
                    traffic_sides: self.traffic_sides[images].to_vec(),
                    batch_size: n,
                    height: self.height,
                    width: self.width,
                }
            })
            .collect()
    }
}

/// `images` (each `width * height = pixels`) as normalised `[n, 3, height, width]` floats,
/// on rayon threads, without zero-filling the floats first (for a batch that pass costs about
/// as much as the writing).
fn chw_images(images: &[&RgbImage], pixels: usize) -> Vec<f32> {
    let lut = norm_lut(NORM_MEAN, NORM_STD);
    let len = images.len() * 3 * pixels;
    let mut out = Vec::with_capacity(len);
    if pixels > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(3 * pixels)
            .zip(images)
            .for_each(|(slots, img)| {
                let written = write_chw(img, slots, &lut);
                assert_eq!(written, pixels, "image of {written} pixels, not {pixels}");
            });
    }
    // SAFETY: each block of `3 * pixels` slots is three planes of `pixels`, and `write_chw`
    // writes index `i` of all three for each of the `written == pixels` pixels it counts; a
    // short image panics out of `for_each` before this line.
    unsafe { out.set_len(len) };
    out
}

/// A mask as 1.0 (non-zero) / 0.0, row-major.
fn mask_plane(mask: &GrayImage) -> impl Iterator<Item = f32> + '_ {
    let pixels = mask.width() as usize * mask.height() as usize;
    mask.as_raw()[..pixels]
        .iter()
        .map(|&v| if v > 0 { 1.0 } else { 0.0 })
}

/// `count` planes of `plane` floats, plane `i` taken from `values(i)`, on rayon threads.
///
/// The floats are not zero-filled first (see [`chw_images`]): each plane is written in place
/// and counted, and a short one panics.
fn planes<I: Iterator<Item = f32>>(
    count: usize,
    plane: usize,
    values: impl Fn(usize) -> I + Sync,
) -> Vec<f32> {
    let len = count * plane;
    let mut out = Vec::with_capacity(len);
    if plane > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(i, slots)| {
                let written = run_simd(WritePlane {
                    slots,
                    values: values(i),
                });
                assert_eq!(written, plane, "plane {i} has {written} of {plane} values");
            });
    }
    // SAFETY: every plane of `0..len` was written whole (counted above; a short plane panics
    // out of `for_each` before this line).
    unsafe { out.set_len(len) };
    out
}

/// Writes `values` into `slots` and counts them.
struct WritePlane<'a, I> {
    slots: &'a mut [MaybeUninit<f32>],
    values: I,
}

impl<I: Iterator<Item = f32>> SimdKernel for WritePlane<'_, I> {
    type Output = usize;

    #[inline(always)]
    fn run(self) -> usize {
        let mut written = 0;
        for (slot, v) in self.slots.iter_mut().zip(self.values) {
            slot.write(v);
            written += 1;
        }
        written
    }
}

/// Letterboxes every sample to `width x height` (on rayon threads) and stacks them: each
/// sample through [`augment`] with [`AugmentParams::identity`] (evaluation's input).
///
/// Boxes are mapped to network pixels and clipped to the canvas; boxes narrower or lower than
/// [`DEFAULT_MIN_BOX_SIDE`](crate::augment::DEFAULT_MIN_BOX_SIDE) network pixels afterwards
/// are dropped.
pub fn collate(samples: &[Sample], width: u32, height: u32) -> Batch {
    let items: Vec<Augmented> = samples
        .par_iter()
        .map(|s| augment(s, &AugmentParams::identity(), width, height))
        .collect();
    stack(&items, width as usize, height as usize)
}

/// Stacks augmented frames (on rayon threads): images normalised to CHW floats, masks as
/// 0.0/1.0 (non-zero counts as set).
///
/// # Panics
///
/// When the frames differ in size: they come from one loader with one network size.
pub fn collate_augmented(items: &[Augmented]) -> Batch {
    let (w, h) = items.first().map_or((0, 0), |a| a.image.dimensions());
    stack(items, w as usize, h as usize)
}

fn stack(items: &[Augmented], w: usize, h: usize) -> Batch {
    for (i, a) in items.iter().enumerate() {
        let sizes = [
            a.image.dimensions(),
            a.drivable.dimensions(),
            a.lanes.dimensions(),
        ];
        assert!(
            sizes
                .iter()
                .all(|&(iw, ih)| (iw as usize, ih as usize) == (w, h)),
            "collate: item {i} has image/drivable/lanes sizes {sizes:?}, the batch {w}x{h}"
        );
    }
    let (hw, n) = (w * h, items.len());
    let images: Vec<&RgbImage> = items.iter().map(|a| &a.image).collect();
    let images = chw_images(&images, hw);
    let drivable = planes(n, hw, |i| mask_plane(&items[i].drivable));
    let lanes = planes(n, hw, |i| mask_plane(&items[i].lanes));
    Batch {
        images,
        drivable,
        lanes,
        boxes: items.iter().map(|a| a.boxes.clone()).collect(),
        ignore: items.iter().map(|a| a.ignore.clone()).collect(),
        tasks: vec![LabelledTasks::ALL; n],
        traffic_sides: items.iter().map(|a| a.traffic_side).collect(),
        batch_size: n,
        height: h,
        width: w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Conditions;
    use image::{Luma, Rgb};

    fn bx(x1: f32, y1: f32, x2: f32, y2: f32) -> BoxLabel {
        BoxLabel {
            class: 3,
            x1,
            y1,
            x2,
            y2,
        }
    }

    #[test]
    fn letterbox_1280x720_to_640x384_by_hand() {
        let lb = Letterbox::fit(1280, 720, 640, 384);
        // scale = min(640/1280, 384/720) = 0.5; resized 640x360; pad_y = (384-360)/2 = 12.
        assert_eq!(
            lb,
            Letterbox {
                scale: 0.5,
                pad_x: 0.0,
                pad_y: 12.0
            }
        );
        let n = lb.to_network(&bx(100.0, 200.0, 300.0, 400.0));
        assert_eq!(n, bx(50.0, 112.0, 150.0, 212.0));
        assert_eq!(lb.to_image(&n), bx(100.0, 200.0, 300.0, 400.0));

        // Portrait into landscape pads x: 300x600 -> 640x384: scale 0.64, 192x384, pad_x 224.
        let lb = Letterbox::fit(300, 600, 640, 384);
        assert!((lb.scale - 0.64).abs() < 1e-6);
        assert_eq!((lb.pad_x, lb.pad_y), (224.0, 0.0));
    }

    #[test]
    fn letterbox_box_round_trip() {
        for (sw, sh, dw, dh) in [
            (1280, 720, 640, 384),
            (1242, 375, 320, 192),
            (333, 777, 416, 416),
            (64, 64, 1280, 720),
        ] {
            let lb = Letterbox::fit(sw, sh, dw, dh);
            for b in [
                bx(0.0, 0.0, sw as f32, sh as f32),
                bx(12.3, 45.6, 78.9, 60.1),
            ] {
                let back = lb.to_image(&lb.to_network(&b));
                for (a, b) in [
                    (back.x1, b.x1),
                    (back.y1, b.y1),
                    (back.x2, b.x2),
                    (back.y2, b.y2),
                ] {
                    assert!((a - b).abs() < 1e-4, "{sw}x{sh}->{dw}x{dh}: {a} vs {b}");
                }
            }
            // The full image maps inside the canvas.
            let full = lb.to_network(&bx(0.0, 0.0, sw as f32, sh as f32));
            assert!(full.x1 >= 0.0 && full.y1 >= 0.0);
            assert!(full.x2 <= dw as f32 + 1e-3 && full.y2 <= dh as f32 + 1e-3);
        }
    }

    #[test]
    fn letterbox_image_pads_with_grey_and_masks_with_zero() {
        let img = RgbImage::from_pixel(8, 4, Rgb([200, 10, 30]));
        let (out, lb) = letterbox_image(&img, 8, 8);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (1.0, 0.0, 2.0));
        assert_eq!(out.get_pixel(3, 0), &Rgb([114, 114, 114]));
        assert_eq!(out.get_pixel(3, 2), &Rgb([200, 10, 30]));
        assert_eq!(out.get_pixel(3, 5), &Rgb([200, 10, 30]));
        assert_eq!(out.get_pixel(3, 6), &Rgb([114, 114, 114]));

        let mask = GrayImage::from_fn(8, 4, |x, _| Luma([(x >= 4) as u8]));
        let (m, _) = letterbox_mask(&mask, 4, 4);
        // 8x4 -> 4x2 at pad_y 1, nearest keeps 0/1 and the left/right halves.
        assert_eq!(
            m.as_raw(),
            &[0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0]
        );

        let same = RgbImage::from_pixel(5, 3, Rgb([1, 2, 3]));
        assert_eq!(letterbox_image(&same, 5, 3).0, same);
    }

    fn two_by_two() -> Sample {
        let mut image = RgbImage::new(2, 2);
        image.put_pixel(0, 0, Rgb([0, 0, 0]));
        image.put_pixel(1, 0, Rgb([255, 255, 255]));
        image.put_pixel(0, 1, Rgb([255, 0, 0]));
        image.put_pixel(1, 1, Rgb([0, 128, 255]));
        Sample {
            id: "hand".into(),
            image,
            boxes: vec![bx(0.0, 0.0, 2.0, 2.0), bx(1.0, 1.0, 2.0, 1.5)],
            ignore: Vec::new(),
            drivable: GrayImage::from_raw(2, 2, vec![0, 1, 1, 1]).unwrap(),
            lanes: GrayImage::from_raw(2, 2, vec![0, 0, 0, 1]).unwrap(),
            conditions: Conditions {
                weather: "clear".into(),
                time_of_day: "daytime".into(),
                scene: "highway".into(),
            },
            traffic_side: TrafficSide::Right,
        }
    }

    #[test]
    fn collate_shapes_and_normalisation() {
        let s = two_by_two();
        let batch = collate(&[s.clone(), s], 2, 2);
        assert_eq!((batch.batch_size, batch.height, batch.width), (2, 2, 2));
        assert_eq!(batch.images.len(), 2 * 3 * 2 * 2);
        assert_eq!(batch.drivable.len(), 2 * 2 * 2);
        assert_eq!(batch.lanes.len(), 8);
        let norm = |v: f32, c: usize| (v / 255.0 - NORM_MEAN[c]) / NORM_STD[c];
        // Channel planes of image 0: R then G then B, each row-major.
        let want = [
            norm(0.0, 0),
            norm(255.0, 0),
            norm(255.0, 0),
            norm(0.0, 0),
            norm(0.0, 1),
            norm(255.0, 1),
            norm(0.0, 1),
            norm(128.0, 1),
            norm(0.0, 2),
            norm(255.0, 2),
            norm(0.0, 2),
            norm(255.0, 2),
        ];
        for (a, b) in batch.images[..12].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert!((batch.images[0] - (-0.485 / 0.229)).abs() < 1e-6);
        assert!((batch.images[12..24].iter().zip(&batch.images[..12])).all(|(a, b)| a == b));
        assert_eq!(&batch.drivable[..4], &[0.0, 1.0, 1.0, 1.0]);
        assert_eq!(&batch.lanes[..4], &[0.0, 0.0, 0.0, 1.0]);
        // The 1x0.5 px box is under the 2 px minimum and dropped, the other kept as is (same
        // size, no letterbox).
        assert_eq!(batch.boxes, vec![vec![bx(0.0, 0.0, 2.0, 2.0)]; 2]);
        assert_eq!(batch.traffic_sides, vec![TrafficSide::Right; 2]);
        assert_eq!(
            image_to_chw(&two_by_two().image),
            batch.images[..12].to_vec()
        );
    }

    #[test]
    fn split_gives_each_part_its_images_in_order() {
        let samples: Vec<Sample> = (0..4u8)
            .map(|i| {
                let mut s = two_by_two();
                s.image.put_pixel(0, 0, Rgb([60 * i, 0, 0]));
                s.drivable.put_pixel(0, 0, image::Luma([i % 2]));
                s.boxes.truncate(1 + i as usize % 2);
                s
            })
            .collect();
        let whole = collate(&samples, 2, 2);
        let parts = whole.split(2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], collate(&samples[..2], 2, 2));
        assert_eq!(parts[1], collate(&samples[2..], 2, 2));
        assert_eq!(whole.split(1), vec![whole.clone()]);
    }

    #[test]
    fn collate_letterboxes_boxes_and_masks() {
        let mut s = two_by_two();
        s.image = RgbImage::from_pixel(8, 4, Rgb([10, 20, 30]));
        s.drivable = GrayImage::from_pixel(8, 4, Luma([1]));
        s.lanes = GrayImage::from_fn(8, 4, |x, _| Luma([(x < 2) as u8]));
        s.boxes = vec![bx(2.0, 0.0, 6.0, 4.0), bx(-5.0, -5.0, 1.0, 1.0)];
        let batch = collate(&[s], 4, 4);
        // scale 0.5, pad_y 1: (2,0,6,4) -> (1,1,3,3); (-5,-5,1,1) clipped -> (0,0,0.5,1.5) is
        // under 2 px and dropped.
        assert_eq!(batch.boxes, vec![vec![bx(1.0, 1.0, 3.0, 3.0)]]);
        let norm = |v: f32, c: usize| (v / 255.0 - NORM_MEAN[c]) / NORM_STD[c];
        // Row 0 and 3 border, rows 1 and 2 the (uniform) image, in each channel plane.
        for (c, v) in [10.0, 20.0, 30.0].into_iter().enumerate() {
            let plane = &batch.images[c * 16..][..16];
            for (i, &got) in plane.iter().enumerate() {
                let want = if (4..12).contains(&i) {
                    v
                } else {
                    PAD_VALUE as f32
                };
                assert!(
                    (got - norm(want, c)).abs() < 1e-6,
                    "channel {c} at {i}: {got}"
                );
            }
        }
        assert_eq!(
            batch.drivable,
            vec![0., 0., 0., 0., 1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0.]
        );
        // Canvas column 0 samples source column 1 (centre 0.5 / 0.5), a lane; column 1
        // samples source column 3, not.
        assert_eq!(
            batch.lanes,
            vec![0., 0., 0., 0., 1., 0., 0., 0., 1., 0., 0., 0., 0., 0., 0., 0.]
        );
        let empty = collate(&[], 4, 4);
        assert!(empty.images.is_empty() && empty.boxes.is_empty());
        assert_eq!((empty.batch_size, empty.height, empty.width), (0, 4, 4));
    }

    #[test]
    fn collate_augmented_stacks_flipped_frames() {
        let s = two_by_two();
        let flipped = AugmentParams {
            flip: true,
            ..AugmentParams::identity()
        };
        let items = [
            augment(&s, &AugmentParams::identity(), 2, 2),
            augment(&s, &flipped, 2, 2),
        ];
        let batch = collate_augmented(&items);
        assert_eq!(batch, {
            let mut b = collate(std::slice::from_ref(&s), 2, 2);
            let f = collate_augmented(&items[1..]);
            b.images.extend(f.images);
            b.drivable.extend(f.drivable);
            b.lanes.extend(f.lanes);
            b.boxes.extend(f.boxes);
            b.ignore.extend(f.ignore);
            b.tasks.extend(f.tasks);
            b.traffic_sides.extend(f.traffic_sides);
            b.batch_size = 2;
            b
        });
        assert_eq!(
            batch.traffic_sides,
            vec![TrafficSide::Right, TrafficSide::Left]
        );
        // Mirrored: drivable [0 1; 1 1] -> [1 0; 1 1], lanes [0 0; 0 1] -> [0 0; 1 0], the box
        // (0,0)-(2,2) stays.
        assert_eq!(&batch.drivable[4..], &[1.0, 0.0, 1.0, 1.0]);
        assert_eq!(&batch.lanes[4..], &[0.0, 0.0, 1.0, 0.0]);
        assert_eq!(batch.boxes[1], vec![bx(0.0, 0.0, 2.0, 2.0)]);
        let red = (1.0 - NORM_MEAN[0]) / NORM_STD[0];
        // Red plane of the flipped image: row 0 (255, 0) from (0, 255); row 1 (0, 255).
        let plane = &batch.images[12..16];
        assert!((plane[0] - red).abs() < 1e-6 && (plane[3] - red).abs() < 1e-6);
        assert!(collate_augmented(&[]).images.is_empty());
    }
}
