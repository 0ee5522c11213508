//! The warp that places a frame on the network canvas: one axis-aligned affine map per axis from
//! source pixels to canvas pixels, applied by inverse mapping (every canvas pixel centre is
//! mapped back into the source and sampled there): bilinear for images, with box pre-averaging
//! below half scale, nearest for masks. Canvas pixels outside the source keep the border.
//!
//! Letterboxing for inference ([`crate::letterbox_image`]) and training's augmentation
//! (percept-data, which builds zoomed, shifted, mirrored and mosaic placements) both resample
//! through this one warp, so a frame reaches the network the same way in training, evaluation
//! and deployment.

use std::ops::Range;
use std::ptr;

use image::{GrayImage, RgbImage};

use crate::letterbox::{Letterbox, PAD_VALUE};

/// A `width x height` image of border grey [`PAD_VALUE`].
pub fn grey_canvas(width: u32, height: u32) -> RgbImage {
    filled_canvas(width, height, PAD_VALUE)
}

/// A `width x height` image of grey level `level` (one memset, unlike `RgbImage::from_pixel`).
pub fn filled_canvas(width: u32, height: u32, level: u8) -> RgbImage {
    let len = width as usize * height as usize * 3;
    RgbImage::from_raw(width, height, vec![level; len]).expect("buffer of the image size")
}

/// One axis of a placement: `network = scale * source + offset`, in continuous pixel
/// coordinates (pixel `i` covers `[i, i + 1)`). A negative scale mirrors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AxisMap {
    pub scale: f32,
    pub offset: f32,
}

impl AxisMap {
    pub fn apply(self, source: f32) -> f32 {
        self.scale * source + self.offset
    }

    pub fn invert(self, network: f32) -> f32 {
        (network - self.offset) / self.scale
    }

    /// This map followed by `x -> extent - x`.
    pub fn mirrored(self, extent: u32) -> AxisMap {
        AxisMap {
            scale: -self.scale,
            offset: extent as f32 - self.offset,
        }
    }
}

/// Where one source frame lands on the canvas: the map of each axis and, per axis, the
/// half-open window of canvas pixels it may paint (its quadrant in a mosaic, else the whole
/// canvas).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub x: AxisMap,
    pub y: AxisMap,
    pub x_window: (u32, u32),
    pub y_window: (u32, u32),
}

impl Placement {
    /// The letterbox `lb` on a `width x height` canvas.
    pub fn letterbox(lb: &Letterbox, width: u32, height: u32) -> Placement {
        Placement {
            x: AxisMap {
                scale: lb.scale,
                offset: lb.pad_x,
            },
            y: AxisMap {
                scale: lb.scale,
                offset: lb.pad_y,
            },
            x_window: (0, width),
            y_window: (0, height),
        }
    }

    /// This placement followed by a left-right mirror of a canvas `width` pixels wide.
    pub fn mirrored(self, width: u32) -> Placement {
        Placement {
            x: self.x.mirrored(width),
            x_window: (width - self.x_window.1, width - self.x_window.0),
            ..self
        }
    }
}

/// The canvas pixels of `window` (one axis) whose centres map inside a source `len` pixels
/// long: the first such pixel and the source coordinate of each one's centre.
///
/// Maps are monotonic, so these pixels are one contiguous run.
fn source_coords(map: AxisMap, len: u32, window: (u32, u32)) -> (usize, Vec<f32>) {
    let mut first = 0;
    let mut coords = Vec::new();
    for i in window.0..window.1 {
        let s = map.invert(i as f32 + 0.5);
        if s >= 0.0 && s < len as f32 {
            if coords.is_empty() {
                first = i as usize;
            }
            coords.push(s);
        }
    }
    (first, coords)
}

/// A bilinear tap on one axis: `(256 - weight) * p[near] + weight * p[far]`, in 1/256ths.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LinearTap {
    near: u32,
    far: u32,
    weight: u16,
}

