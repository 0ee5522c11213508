//! The network input as a model card describes it: its size and how frames are normalised.

use serde::{Deserialize, Serialize};

use crate::letterbox::PAD_VALUE;

/// Largest image percept handles, in pixels: 2^25, which 8K UHD (7680x4320) fits. Shards hold
/// no larger frame (percept-data), prediction reads no larger image, and a model card's input
/// size is bounded by it (a forged card must not make a reader allocate without bound).
pub const MAX_IMAGE_PIXELS: u64 = 1 << 25;

/// The network input in pixels (both sides multiples of 32); frames are letterboxed to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSize {
    pub width: usize,
    pub height: usize,
}

/// Per-channel (RGB) mean of images scaled to 0..1 (ImageNet statistics).
pub const NORM_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel (RGB) standard deviation of images scaled to 0..1 (ImageNet statistics).
pub const NORM_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Input normalisation: `(pixel / 255 - mean) / std` per RGB channel, after letterboxing to
/// the input size with `pad_value` grey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_value: u8,
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization {
            mean: NORM_MEAN,
            std: NORM_STD,
            pad_value: PAD_VALUE,
        }
    }
}
