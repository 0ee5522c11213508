//! Training-time augmentation: a random zoom, shift and horizontal flip of a frame's image,
//! masks and boxes together, HSV colour jitter, and YOLO-style mosaics of four frames.
//!
//! Geometry is one axis-aligned affine map per frame from source pixels to network pixels,
//! `network = scale * source + offset` on each axis (a negative x scale mirrors), applied by
//! inverse mapping: every network pixel centre is mapped back into the source and sampled there
//! (bilinear for images, nearest for masks, so mask values stay 0/1). Network pixels whose centre
//! falls outside the source get the border: grey [`PAD_VALUE`](crate::letterbox::PAD_VALUE) in images, 0 in masks. Box corners
//! go through the same map, so boxes, masks and pixels agree exactly. The warp itself (and the
//! letterbox placement) is percept-infer's `warp`, which inference letterboxes with; this module
//! adds the augmented placements.
//!
//! With [`AugmentParams::identity`] the map is the letterbox of [`Letterbox::fit`] (same scale,
//! same whole-pixel border), and [`crate::batch`] letterboxes through the same warp, so training,
//! evaluation and prediction resample frames identically.
//!
//! Randomness: [`AugmentParams::draw`] and [`MosaicParams::draw`] take every random value from the
//! caller's RNG (seeded per sample by the loader); [`augment`] and [`mosaic`] are deterministic.

use image::{GrayImage, RgbImage};
use percept_infer::warp::{
    grey_canvas, run_simd, warp_image, warp_masks, AxisMap, Placement, SimdKernel,
};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::letterbox::Letterbox;
use crate::sample::{BoxLabel, IgnoreRegion, Sample, TrafficSide};

/// Default of [`AugmentConfig::min_box_side`], and the box filter of [`AugmentParams::identity`].
pub const DEFAULT_MIN_BOX_SIDE: f32 = 2.0;

/// Whether and how frames are mirrored left-right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlipPolicy {
    /// Never flip.
    #[default]
    Off,
    /// Flip with [`AugmentConfig::flip_probability`]. A mirrored right-hand-traffic frame shows
    /// left-hand traffic, so a flipped frame's traffic side is flipped with it.
    MirrorTrafficSide,
}

/// Augmentation settings (the `[augment]` table of a run config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Random zoom on top of the letterbox scale, drawn uniformly in `[1 - scale, 1 + scale]`.
    pub scale: f32,
    /// Random shift on each axis, drawn uniformly in `±translate` times the network size.
    pub translate: f32,
    /// Hue shift, drawn uniformly in `±hue` of the full colour circle.
    pub hue: f32,
    /// Saturation factor, drawn uniformly in `[1 - saturation, 1 + saturation]`.
    pub saturation: f32,
    /// Value (brightness) factor, drawn uniformly in `[1 - value, 1 + value]`.
    pub value: f32,
    pub flip: FlipPolicy,
    /// Chance of a flip when [`flip`](Self::flip) allows it.
    pub flip_probability: f32,
    /// Chance that the loader builds a [`mosaic`] instead of augmenting one frame.
    pub mosaic_probability: f32,
    /// Boxes narrower or lower than this many network pixels after clipping become ignore
    /// regions (too small to learn from, but not background either).
    pub min_box_side: f32,
}

impl Default for AugmentConfig {
    /// YOLOv5's defaults for zoom, shift and HSV gains; no flip, no mosaic.
    fn default() -> Self {
        AugmentConfig {
            scale: 0.25,
            translate: 0.1,
            hue: 0.015,
            saturation: 0.5,
            value: 0.3,
            flip: FlipPolicy::Off,
            flip_probability: 0.5,
            mosaic_probability: 0.0,
            min_box_side: DEFAULT_MIN_BOX_SIDE,
        }
    }
}

impl AugmentConfig {
    /// No randomness at all: every draw is [`AugmentParams::identity`] (for evaluation).
    pub fn none() -> Self {
        AugmentConfig {
            scale: 0.0,
            translate: 0.0,
            hue: 0.0,
            saturation: 0.0,
            value: 0.0,
            flip: FlipPolicy::Off,
            flip_probability: 0.0,
            mosaic_probability: 0.0,
            min_box_side: DEFAULT_MIN_BOX_SIDE,
        }
    }