/// Bilinear taps at source coordinates `coords` of a source whose pixels are blocks of
/// `factor` source pixels, `len` blocks long. Taps beyond the outer block centres clamp to the
/// edge block.
fn linear_taps(coords: &[f32], factor: u32, len: u32) -> Vec<LinearTap> {
    coords
        .iter()
        .map(|&s| {
            // Pixel centres sit at `i + 0.5`: position `t` lies between pixels `t` and `t + 1`.
            let t = (s / factor as f32 - 0.5).max(0.0);
            let near = (t as u32).min(len - 1);
            LinearTap {
                near,
                far: (near + 1).min(len - 1),
                weight: ((t - near as f32) * 256.0).round().min(256.0) as u16,
            }
        })
        .collect()
}

/// The source pixels `taps` read, as a range; the taps are then made relative to its start.
fn crop_taps(taps: &mut [LinearTap]) -> Range<u32> {
    let lo = taps.iter().map(|t| t.near).min().unwrap_or(0);
    let hi = taps.iter().map(|t| t.far + 1).max().unwrap_or(0);
    for t in taps {
        t.near -= lo;
        t.far -= lo;
    }
    lo..hi
}

/// Largest box-downsampling factor: block sums of u8 pixels must fit u16.
const MAX_DOWNSAMPLE: u32 = 16;

/// Bilinear taps average two neighbours, which skips source pixels below half scale and
/// aliases. Below half scale the source is first box-averaged by this whole factor, which
/// brings the remaining bilinear scale back into `(0.5, 1]` (up to [`MAX_DOWNSAMPLE`], and
/// at most the shorter source side, so that there is a whole block).
fn downsample_factor(scale: f32, shortest_side: u32) -> u32 {
    let scale = scale.abs();
    if scale >= 0.5 {
        1
    } else {
        ((1.0 / scale) as u32).clamp(1, MAX_DOWNSAMPLE.min(shortest_side.max(1)))
    }
}

/// Warps `src` through `placement` into `canvas`, bilinearly; canvas pixels outside the source
/// or the window are left as they are.
pub fn warp_image(src: &RgbImage, placement: &Placement, canvas: &mut RgbImage) {
    let (w, h) = src.dimensions();
    let (x_first, x_coords) = source_coords(placement.x, w, placement.x_window);
    let (y_first, y_coords) = source_coords(placement.y, h, placement.y_window);
    if x_coords.is_empty() || y_coords.is_empty() {
        return;
    }
    let factor = downsample_factor(placement.x.scale, w.min(h));
    // Whole blocks only: the last `w % factor` columns (and rows) are left to the edge clamp,
    // which keeps every block centre at `(i + 0.5) * factor` and the geometry exact.
    let mut x_taps = linear_taps(&x_coords, factor, w / factor);
    let mut y_taps = linear_taps(&y_coords, factor, h / factor);
    // Only the source pixels the taps reach are read (and downsampled).
    let cols = crop_taps(&mut x_taps);
    let rows = crop_taps(&mut y_taps);
    let downsampled;
    let (pixels, stride) = if factor == 1 {
        let stride = w as usize * 3;
        let start = rows.start as usize * stride + cols.start as usize * 3;
        (&src.as_raw()[start..], stride)
    } else {
        downsampled = run_simd(BoxDownsample {
            src,
            factor,
            cols: cols.clone(),
            rows,
        });
        (downsampled.as_slice(), cols.len() * 3)
    };
    let canvas_stride = canvas.width() as usize * 3;
    let canvas = &mut canvas.as_mut()[y_first * canvas_stride + x_first * 3..];
    run_simd(Resample {
        source: Rows {
            pixels,
            stride,
            len: cols.len() * 3,
        },
        x_taps: &x_taps,
        y_taps: &y_taps,
        canvas,
        canvas_stride,
    });
}

/// RGB rows of a source: row `r` is `pixels[r * stride..][..len]`.
struct Rows<'a> {
    pixels: &'a [u8],
    stride: usize,
    len: usize,
}

impl Rows<'_> {
    fn row(&self, r: u32) -> &[u8] {
        &self.pixels[r as usize * self.stride..][..self.len]
    }
}

