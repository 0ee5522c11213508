//! One labelled camera frame, as every importer, the synthetic generator and the shard reader
//! produce it.

use image::{GrayImage, RgbImage};
use serde::{Deserialize, Serialize};

/// An axis-aligned 2D box in pixel coordinates of the image it belongs to.
///
/// `x1,y1` is the top-left corner and `x2,y2` the bottom-right corner, both as continuous
/// coordinates (a box covering pixel columns 10..=19 has `x1 = 10.0, x2 = 20.0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BoxLabel {
    /// Index into the dataset's class list (`Manifest::classes`).
    pub class: u16,
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl BoxLabel {
    /// A box of `class` with corners `[x1, y1, x2, y2]`.
    pub fn new(class: u16, [x1, y1, x2, y2]: [f32; 4]) -> Self {
        BoxLabel {
            class,
            x1,
            y1,
            x2,
            y2,
        }
    }

    pub fn width(&self) -> f32 {
        self.x2 - self.x1
    }
    pub fn height(&self) -> f32 {
        self.y2 - self.y1
    }
}

/// A region whose objects are not labelled (KITTI's `DontCare`, crowds too small or dense to
/// box), in pixel coordinates like [`BoxLabel`]. Training treats it as neither object nor
/// background; evaluation counts no detection inside it as a false positive.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IgnoreRegion {
    pub x1: f32,
    pub y1: f32,
    pub x2: f32,
    pub y2: f32,
}

impl IgnoreRegion {
    /// Whether the point lies inside the region (edges included).
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x1 && x <= self.x2 && y >= self.y1 && y <= self.y2
    }
}

/// Which side of the road traffic drives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficSide {
    Left,
    Right,
}

impl TrafficSide {
    /// The side a left-right mirrored frame shows.
    pub fn mirrored(self) -> Self {
        match self {
            TrafficSide::Left => TrafficSide::Right,
            TrafficSide::Right => TrafficSide::Left,
        }
    }

    /// `"left"` or `"right"`, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            TrafficSide::Left => "left",
            TrafficSide::Right => "right",
        }
    }

    /// The traffic side of a region (ISO 3166-1 alpha-2), by the countries that drive on the
    /// left; every other code drives on the right.
    pub fn of_region(region: &str) -> Self {
        const LEFT: &[&str] = &[
            "GB", "IE", "JP", "AU", "NZ", "IN", "ID", "MY", "SG", "TH", "ZA", "HK", "MO", "PK",
            "BD", "LK", "KE", "UG", "TZ", "ZW", "ZM", "MZ", "BW", "NA", "CY", "MT", "JM", "TT",
        ];
        if LEFT.contains(&region.to_ascii_uppercase().as_str()) {
            TrafficSide::Left
        } else {
            TrafficSide::Right
        }
    }
}

/// Per-frame conditions, kept so evaluation can slice by them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditions {
    /// e.g. `clear`, `overcast`, `rainy`, `foggy`.
    pub weather: String,
    /// e.g. `daytime`, `dawn/dusk`, `night` (BDD100K's names).
    pub time_of_day: String,
    /// e.g. `highway`, `city street`, `residential`.
    pub scene: String,
}

impl Conditions {
    pub fn new(weather: &str, time_of_day: &str, scene: &str) -> Self {
        Conditions {
            weather: weather.to_string(),
            time_of_day: time_of_day.to_string(),
            scene: scene.to_string(),
        }
    }
}

/// A labelled frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Stable id of the frame within its dataset (never exported).
    pub id: String,
    /// RGB image, `[height, width]`.
    pub image: RgbImage,
    /// Object boxes in image pixels.
    pub boxes: Vec<BoxLabel>,
    /// Regions whose objects are not labelled, in image pixels.
    pub ignore: Vec<IgnoreRegion>,
    /// Drivable-area mask, same size as `image`: 1 drivable, 0 not.
    pub drivable: GrayImage,
    /// Lane-line mask, same size as `image`: 1 lane marking, 0 not.
    pub lanes: GrayImage,
    pub conditions: Conditions,
    pub traffic_side: TrafficSide,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirroring_swaps_the_side_and_names_match_serde() {
        for side in [TrafficSide::Left, TrafficSide::Right] {
            assert_ne!(side.mirrored(), side);
            assert_eq!(side.mirrored().mirrored(), side);
            assert_eq!(
                serde_json::to_string(&side).unwrap(),
                format!("\"{}\"", side.name())
            );
        }
        assert_eq!(
            TrafficSide::of_region("GB").mirrored(),
            TrafficSide::of_region("DE")
        );
    }
}