    /// Checks the ranges the types cannot; every problem names its key and the valid range,
    /// one per line.
    pub fn validate(&self) -> Result<(), String> {
        // Every range starts at 0; the upper bound is allowed where the flag says so.
        let ranges = [
            ("scale", self.scale, 1.0, false),
            ("translate", self.translate, 0.5, true),
            ("hue", self.hue, 0.5, true),
            ("saturation", self.saturation, 1.0, true),
            ("value", self.value, 1.0, true),
            ("flip_probability", self.flip_probability, 1.0, true),
            ("mosaic_probability", self.mosaic_probability, 1.0, true),
        ];
        let mut problems: Vec<String> = ranges
            .into_iter()
            .filter(|&(_, v, max, inclusive)| !(v >= 0.0 && (v < max || inclusive && v == max)))
            .map(|(key, v, max, inclusive)| {
                let close = if inclusive { ']' } else { ')' };
                format!("data.augment.{key} = {v}: give a value in [0, {max}{close}")
            })
            .collect();
        if !(self.min_box_side.is_finite() && self.min_box_side >= 0.0) {
            problems.push(format!(
                "data.augment.min_box_side = {}: give a number of pixels >= 0",
                self.min_box_side
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// HSV colour jitter, YOLOv5 style.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HsvJitter {
    /// Added to the hue, as a fraction of the full circle (`1.0` = 360°).
    pub hue_shift: f32,
    /// Saturation factor (saturation stays at most 1).
    pub saturation_gain: f32,
    /// Value (brightness) factor (value stays at most 255).
    pub value_gain: f32,
}

impl HsvJitter {
    /// Leaves colours as they are.
    pub fn neutral() -> Self {
        HsvJitter {
            hue_shift: 0.0,
            saturation_gain: 1.0,
            value_gain: 1.0,
        }
    }

    fn draw(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        HsvJitter {
            hue_shift: symmetric(rng, config.hue),
            saturation_gain: 1.0 + symmetric(rng, config.saturation),
            value_gain: 1.0 + symmetric(rng, config.value),
        }
    }
}

/// One draw of the random parameters of [`augment`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    /// Factor on top of the letterbox scale, about the canvas centre (1: letterbox size).
    pub zoom: f32,
    /// Shift right, as a fraction of the network width.
    pub translate_x: f32,
    /// Shift down, as a fraction of the network height.
    pub translate_y: f32,
    /// Mirror left-right (and the traffic side with it).
    pub flip: bool,
    pub hsv: HsvJitter,
    /// Boxes narrower or lower than this many network pixels after clipping become ignore
    /// regions (too small to learn from, but not background either).
    pub min_box_side: f32,
}

impl AugmentParams {
    /// Draws parameters from `rng`: always the same number of values in the same order, so the
    /// result depends only on the config and the RNG's state.
    pub fn draw(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let zoom = 1.0 + symmetric(rng, config.scale);
        let translate_x = symmetric(rng, config.translate);
        let translate_y = symmetric(rng, config.translate);
        let flip = draw_flip(config, rng);
        AugmentParams {
            zoom,
            translate_x,
            translate_y,
            flip,
            hsv: HsvJitter::draw(config, rng),
            min_box_side: config.min_box_side,
        }
    }

    /// The plain letterbox of [`Letterbox::fit`], colours untouched; what
    /// [`AugmentConfig::none`] always draws.
    pub fn identity() -> Self {
        AugmentParams {
            zoom: 1.0,
            translate_x: 0.0,
            translate_y: 0.0,
            flip: false,
            hsv: HsvJitter::neutral(),
            min_box_side: DEFAULT_MIN_BOX_SIDE,
        }
    }
}

/// One draw of the random parameters of [`mosaic`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MosaicParams {
    /// Where the four tiles meet, as a fraction of the network width, in `[0.25, 0.75]`.
    pub centre_x: f32,
    /// Where the four tiles meet, as a fraction of the network height, in `[0.25, 0.75]`.
    pub centre_y: f32,
    /// Factor on top of each tile's letterbox scale (1: tiles at letterbox size).
    pub zoom: f32,
    /// Mirror the whole mosaic left-right (and the traffic side with it).
    pub flip: bool,
    pub hsv: HsvJitter,
    /// Boxes narrower or lower than this many network pixels after clipping become ignore
    /// regions (too small to learn from, but not background either).
    pub min_box_side: f32,
}

impl MosaicParams {
    /// Draws parameters from `rng`, a fixed number of values in a fixed order. The centre stays
    /// in the middle half of each axis so that every tile shows at least a quarter of each side.
    pub fn draw(config: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let centre_x = 0.5 + symmetric(rng, 0.25);
        let centre_y = 0.5 + symmetric(rng, 0.25);
        let zoom = 1.0 + symmetric(rng, config.scale);
        let flip = draw_flip(config, rng);
        MosaicParams {
            centre_x,
            centre_y,
            zoom,
            flip,
            hsv: HsvJitter::draw(config, rng),
            min_box_side: config.min_box_side,
        }
    }
}

/// Uniform in `[-amplitude, amplitude]`; always consumes one value, also for amplitude 0.
fn symmetric(rng: &mut impl Rng, amplitude: f32) -> f32 {
    amplitude * rng.random_range(-1.0f32..=1.0)
}

fn draw_flip(config: &AugmentConfig, rng: &mut impl Rng) -> bool {
    let coin: f32 = rng.random();
    config.flip == FlipPolicy::MirrorTrafficSide && coin < config.flip_probability
}

/// A frame prepared for the network.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// RGB, `[height, width]` of the network input.
    pub image: RgbImage,
    /// `[height, width]`, 1 drivable, 0 not (border 0).
    pub drivable: GrayImage,
    /// `[height, width]`, 1 lane marking, 0 not (border 0).
    pub lanes: GrayImage,
    /// Boxes in network pixels, clipped to the canvas.
    pub boxes: Vec<BoxLabel>,
    /// Ignore regions in network pixels, clipped to the canvas: the sample's own, and boxes
    /// that came out under `min_box_side` (too small to learn from, but objects all the same:
    /// neither targets nor background).
    pub ignore: Vec<IgnoreRegion>,
    /// The traffic side the frame now shows (mirrored when the frame was flipped).
    pub traffic_side: TrafficSide,
}

impl Augmented {
    /// A `width x height` canvas of border only.
    fn blank(width: u32, height: u32, traffic_side: TrafficSide) -> Self {
        Augmented {
            image: grey_canvas(width, height),
            drivable: GrayImage::new(width, height),
            lanes: GrayImage::new(width, height),
            boxes: Vec::new(),
            ignore: Vec::new(),
            traffic_side,
        }
    }