/// Bilinear resampling of `source` at the given taps into `canvas` rows (`canvas_stride`
/// bytes apart; row 0, pixel 0 is the first tap pair's pixel).
///
/// Per canvas row: a vertical blend of two source rows, a gather of each canvas pixel's two
/// blended neighbours, and the horizontal blend. The blends run over contiguous u16 values
/// and vectorise. Weights are 8-bit (sum 256): the vertical blend is at most 255 * 256; the
/// horizontal one takes the high halves of 16-bit products with weights scaled by 128 (one
/// SIMD instruction per 16 values), which truncates less than 1/128 of a level per product
/// (uniform areas and whole-pixel copies come out exact).
struct Resample<'a> {
    source: Rows<'a>,
    x_taps: &'a [LinearTap],
    y_taps: &'a [LinearTap],
    canvas: &'a mut [u8],
    canvas_stride: usize,
}

impl SimdKernel for Resample<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let values = self.x_taps.len() * 3;
        let per_value = |weight: fn(&LinearTap) -> u16| -> Vec<u16> {
            self.x_taps.iter().flat_map(|t| [weight(t); 3]).collect()
        };
        let (near_weights, far_weights) = (
            per_value(|t| (256 - t.weight) * 128),
            per_value(|t| t.weight * 128),
        );
        let gather = |pixel: fn(&LinearTap) -> u32| {
            PixelGather::new(self.x_taps.iter().map(pixel).collect(), self.source.len)
        };
        let (near_pixels, far_pixels) = (gather(|t| t.near), gather(|t| t.far));
        let mut blended = vec![0u16; PixelGather::row_len(self.source.len)];
        let mut near = vec![0u16; PixelGather::lanes_len(self.x_taps.len())];
        let mut far = vec![0u16; near.len()];
        for (y, tap) in self.y_taps.iter().enumerate() {
            let (top, bottom) = (self.source.row(tap.near), self.source.row(tap.far));
            let (wt, wb) = (256 - tap.weight, tap.weight);
            for ((b, &t), &u) in blended.iter_mut().zip(top).zip(bottom) {
                *b = t as u16 * wt + u as u16 * wb;
            }
            near_pixels.run(&blended, &mut near);
            far_pixels.run(&blended, &mut far);
            let out = &mut self.canvas[y * self.canvas_stride..][..values];
            let pairs = near.iter().zip(&far);
            let weights = near_weights.iter().zip(&far_weights);
            for (o, ((&n, &f), (&wn, &wf))) in out.iter_mut().zip(pairs.zip(weights)) {
                let high = |v: u16, w: u16| ((v as u32 * w as u32) >> 16) as u16;
                // At most 65280 * 32768 / 65536 = 32640: level * 128.
                let v = high(n, wn) + high(f, wf);
                *o = ((v + 64) >> 7) as u8;
            }
        }
    }
}

/// Copies chosen RGB pixels of a row of u16 values into consecutive pixels of a lane array,
/// so that arithmetic on them runs over contiguous values.
///
/// Each pixel moves as one 8-byte copy of 4 values (its RGB and the next red, which the next
/// copy overwrites), without bounds checks, which would be most of the work: the indices are
/// checked once, here, against the row length, and each call checks the lengths of its
/// slices. Rows and lane arrays carry one spare value for the last 4-value copy.
struct PixelGather {
    pixels: Vec<u32>,
    row_values: usize,
}

impl PixelGather {
    /// Gathers `pixels` (RGB indices) from rows of `row_values` values.
    fn new(pixels: Vec<u32>, row_values: usize) -> Self {
        assert!(
            pixels.iter().all(|&p| p as usize * 3 + 3 <= row_values),
            "pixel indices inside the row"
        );
        PixelGather { pixels, row_values }
    }

    /// Length of a row buffer for rows of `values` values (one spare).
    fn row_len(values: usize) -> usize {
        values + 1
    }

    /// Length of a lane array for `pixels` pixels (one spare).
    fn lanes_len(pixels: usize) -> usize {
        pixels * 3 + 1
    }

