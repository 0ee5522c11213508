//! Helpers shared by the crate's tests.

use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::sample::{BoxLabel, Conditions, IgnoreRegion, Sample, TrafficSide};

/// A small deterministic sample; `k` varies its size, boxes and labels.
pub fn test_sample(k: u32) -> Sample {
    let (w, h) = (40 + k * 8, 24 + k * 4);
    let image = RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (40 * k) as u8])
    });
    let drivable = GrayImage::from_fn(w, h, |_, y| Luma([(y > h / 2) as u8]));
    let lanes = GrayImage::from_fn(w, h, |x, y| Luma([(x % 10 < 2 && y > h / 2) as u8]));
    Sample {
        id: format!("test-{k}"),
        image,
        boxes: (0..k)
            .map(|j| BoxLabel {
                class: j as u16,
                x1: 1.25 + j as f32,
                y1: 2.5,
                x2: 10.75 + j as f32,
                y2: 12.125,
            })
            .collect(),
        ignore: (0..k / 2)
            .map(|j| IgnoreRegion {
                x1: 2.0 + j as f32,
                y1: 1.0,
                x2: 6.5 + j as f32,
                y2: 4.0,
            })
            .collect(),
        drivable,
        lanes,
        conditions: Conditions {
            weather: "rainy".into(),
            time_of_day: if k.is_multiple_of(2) {
                "night"
            } else {
                "daytime"
            }
            .into(),
            scene: "city street".into(),
        },
        traffic_side: if k == 1 {
            TrafficSide::Left
        } else {
            TrafficSide::Right
        },
    }
}

/// Opens `split` of the dataset in `dir` at a site in the dataset's own region, failing on any
/// integrity problem.
pub fn open_at_home(dir: &std::path::Path, split: crate::Split) -> crate::Result<crate::Dataset> {
    let manifest = crate::Manifest::load_dir(dir)?;
    let guard = crate::ResidencyGuard::new(crate::Site {
        region: manifest.region.clone(),
        name: "test".into(),
    })?;
    let cleared = guard.check(dir).map_err(|r| r.error)?;
    crate::Dataset::open(&cleared, split, crate::IntegrityPolicy::Fail, &mut |_| {})
}