    /// Paints `sample` through `placement`: pixels, masks and boxes.
    fn paint(&mut self, sample: &Sample, placement: &Placement, min_box_side: f32) {
        let size = sample.image.dimensions();
        // The image's map is the masks' map too.
        assert!(
            sample.drivable.dimensions() == size && sample.lanes.dimensions() == size,
            "sample {}: masks must have the image's size",
            sample.id
        );
        warp_image(&sample.image, placement, &mut self.image);
        warp_masks(
            [&sample.drivable, &sample.lanes],
            placement,
            [&mut self.drivable, &mut self.lanes],
        );
        for b in &sample.boxes {
            let Some(mapped) = placement.map_box(b) else {
                continue;
            };
            if mapped.width() >= min_box_side && mapped.height() >= min_box_side {
                self.boxes.push(mapped);
            } else {
                self.ignore.push(region_of(&mapped));
            }
        }
        for r in &sample.ignore {
            let as_box = BoxLabel {
                class: 0,
                x1: r.x1,
                y1: r.y1,
                x2: r.x2,
                y2: r.y2,
            };
            if let Some(mapped) = placement.map_box(&as_box) {
                self.ignore.push(region_of(&mapped));
            }
        }
    }
}

fn region_of(b: &BoxLabel) -> IgnoreRegion {
    IgnoreRegion {
        x1: b.x1,
        y1: b.y1,
        x2: b.x2,
        y2: b.y2,
    }
}

/// Augments one frame into a `width x height` network input: `params`' zoom, shift and flip in
/// one warp, then the HSV jitter.
///
/// Total scale is `Letterbox::fit(..).scale * zoom`; the letterboxed frame is zoomed about the
/// canvas centre, then shifted by `translate * (width, height)`, then mirrored (`x -> width - x`)
/// when `flip` is set. Boxes come out clipped to the canvas, without those under
/// `min_box_side`.
pub fn augment(sample: &Sample, params: &AugmentParams, width: u32, height: u32) -> Augmented {
    let (w, h) = sample.image.dimensions();
    let placement = Placement::frame(params, w, h, width, height);
    let side = if params.flip {
        sample.traffic_side.mirrored()
    } else {
        sample.traffic_side
    };
    let mut out = Augmented::blank(width, height, side);
    out.paint(sample, &placement, params.min_box_side);
    apply_hsv(&mut out.image, &params.hsv);
    out
}

/// A YOLO-style mosaic of four frames on one `width x height` canvas.
///
/// The tiles meet at `(centre_x, centre_y)`: tile 0 fills the top-left quadrant, 1 the top-right, 2 the
/// bottom-left and 3 the bottom-right, each touching the centre with its inner corner (tile 0
/// its bottom-right corner, and so on) and cropped to its quadrant. Each tile is scaled by its
/// own letterbox scale times `params.zoom`. Then the whole canvas is flipped and jittered like a
/// single frame. Boxes are clipped to their tile's quadrant.
///
/// Refuses tiles of different traffic sides: a mosaic shows one side of the road.
pub fn mosaic(
    tiles: [&Sample; 4],
    params: &MosaicParams,
    width: u32,
    height: u32,
) -> Result<Augmented, String> {
    let side = tiles[0].traffic_side;
    if let Some((i, odd)) = tiles
        .iter()
        .enumerate()
        .find(|(_, t)| t.traffic_side != side)
    {
        return Err(format!(
            "mosaic tiles must share one traffic side: tile 0 ({}) drives on the {}, tile {i} \
             ({}) on the {}",
            tiles[0].id,
            side.name(),
            odd.id,
            odd.traffic_side.name()
        ));
    }
    let at =
        |fraction: f32, len: u32| (fraction * len as f32).round().clamp(0.0, len as f32) as u32;
    let centre = (at(params.centre_x, width), at(params.centre_y, height));
    let mut out = Augmented::blank(
        width,
        height,
        if params.flip { side.mirrored() } else { side },
    );
    for (quadrant, tile) in tiles.into_iter().enumerate() {
        let (w, h) = tile.image.dimensions();
        let placement = Placement::mosaic_tile(quadrant, params, centre, w, h, width, height);
        out.paint(tile, &placement, params.min_box_side);
    }
    apply_hsv(&mut out.image, &params.hsv);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Geometry

/// The placements augmentation adds to the warp's (percept-infer's `warp`, which letterboxes
/// for inference too): zoomed, shifted and mirrored frames, mosaic tiles, and boxes mapped
/// through them. A trait because `Placement` is percept-infer's type.
trait AugmentPlacement: Sized {
    fn frame(params: &AugmentParams, src_w: u32, src_h: u32, width: u32, height: u32) -> Self;
    fn mosaic_tile(
        quadrant: usize,
        params: &MosaicParams,
        centre: (u32, u32),
        src_w: u32,
        src_h: u32,
        width: u32,
        height: u32,
    ) -> Self;
    fn map_box(&self, b: &BoxLabel) -> Option<BoxLabel>;
}

impl AugmentPlacement for Placement {
    /// A `src_w x src_h` frame under `params` on a `width x height` canvas (see [`augment`]).
    fn frame(params: &AugmentParams, src_w: u32, src_h: u32, width: u32, height: u32) -> Self {
        let lb = Letterbox::fit(src_w, src_h, width, height);
        // Zooming about the canvas centre keeps the letterbox's whole-pixel border exact at
        // zoom 1: `centre + 1 * (pad - centre) == pad` in floating point for these magnitudes.
        let axis = |pad: f32, len: u32, shift: f32| {
            let centre = len as f32 / 2.0;
            AxisMap {
                scale: lb.scale * params.zoom,
                offset: centre + params.zoom * (pad - centre) + shift * len as f32,
            }
        };
        let placement = Placement {
            x: axis(lb.pad_x, width, params.translate_x),
            y: axis(lb.pad_y, height, params.translate_y),
            x_window: (0, width),
            y_window: (0, height),
        };
        if params.flip {
            placement.mirrored(width)
        } else {
            placement
        }
    }

    /// Tile `quadrant` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of a mosaic
    /// whose tiles meet at canvas pixel corner `centre` (see [`mosaic`]).
    fn mosaic_tile(
        quadrant: usize,
        params: &MosaicParams,
        centre: (u32, u32),
        src_w: u32,
        src_h: u32,
        width: u32,
        height: u32,
    ) -> Self {
        let scale = Letterbox::fit(src_w, src_h, width, height).scale * params.zoom;
        // A tile left of (above) the centre ends there; one right of (below) it starts there.
        let axis = |after: bool, src_len: u32, centre: u32, len: u32| {
            let c = centre as f32;
            let map = AxisMap {
                scale,
                offset: if after { c } else { c - scale * src_len as f32 },
            };
            (map, if after { (centre, len) } else { (0, centre) })
        };
        let (x, x_window) = axis(quadrant % 2 == 1, src_w, centre.0, width);
        let (y, y_window) = axis(quadrant >= 2, src_h, centre.1, height);
        let placement = Placement {
            x,
            y,
            x_window,
            y_window,
        };
        if params.flip {
            placement.mirrored(width)
        } else {
            placement
        }
    }

    /// A source box on the canvas, clipped to the window; `None` when nothing is left.
    fn map_box(&self, b: &BoxLabel) -> Option<BoxLabel> {
        let span = |map: AxisMap, lo: f32, hi: f32, (w0, w1): (u32, u32)| {
            let (a, b) = (map.apply(lo), map.apply(hi));
            // A mirrored axis maps the far edge to the near one.
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (
                lo.clamp(w0 as f32, w1 as f32),
                hi.clamp(w0 as f32, w1 as f32),
            )
        };
        let (x1, x2) = span(self.x, b.x1, b.x2, self.x_window);
        let (y1, y2) = span(self.y, b.y1, b.y2, self.y_window);
        let (w, h) = (x2 - x1, y2 - y1);
        (w > 0.0 && h > 0.0).then_some(BoxLabel {
            class: b.class,
            x1,
            y1,
            x2,
            y2,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// HSV jitter

/// Pixels per batch of the HSV pass. The per-pixel arithmetic runs lane by lane over a batch,
/// which the compiler turns into SIMD.
const HSV_BATCH: usize = 64;

/// Sectors of the colour hexagon: hues are measured in sectors, red at 0, green at 2, blue at 4.
const SECTORS: f32 = 6.0;

/// `MAGIC + x` rounds `x` to a whole number (ties to even) for `|x| < 2^22`, and the whole
/// number then sits in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23

/// One [`HsvJitter`] in the units of [`HsvGains::apply`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct HsvGains {
    /// Added to the hue, in sectors, in `[-3, 3]`.
    hue_shift: f32,
    saturation: f32,
    value: f32,
}

impl HsvGains {
    fn new(jitter: &HsvJitter) -> Self {
        let turns = jitter.hue_shift - jitter.hue_shift.round();
        HsvGains {
            hue_shift: turns * SECTORS,
            saturation: jitter.saturation_gain.max(0.0),
            value: jitter.value_gain.max(0.0),
        }
    }

    fn is_identity(&self) -> bool {
        self.hue_shift == 0.0 && self.saturation == 1.0 && self.value == 1.0
    }

    /// `HSV_BATCH` RGB pixels to HSV, through the gains, and back, rounded once at the end.
    ///
    /// YOLOv5 maps 8-bit H, S and V through lookup tables; a lookup per pixel is a gather,
    /// which keeps a loop scalar, so here the same maps are computed in `f32` lanes instead,
    /// and without 8-bit rounding in between (neutral gains give back every colour exactly).
    ///
    /// Value is the largest channel and chroma the spread (value - smallest); saturation is
    /// chroma / value. Scaling saturation scales chroma (clipped at value, saturation 1), and
    /// scaling value at fixed saturation scales chroma by the same factor. Each channel is at
    /// value within one sector of its own hue, falls to value - chroma over the next sector on
    /// either side, and stays there beyond. Selects and min/max instead of branches keep the
    /// loop vectorisable; grey (chroma 0) stays grey whatever the hue.
    #[inline(always)]
    fn apply(&self, pixels: &mut [u8; 3 * HSV_BATCH]) {
        let mut planes = [[0.0f32; HSV_BATCH]; 3];
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                planes[c][i] = px[c] as f32;
            }
        }
        let [r, g, b] = planes;
        let mut out = [[0u8; HSV_BATCH]; 3];
        for i in 0..HSV_BATCH {
            let (r, g, b) = (r[i], g[i], b[i]);
            let value = max(max(r, g), b);
            let chroma = value - min(min(r, g), b);
            // The largest channel's hue, moved towards the larger of the other two.
            let (centre, diff) = if r == value {
                (0.0, g - b)
            } else if g == value {
                (2.0, b - r)
            } else {
                (4.0, r - g)
            };
            // One division for both quotients below (`1 / (chroma * value)`); the products are
            // whole numbers below 2^16, exact in `f32`.
            let reciprocal = 1.0 / max(chroma * value, 1.0);
            let hue = centre + diff * value * reciprocal + self.hue_shift;
            let new_value = min(value * self.value, 255.0);
            let new_chroma = min(chroma * self.saturation, value) * new_value * chroma * reciprocal;
            for (plane, own) in out.iter_mut().zip([0.0, 2.0, 4.0]) {
                // Distance around the circle: `hue - own` lies within ±8 sectors.
                let distance = (hue - own).abs();
                let distance = min(distance, (SECTORS - distance).abs());
                let fall = min(max(distance - 1.0, 0.0), 1.0);
                plane[i] = level_to_u8(new_value - fall * new_chroma);
            }
        }
        for (i, px) in pixels.chunks_exact_mut(3).enumerate() {
            for c in 0..3 {
                px[c] = out[c][i];
            }
        }
    }
}

/// A level in `0..=255`, rounded, as a byte: a bit cast, which vectorises (a saturating
/// `as u8` does not).
#[inline(always)]
fn level_to_u8(level: f32) -> u8 {
    (level + MAGIC).to_bits() as u8
}

/// The larger of two non-NaN values, as one SIMD instruction (`f32::max` also orders NaN).
#[inline(always)]
fn max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The smaller of two non-NaN values.
#[inline(always)]
fn min(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// Applies `jitter` to every pixel of `image` (border included, as YOLOv5 does).
fn apply_hsv(image: &mut RgbImage, jitter: &HsvJitter) {
    let gains = HsvGains::new(jitter);
    // Evaluation and unjittered training frames skip the pass.
    if gains.is_identity() {
        return;
    }
    run_simd(HsvPass {
        pixels: image.as_mut(),
        gains,
    });
}

/// [`HsvGains::apply`] over a whole image.
struct HsvPass<'a> {
    pixels: &'a mut [u8],
    gains: HsvGains,
}

impl SimdKernel for HsvPass<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let mut batches = self.pixels.chunks_exact_mut(3 * HSV_BATCH);
        for batch in &mut batches {
            self.gains
                .apply(batch.try_into().expect("a batch of whole pixels"));
        }
        let tail = batches.into_remainder();
        if !tail.is_empty() {
            let mut padded = [0u8; 3 * HSV_BATCH];
            padded[..tail.len()].copy_from_slice(tail);
            self.gains.apply(&mut padded);
            tail.copy_from_slice(&padded[..tail.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{letterbox_image, letterbox_mask};
    use crate::letterbox::PAD_VALUE;
    use crate::sample::Conditions;
    use image::{Luma, Rgb};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const RECT: Rgb<u8> = Rgb([200, 30, 60]);
    const BACKGROUND: Rgb<u8> = Rgb([40, 90, 40]);

    fn bx(class: u16, x1: f32, y1: f32, x2: f32, y2: f32) -> BoxLabel {
        BoxLabel::new(class, [x1, y1, x2, y2])
    }

    /// A `w x h` frame: a solid rectangle (also set in both masks) with its box.
    fn rect_sample(w: u32, h: u32, rect: (u32, u32, u32, u32), colour: Rgb<u8>) -> Sample {
        let (x0, y0, x1, y1) = rect;
        let inside = |x: u32, y: u32| x >= x0 && x < x1 && y >= y0 && y < y1;
        Sample {
            id: format!("rect-{w}x{h}"),
            image: RgbImage::from_fn(w, h, |x, y| if inside(x, y) { colour } else { BACKGROUND }),
            boxes: vec![bx(1, x0 as f32, y0 as f32, x1 as f32, y1 as f32)],
            ignore: Vec::new(),
            drivable: GrayImage::from_fn(w, h, |x, y| Luma([inside(x, y) as u8])),
            lanes: GrayImage::from_fn(w, h, |x, y| Luma([inside(x, y) as u8])),
            conditions: Conditions {
                weather: "clear".into(),
                time_of_day: "daytime".into(),
                scene: "highway".into(),
            },
            traffic_side: TrafficSide::Right,
        }
    }

    fn params(zoom: f32, translate_x: f32, translate_y: f32, flip: bool) -> AugmentParams {
        AugmentParams {
            zoom,
            translate_x,
            translate_y,
            flip,
            ..AugmentParams::identity()
        }
    }

    fn assert_box_near(got: &BoxLabel, want: &BoxLabel) {
        let pairs = [
            (got.x1, want.x1),
            (got.y1, want.y1),
            (got.x2, want.x2),
            (got.y2, want.y2),
        ];
        assert!(
            got.class == want.class && pairs.iter().all(|(a, b)| (a - b).abs() < 1e-4),
            "{got:?} vs {want:?}"
        );
    }

    /// Pixels at least `margin` inside `b` have `colour` and set masks; pixels at least `margin`
    /// outside it have neither.
    fn assert_rect_rendered(out: &Augmented, b: &BoxLabel, colour: Rgb<u8>, margin: f32) {
        let (w, h) = out.image.dimensions();
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
                let inside = cx > b.x1 + margin
                    && cx < b.x2 - margin
                    && cy > b.y1 + margin
                    && cy < b.y2 - margin;
                let outside = cx < b.x1 - margin
                    || cx > b.x2 + margin
                    || cy < b.y1 - margin
                    || cy > b.y2 + margin;
                let px = *out.image.get_pixel(x, y);
                let masks = [
                    out.drivable.get_pixel(x, y)[0],
                    out.lanes.get_pixel(x, y)[0],
                ];
                if inside {
                    assert_eq!((px, masks), (colour, [1, 1]), "inside at ({x}, {y})");
                } else if outside {
                    assert_ne!(px, colour, "outside at ({x}, {y})");
                    assert_eq!(masks, [0, 0], "outside at ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn geometry_maps_boxes_pixels_and_masks_exactly() {
        // 200x100 into 100x100: letterbox scale 0.5, pad_y 25; the canvas centre is (50, 50).
        let sample = rect_sample(200, 100, (60, 20, 140, 80), RECT);
        let cases = [
            // k = 0.75; x offset 50 + 1.5 * (0 - 50) + 10 = -15, y offset 50 + 1.5 * (25 - 50)
            // - 5 = 7.5. x: 60 -> 30, 140 -> 90, mirrored to 70, 10. y: 20 -> 22.5, 80 -> 67.5.
            (params(1.5, 0.1, -0.05, true), bx(1, 10.0, 22.5, 70.0, 67.5)),
            // k = 0.3 (box-downsampled by 3 first); offsets 50 + 0.6 * -50 = 20 and
            // 50 + 0.6 * (25 - 50) = 35. x: 60 -> 38, 140 -> 62; y: 20 -> 41, 80 -> 59.
            (params(0.6, 0.0, 0.0, false), bx(1, 38.0, 41.0, 62.0, 59.0)),
            // k = 1: x offset 50 + 2 * -50 - 20 = -70, y offset 50 + 2 * (25 - 50) + 10 = 10.
            // x: 60 -> -10 (clipped to 0), 140 -> 70; y: 20 -> 30, 80 -> 90.
            (params(2.0, -0.2, 0.1, false), bx(1, 0.0, 30.0, 70.0, 90.0)),
        ];
        for (p, want) in cases {
            let out = augment(&sample, &p, 100, 100);
            assert_eq!(out.boxes.len(), 1, "{p:?}");
            assert_box_near(&out.boxes[0], &want);
            assert_rect_rendered(&out, &want, RECT, 2.0);
            let side = if p.flip {
                TrafficSide::Left
            } else {
                TrafficSide::Right
            };
            assert_eq!(out.traffic_side, side);
        }
    }

    #[test]
    fn flip_policy_decides_flips_and_traffic_side() {
        let sample = rect_sample(64, 32, (8, 8, 24, 24), RECT);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let off = AugmentConfig {
            flip_probability: 1.0,
            ..AugmentConfig::default()
        };
        assert!((0..500).all(|_| !AugmentParams::draw(&off, &mut rng).flip));
        assert!((0..500).all(|_| !MosaicParams::draw(&off, &mut rng).flip));

        let mirror = AugmentConfig {
            flip: FlipPolicy::MirrorTrafficSide,
            ..AugmentConfig::default()
        };
        let flips = (0..1000)
            .filter(|_| AugmentParams::draw(&mirror, &mut rng).flip)
            .count();
        assert!(
            (400..600).contains(&flips),
            "{flips} flips of 1000 at p = 0.5"
        );

        let mut p = AugmentParams::identity();
        assert_eq!(
            augment(&sample, &p, 64, 32).traffic_side,
            TrafficSide::Right
        );
        p.flip = true;
        let flipped = augment(&sample, &p, 64, 32);
        assert_eq!(flipped.traffic_side, TrafficSide::Left);
        // x: 8..24 mirrored on a 64 px canvas is 40..56.
        assert_eq!(flipped.boxes, vec![bx(1, 40.0, 8.0, 56.0, 24.0)]);
        assert_eq!(flipped.image.get_pixel(47, 15), &RECT);
        assert_eq!(flipped.image.get_pixel(15, 15), &BACKGROUND);
    }

    #[test]
    fn identity_params_give_the_letterbox_geometry() {
        for (sw, sh, dw, dh) in [
            (1280, 720, 640, 384),
            (300, 600, 640, 384),
            (1242, 375, 320, 192),
            (333, 777, 416, 416),
            (64, 64, 1280, 720),
        ] {
            let lb = Letterbox::fit(sw, sh, dw, dh);
            let placement = Placement::frame(&AugmentParams::identity(), sw, sh, dw, dh);
            assert_eq!(placement, Placement::letterbox(&lb, dw, dh), "{sw}x{sh}");

            let sample = rect_sample(sw, sh, (sw / 4, sh / 4, sw / 2, sh / 2), RECT);
            let out = augment(&sample, &AugmentParams::identity(), dw, dh);
            assert_box_near(&out.boxes[0], &lb.to_network(&sample.boxes[0]));
            assert_eq!(out.image, letterbox_image(&sample.image, dw, dh).0);
            assert_eq!(out.drivable, letterbox_mask(&sample.drivable, dw, dh).0);
            // The resized frame covers exactly `resized_size` pixels from the integer pad on.
            let (rw, rh) = lb.resized_size(sw, sh, dw, dh);
            let (px, py) = (lb.pad_x as u32, lb.pad_y as u32);
            let covered = |x: u32, y: u32| x >= px && x < px + rw && y >= py && y < py + rh;
            for (x, y, p) in out.image.enumerate_pixels() {
                let border = *p == Rgb([PAD_VALUE; 3]);
                assert_eq!(border, !covered(x, y), "{sw}x{sh} at ({x}, {y})");
            }
        }
        // 1280x720 -> 640x384: scale 0.5, 12 px top border; 2x2 averages in between.
        let lb = Letterbox::fit(1280, 720, 640, 384);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.5, 0.0, 12.0));
        let ramp = RgbImage::from_fn(1280, 720, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 7]));
        let out = letterbox_image(&ramp, 640, 384).0;
        // Canvas (10, 12) averages source columns 20, 21 and rows 0, 1: (20.5, 0.5) rounds up.
        assert_eq!(out.get_pixel(10, 12), &Rgb([21, 1, 7]));
        assert_eq!(out.get_pixel(10, 11), &Rgb([PAD_VALUE; 3]));
    }

    #[test]
    fn boxes_off_the_canvas_are_dropped_cut_ones_clipped_and_tiny_ones_ignored() {
        let mut sample = rect_sample(100, 100, (10, 10, 20, 20), RECT);
        sample.boxes = vec![
            bx(0, 10.0, 10.0, 20.0, 20.0),
            bx(1, 40.0, 40.0, 60.0, 60.0),
            bx(2, 58.0, 40.0, 70.0, 60.0),
        ];
        // Scale 1, shifted 45 px right: x 10..20 -> 55..65, 40..60 -> 85..105 (cut at 100),
        // 58..70 -> 103..115 (gone).
        let out = augment(&sample, &params(1.0, 0.45, 0.0, false), 100, 100);
        assert_eq!(
            out.boxes,
            vec![
                bx(0, 55.0, 10.0, 65.0, 20.0),
                bx(1, 85.0, 40.0, 100.0, 60.0)
            ]
        );
        // Shifted 88 px: 40..60 -> 128..148 is gone; 10..20 -> 98..108 keeps 2 px, enough for
        // min_box_side 2 but not 3.
        let mut p = params(1.0, 0.88, 0.0, false);
        assert_eq!(
            augment(&sample, &p, 100, 100).boxes,
            vec![bx(0, 98.0, 10.0, 100.0, 20.0)]
        );
        p.min_box_side = 3.0;
        let out = augment(&sample, &p, 100, 100);
        assert!(out.boxes.is_empty());
        // Too small to learn from, but an object: an ignore region, not background.
        assert_eq!(
            out.ignore,
            vec![IgnoreRegion {
                x1: 98.0,
                y1: 10.0,
                x2: 100.0,
                y2: 20.0
            }]
        );
    }

    #[test]
    fn ignore_regions_follow_the_warp() {
        let mut sample = rect_sample(100, 100, (10, 10, 20, 20), RECT);
        sample.ignore = vec![
            IgnoreRegion {
                x1: 30.0,
                y1: 5.0,
                x2: 50.0,
                y2: 25.0,
            },
            IgnoreRegion {
                x1: 90.0,
                y1: 0.0,
                x2: 100.0,
                y2: 10.0,
            },
        ];
        // Scale 1, 20 px right, mirrored: x -> 100 - (x + 20). 30..50 -> 30..50 mirrored from
        // 50..70; 90..100 -> 110..120 is off the canvas.
        let out = augment(&sample, &params(1.0, 0.2, 0.0, true), 100, 100);
        assert_eq!(
            out.ignore,
            vec![IgnoreRegion {
                x1: 30.0,
                y1: 5.0,
                x2: 50.0,
                y2: 25.0
            }]
        );
        assert_eq!(out.boxes, vec![bx(1, 60.0, 10.0, 70.0, 20.0)]);
    }

    #[test]
    fn neutral_hsv_leaves_images_unchanged() {
        let sample = crate::testutil::test_sample(3);
        let (w, h) = sample.image.dimensions();
        let out = augment(&sample, &AugmentParams::identity(), w, h);
        assert_eq!(out.image, sample.image);
        // Gains within rounding of neutral change nothing either.
        let mut image = sample.image.clone();
        apply_hsv(
            &mut image,
            &HsvJitter {
                hue_shift: 1e-5,
                saturation_gain: 1.0001,
                value_gain: 0.9999,
            },
        );
        assert_eq!(image, sample.image);
    }

    #[test]
    fn hsv_round_trip_is_exact() {
        // The jitter pass itself (not skipped) with neutral tables reproduces every colour.
        let gains = HsvGains::new(&HsvJitter::neutral());
        let colours: Vec<u8> = (0..=255u8)
            .step_by(3)
            .flat_map(|r| (0..=255u8).step_by(3).map(move |g| (r, g)))
            .flat_map(|(r, g)| (0..=255u8).step_by(5).flat_map(move |b| [r, g, b]))
            .collect();
        for batch in colours.chunks_exact(3 * HSV_BATCH) {
            let mut px: [u8; 3 * HSV_BATCH] = batch.try_into().unwrap();
            gains.apply(&mut px);
            assert_eq!(px.as_slice(), batch);
        }
    }

    #[test]
    fn hsv_gains_by_hand() {
        let jitter = |hue_shift, saturation_gain, value_gain| HsvJitter {
            hue_shift,
            saturation_gain,
            value_gain,
        };
        let apply = |rgb: [u8; 3], j: HsvJitter| {
            let mut image = RgbImage::from_pixel(1, 1, Rgb(rgb));
            apply_hsv(&mut image, &j);
            image.get_pixel(0, 0).0
        };
        // Grey has no hue and no saturation to change.
        assert_eq!(apply([90, 90, 90], jitter(0.3, 1.8, 1.0)), [90, 90, 90]);
        let mut grey = RgbImage::from_pixel(4, 4, Rgb([123, 123, 123]));
        apply_hsv(&mut grey, &jitter(-0.4, 0.2, 1.0));
        assert_eq!(grey, RgbImage::from_pixel(4, 4, Rgb([123, 123, 123])));
        // Value x1.5 at fixed hue and saturation scales every channel by 1.5.
        assert_eq!(apply([100, 50, 20], jitter(0.0, 1.0, 1.5)), [150, 75, 30]);
        assert_eq!(apply([90, 90, 90], jitter(0.0, 1.0, 0.5)), [45, 45, 45]);
        // Value clips at 255: 200 * 1.5 -> 255, the rest scaled with it (chroma 160 -> 204).
        assert_eq!(apply([200, 40, 40], jitter(0.0, 1.0, 1.5)), [255, 51, 51]);
        // Saturation x0.5 halves the spread below value; x4 clips at saturation 1.
        assert_eq!(
            apply([200, 100, 40], jitter(0.0, 0.5, 1.0)),
            [200, 150, 120]
        );
        assert_eq!(apply([200, 100, 150], jitter(0.0, 4.0, 1.0)), [200, 0, 100]);
        // A third of the circle turns red into green and green into blue.
        assert_eq!(apply([255, 0, 0], jitter(1.0 / 3.0, 1.0, 1.0)), [0, 255, 0]);
        assert_eq!(
            apply([10, 200, 10], jitter(1.0 / 3.0, 1.0, 1.0)),
            [10, 10, 200]
        );
        assert_eq!(
            apply([255, 0, 0], jitter(-1.0 / 6.0, 1.0, 1.0)),
            [255, 0, 255]
        );
    }

    #[test]
    fn same_seed_same_augmentation() {
        let sample = crate::testutil::test_sample(4);
        let config = AugmentConfig {
            flip: FlipPolicy::MirrorTrafficSide,
            ..AugmentConfig::default()
        };
        let run = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let p = AugmentParams::draw(&config, &mut rng);
            (p, augment(&sample, &p, 64, 48))
        };
        let (p, out) = run(11);
        assert_eq!(run(11), (p, out.clone()));
        let (q, other) = run(12);
        assert_ne!(p, q);
        assert_ne!(out.image, other.image);
        // The eval config draws nothing but the identity (while consuming the same values).
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..20 {
            assert_eq!(
                AugmentParams::draw(&AugmentConfig::none(), &mut rng),
                AugmentParams::identity()
            );
        }
        let mut a = ChaCha8Rng::seed_from_u64(5);
        let mut b = ChaCha8Rng::seed_from_u64(5);
        AugmentParams::draw(&AugmentConfig::none(), &mut a);
        AugmentParams::draw(&config, &mut b);
        assert_eq!(a.random::<u64>(), b.random::<u64>());
    }

    #[test]
    fn config_validation_names_keys_and_ranges() {
        assert_eq!(AugmentConfig::default().validate(), Ok(()));
        assert_eq!(AugmentConfig::none().validate(), Ok(()));
        let edge = AugmentConfig {
            translate: 0.5,
            flip_probability: 1.0,
            ..AugmentConfig::default()
        };
        assert_eq!(edge.validate(), Ok(()));
        let bad = AugmentConfig {
            scale: 1.0,
            translate: -0.1,
            hue: f32::NAN,
            saturation: 1.5,
            value: 2.0,
            flip: FlipPolicy::MirrorTrafficSide,
            flip_probability: 1.1,
            mosaic_probability: -1.0,
            min_box_side: -2.0,
        };
        let message = bad.validate().unwrap_err();
        for line in [
            "data.augment.scale = 1: give a value in [0, 1)",
            "data.augment.translate = -0.1: give a value in [0, 0.5]",
            "data.augment.hue = NaN: give a value in [0, 0.5]",
            "data.augment.saturation = 1.5: give a value in [0, 1]",
            "data.augment.value = 2: give a value in [0, 1]",
            "data.augment.flip_probability = 1.1: give a value in [0, 1]",
            "data.augment.mosaic_probability = -1: give a value in [0, 1]",
            "data.augment.min_box_side = -2: give a number of pixels >= 0",
        ] {
            assert!(
                message.lines().any(|l| l == line),
                "{line:?} not in\n{message}"
            );
        }
    }

    #[test]
    fn config_serde_defaults_names_and_unknown_keys() {
        let config: AugmentConfig =
            serde_json::from_str(r#"{"flip": "mirror-traffic-side", "scale": 0.5}"#).unwrap();
        assert_eq!(
            config,
            AugmentConfig {
                flip: FlipPolicy::MirrorTrafficSide,
                scale: 0.5,
                ..AugmentConfig::default()
            }
        );
        let off: AugmentConfig = serde_json::from_str(r#"{"flip": "off"}"#).unwrap();
        assert_eq!(off, AugmentConfig::default());
        let err = serde_json::from_str::<AugmentConfig>(r#"{"scael": 0.5}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `scael`"), "{err}");
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains(r#""flip":"mirror-traffic-side""#), "{json}");
    }

    fn mosaic_params(centre_x: f32, centre_y: f32, zoom: f32, flip: bool) -> MosaicParams {
        MosaicParams {
            centre_x,
            centre_y,
            zoom,
            flip,
            hsv: HsvJitter::neutral(),
            min_box_side: DEFAULT_MIN_BOX_SIDE,
        }
    }

    fn mosaic_tiles() -> [Sample; 4] {
        // 100x60 frames, each a different colour; the box is the rectangle (class = tile).
        let colours = [[250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]];
        std::array::from_fn(|i| {
            let mut s = rect_sample(100, 60, (10, 10, 90, 50), Rgb(colours[i]));
            s.boxes[0].class = i as u16;
            s
        })
    }

    #[test]
    fn mosaic_places_tiles_in_their_quadrants() {
        let tiles = mosaic_tiles();
        let refs = [&tiles[0], &tiles[1], &tiles[2], &tiles[3]];
        // 100x60 into 200x120: letterbox scale 2, zoom 0.5 -> scale 1. Centre (100, 60): each
        // tile fills its quadrant exactly, boxes shifted by 0 or (100, 60).
        let out = mosaic(refs, &mosaic_params(0.5, 0.5, 0.5, false), 200, 120).unwrap();
        let want = [
            bx(0, 10.0, 10.0, 90.0, 50.0),
            bx(1, 110.0, 10.0, 190.0, 50.0),
            bx(2, 10.0, 70.0, 90.0, 110.0),
            bx(3, 110.0, 70.0, 190.0, 110.0),
        ];
        assert_eq!(out.boxes, want);
        for (b, tile) in want.iter().zip(&tiles) {
            assert_eq!(
                out.image.get_pixel(b.x1 as u32 + 5, b.y1 as u32 + 5),
                tile.image.get_pixel(15, 15)
            );
        }
        assert_eq!(
            out.drivable.as_raw().iter().filter(|&&v| v == 1).count(),
            4 * 80 * 40
        );

        // Centre (60, 72) (0.3 * 200, 0.6 * 120), zoom 0.75 -> scale 1.5 (tiles 150x90), then
        // flipped. Before the flip, tile 0 spans x -90..60, y -18..72; its box (10,10)-(90,50)
        // lands at (-75, -3)-(45, 57), clipped to (0, 0)-(45, 57). Tile 1 starts at (60, -18):
        // box at (75, -3)-(195, 57) -> (75, 0)-(195, 57). Tile 2 (-90, 72): (-75, 87)-(45, 147)
        // -> (0, 87)-(45, 120). Tile 3 (60, 72): (75, 87)-(195, 120). Mirrored: x -> 200 - x.
        let out = mosaic(refs, &mosaic_params(0.3, 0.6, 0.75, true), 200, 120).unwrap();
        let want = [
            bx(0, 155.0, 0.0, 200.0, 57.0),
            bx(1, 5.0, 0.0, 125.0, 57.0),
            bx(2, 155.0, 87.0, 200.0, 120.0),
            bx(3, 5.0, 87.0, 125.0, 120.0),
        ];
        for (got, want) in out.boxes.iter().zip(&want) {
            assert_box_near(got, want);
        }
        assert_eq!(out.boxes.len(), 4);
        assert_eq!(out.traffic_side, TrafficSide::Left);
        // Mirrored quadrants: tile 0 right of x = 140 and above y = 72, tile 1 left of it, ...
        let colour = |i: usize| *tiles[i].image.get_pixel(15, 15);
        assert_eq!(out.image.get_pixel(170, 30), &colour(0));
        assert_eq!(out.image.get_pixel(60, 30), &colour(1));
        assert_eq!(out.image.get_pixel(170, 100), &colour(2));
        assert_eq!(out.image.get_pixel(60, 100), &colour(3));
        // Tile 1's 150 px end at 60 + 150 = 210 > 200, so the canvas is covered; tile 0's
        // top-left corner (-90, -18) is cut off: no border anywhere.
        assert!(out.image.pixels().all(|p| *p != Rgb([PAD_VALUE; 3])));
        assert_eq!(out.drivable.get_pixel(170, 30)[0], 1);
        assert_eq!(out.drivable.get_pixel(145, 30)[0], 0);
    }

    #[test]
    fn mosaic_refuses_mixed_traffic_sides() {
        let mut tiles = mosaic_tiles();
        tiles[2].traffic_side = TrafficSide::Left;
        tiles[2].id = "odd-one".into();
        let refs = [&tiles[0], &tiles[1], &tiles[2], &tiles[3]];
        let err = mosaic(refs, &mosaic_params(0.5, 0.5, 1.0, false), 64, 64).unwrap_err();
        assert!(err.contains("tile 2 (odd-one) on the left"), "{err}");
    }

    #[test]
    fn simd_dispatch_matches_the_portable_build() {
        // `run_simd` picks the AVX2 build where the CPU has one; calling `run` directly uses
        // the build target's. Same source, same arithmetic: the results must be identical (the
        // warp's kernels are checked the same way in percept-infer).
        let (w, h) = (97u32, 61u32);
        let noise = |x: u32, y: u32, k: u32| ((x * 73 + y * 151 + k * 29) ^ (x * y)) as u8;
        let src = RgbImage::from_fn(w, h, |x, y| {
            Rgb([noise(x, y, 1), noise(x, y, 2), noise(x, y, 3)])
        });

        let gains = HsvGains::new(&HsvJitter {
            hue_shift: -0.21,
            saturation_gain: 1.4,
            value_gain: 0.7,
        });
        let (mut a, mut b) = (src.as_raw().clone(), src.as_raw().clone());
        run_simd(HsvPass {
            pixels: &mut a,
            gains,
        });
        HsvPass {
            pixels: &mut b,
            gains,
        }
        .run();
        assert_eq!(a, b);
        assert_ne!(&a, src.as_raw());
    }
}