    #[inline(always)]
    fn run(&self, row: &[u16], lanes: &mut [u16]) {
        assert!(row.len() >= Self::row_len(self.row_values));
        assert!(lanes.len() >= Self::lanes_len(self.pixels.len()));
        let (src, dst) = (row.as_ptr(), lanes.as_mut_ptr());
        for (x, &p) in self.pixels.iter().enumerate() {
            // SAFETY: reads `3p .. 3p + 4 <= row_values + 1 <= row.len()` (checked in `new`
            // and above), writes `3x .. 3x + 4 <= lanes.len()`; `row` and `lanes` are
            // distinct borrows.
            unsafe { ptr::copy_nonoverlapping(src.add(p as usize * 3), dst.add(x * 3), 4) };
        }
    }
}

/// The `factor x factor` block averages of `src` over block columns `cols` and block rows
/// `rows` (all whole blocks inside the image), RGB row-major.
///
/// Per block row: the block's source rows summed (contiguous, vectorises), then per pixel
/// within a block, a gather of that pixel of every block and a sum over the gathered rows.
/// Sums are at most `255 * MAX_DOWNSAMPLE^2`, which fits u16.
struct BoxDownsample<'a> {
    src: &'a RgbImage,
    factor: u32,
    cols: Range<u32>,
    rows: Range<u32>,
}

impl SimdKernel for BoxDownsample<'_> {
    type Output = Vec<u8>;

    #[inline(always)]
    fn run(self) -> Vec<u8> {
        let f = self.factor as usize;
        let stride = self.src.width() as usize * 3;
        let span = self.cols.start as usize * f * 3..self.cols.end as usize * f * 3;
        let blocks = self.cols.len();
        // Pixel `k` of every block, relative to the span.
        let gathers: Vec<PixelGather> = (0..self.factor)
            .map(|k| {
                let pixels = (0..blocks as u32).map(|j| j * self.factor + k).collect();
                PixelGather::new(pixels, span.len())
            })
            .collect();
        // `sum * scale >> 16` divides by the block's pixel count (exactly for powers of two).
        let scale = (65536.0 / (f * f) as f32).round() as u32;
        let mut out = vec![0u8; blocks * self.rows.len() * 3];
        let mut sums = vec![0u16; PixelGather::row_len(span.len())];
        let mut lanes = vec![0u16; PixelGather::lanes_len(blocks)];
        let mut totals = vec![0u16; lanes.len()];
        for (block_row, out_row) in self.rows.zip(out.chunks_exact_mut(blocks * 3)) {
            sums.fill(0);
            for y in block_row as usize * f..(block_row as usize + 1) * f {
                let row = &self.src.as_raw()[y * stride..][span.clone()];
                for (s, &p) in sums.iter_mut().zip(row) {
                    *s += p as u16;
                }
            }
            totals.fill(0);
            for gather in &gathers {
                gather.run(&sums, &mut lanes);
                for (t, &l) in totals.iter_mut().zip(&lanes) {
                    *t += l;
                }
            }
            for (o, &t) in out_row.iter_mut().zip(&totals) {
                *o = ((t as u32 * scale + (1 << 15)) >> 16) as u8;
            }
        }
        out
    }
}

/// Warps masks of one size through `placement` into canvases of one size, nearest
/// neighbour; canvas pixels outside the source or the window are left as they are.
///
/// The masks of a frame go together: they share the source coordinates and the loop.
pub fn warp_masks<const N: usize>(
    sources: [&GrayImage; N],
    placement: &Placement,
    canvases: [&mut GrayImage; N],
) {
    let Some(first) = sources.first() else {
        return;
    };
    let (w, h) = first.dimensions();
    let canvas_stride = canvases[0].width() as usize;
    assert!(
        sources.iter().all(|s| s.dimensions() == (w, h))
            && canvases
                .iter()
                .all(|c| c.dimensions() == canvases[0].dimensions()),
        "the masks of a frame share one size"
    );
    let (x_first, x_coords) = source_coords(placement.x, w, placement.x_window);
    let (y_first, y_coords) = source_coords(placement.y, h, placement.y_window);
    // `source_coords` keeps coordinates in `[0, len)`, so truncation is an index in range.
    let xs = ByteGather::new(x_coords.iter().map(|&s| s as u32).collect(), w as usize);
    let src_stride = w as usize;
    let mut canvases = canvases.map(|c| c.as_mut());
    for (y, &sy) in y_coords.iter().enumerate() {
        let start = (y_first + y) * canvas_stride + x_first;
        for (source, canvas) in sources.iter().zip(&mut canvases) {
            let row = &source.as_raw()[sy as usize * src_stride..][..src_stride];
            xs.run(row, &mut canvas[start..start + x_coords.len()]);
        }
    }
}

/// Copies chosen bytes of a row into consecutive bytes, without bounds checks (which would
/// be most of the work): the indices are checked once, here, against the row length, and each
/// call checks the lengths of its slices.
struct ByteGather {
    indices: Vec<u32>,
    row_len: usize,
}

impl ByteGather {
    fn new(indices: Vec<u32>, row_len: usize) -> Self {
        assert!(
            indices.iter().all(|&i| (i as usize) < row_len),
            "indices inside the row"
        );
        ByteGather { indices, row_len }
    }

    fn run(&self, row: &[u8], out: &mut [u8]) {
        assert!(row.len() >= self.row_len && out.len() >= self.indices.len());
        for (o, &i) in out.iter_mut().zip(&self.indices) {
            // SAFETY: `i < row_len <= row.len()`, checked in `new` and above.
            *o = unsafe { *row.get_unchecked(i as usize) };
        }
    }
}

/// A hot loop written for the compiler to vectorise, which [`run_simd`] compiles twice.
///
/// `run` must be `#[inline(always)]`, and so must what it calls, to be compiled into both.
pub trait SimdKernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `kernel` compiled for AVX2 and FMA where the CPU has them, else for the build target.
///
/// The default x86-64 target has only SSE2; AVX2 doubles the lanes. Results are the same
/// either way: Rust never fuses a multiply and an add on its own.
pub fn run_simd<K: SimdKernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        fn avx2<K: SimdKernel>(kernel: K) -> K::Output {
            kernel.run()
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features `avx2` is compiled for.
            return unsafe { avx2(kernel) };
        }
    }
    kernel.run()
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    #[test]
    fn simd_dispatch_matches_the_portable_build() {
        // `run_simd` picks the AVX2 build where the CPU has one; calling `run` directly uses
        // the build target's. Same source, same arithmetic: the results must be identical.
        let (w, h) = (97u32, 61u32);
        let noise = |x: u32, y: u32, k: u32| ((x * 73 + y * 151 + k * 29) ^ (x * y)) as u8;
        let src = RgbImage::from_fn(w, h, |x, y| {
            Rgb([noise(x, y, 1), noise(x, y, 2), noise(x, y, 3)])
        });

        let downsample = || BoxDownsample {
            src: &src,
            factor: 3,
            cols: 2..30,
            rows: 1..19,
        };
        assert_eq!(run_simd(downsample()), downsample().run());

        let coords = |n: u32, step: f32| (0..n).map(|i| 0.3 + i as f32 * step).collect::<Vec<_>>();
        let (x_taps, y_taps) = (
            linear_taps(&coords(150, 0.61), 1, w),
            linear_taps(&coords(90, 0.63), 1, h),
        );
        let resample = |canvas: &mut [u8], simd: bool| {
            let kernel = Resample {
                source: Rows {
                    pixels: src.as_raw(),
                    stride: w as usize * 3,
                    len: w as usize * 3,
                },
                x_taps: &x_taps,
                y_taps: &y_taps,
                canvas,
                canvas_stride: 150 * 3,
            };
            if simd {
                run_simd(kernel)
            } else {
                kernel.run()
            }
        };
        let (mut a, mut b) = (vec![0u8; 150 * 90 * 3], vec![0u8; 150 * 90 * 3]);
        resample(&mut a, true);
        resample(&mut b, false);
        assert_eq!(a, b);
    }
}
