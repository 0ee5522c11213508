//! BDD100K as YOLOP prepared it: one JSON label file and up to two mask PNGs per image.
//!
//! # Layout
//!
//! Under `--root`, for each split directory present among `train` and `val` (at least one):
//!
//! ```text
//! images/<split>/<stem>.jpg              the image (jpg, jpeg or png, any case)
//! det_annotations/<split>/<stem>.json    its labels
//! da_seg_annotations/<split>/<stem>.png  its drivable-area mask   (optional directory)
//! ll_seg_annotations/<split>/<stem>.png  its lane-line mask       (optional directory)
//! ```
//!
//! `images/` and `det_annotations/` must exist, and `det_annotations/<split>` for every image
//! split. The frames are labelled for drivable area (lanes) when `da_seg_annotations/`
//! (`ll_seg_annotations/`) exists; it must then hold every image split too.
//!
//! The frames come split by split, train first, each split's images sorted by file name; the
//! file names of all image splits are listed when [`Source::frames`] is called (a few MB for
//! BDD100K's 100k images), the labels are read one image at a time. Frame ids are the file
//! stems.
//!
//! # Labels
//!
//! Each label file is one image in BDD100K's 2018 per-image format:
//!
//! ```json
//! {"name": "b1c66a42-6f7d68ca",
//!  "attributes": {"weather": "overcast", "scene": "city street", "timeofday": "daytime"},
//!  "frames": [{"timestamp": 10000, "objects": [
//!    {"category": "car", "id": 0, "box2d": {"x1": 45.2, "y1": 254.5, "x2": 357.8, "y2": 487.9}},
//!    {"category": "area/drivable", "poly2d": [...]}]}]}
//! ```
//!
//! The objects are those of `frames[0]` and the conditions come from `attributes`, read
//! exactly as in [`bdd100k`](crate::bdd100k) (the labels are BDD100K's): objects without
//! `box2d` are ignored, categories are passed on verbatim, `box2d` corners are inclusive so
//! the box is `[x1, y1, x2 + 1, y2 + 1]`, and a missing condition is `undefined`. A missing or
//! malformed label file skips its image with the reason.
//!
//! # Masks
//!
//! Masks are read as grey (a colour mask is converted to luma) and thresholded as YOLOP's own
//! loader does (`cv2.threshold(mask, 1, 255, cv2.THRESH_BINARY)`): a grey value above 1 is
//! drivable area (lane line), 0 and 1 are not. They must be the size of their image.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use image::{GrayImage, RgbImage};
use percept_data::Split;
use serde_json::Value;

use crate::bdd100k::{describe, parse_conditions, parse_objects};
use crate::pixels::{check_mask_size, read_image, read_png_as_grey};
use crate::source::{FrameItem, LabelledTasks, Object, Pixels, SkippedRecord};
use crate::{Frame, Source};

const IMAGES: &str = "images";
const DETECTION: &str = "det_annotations";
const DRIVABLE: &str = "da_seg_annotations";
const LANES: &str = "ll_seg_annotations";

/// Where YOLOP's dataset is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YolopOptions {
    /// The directory holding `images/`, `det_annotations/` and the mask directories.
    pub root: PathBuf,
}

/// YOLOP's BDD100K layout on disk (see the [module docs](crate::yolop)).
#[derive(Debug)]
pub struct YolopSource {
    root: PathBuf,
    /// The splits present, train first.
    splits: Vec<Split>,
    drivable: bool,
    lanes: bool,
}

impl YolopSource {
    /// Checks the layout and finds the splits and the labelled tasks.
    pub fn new(opts: YolopOptions) -> Result<Self, String> {
        let root = opts.root;
        for dir in [IMAGES, DETECTION] {
            if !root.join(dir).is_dir() {
                return Err(format!(
                    "--root {}: there is no {dir}/ directory; expected YOLOP's layout: \
                     images/, det_annotations/ and optionally da_seg_annotations/ and \
                     ll_seg_annotations/, each with train/ and val/",
                    root.display()
                ));
            }
        }
        let splits: Vec<Split> = Split::ALL
            .into_iter()
            .filter(|split| root.join(IMAGES).join(split.as_str()).is_dir())
            .collect();
        if splits.is_empty() {
            return Err(format!(
                "--root {}: neither images/train/ nor images/val/ exists; expected the images \
                 of at least one split there",
                root.display()
            ));
        }
        let drivable = root.join(DRIVABLE).is_dir();
        let lanes = root.join(LANES).is_dir();
        let labelled = [(DETECTION, true), (DRIVABLE, drivable), (LANES, lanes)];
        for (dir, _) in labelled.iter().filter(|(_, present)| *present) {
            for split in &splits {
                if !root.join(dir).join(split.as_str()).is_dir() {
                    return Err(format!(
                        "--root {}: images/{split}/ exists but {dir}/{split}/ does not; every \
                         image split needs its labels",
                        root.display()
                    ));
                }
            }
        }
        Ok(Self {
            root,
            splits,
            drivable,
            lanes,
        })
    }

    /// The image file names of a split, sorted.
    fn list_images(&self, split: Split) -> Result<Vec<PathBuf>, String> {
        let dir = self.root.join(IMAGES).join(split.as_str());
        let cannot_list = |e: std::io::Error| format!("cannot list {}: {e}", dir.display());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(cannot_list)? {
            let path = entry.map_err(cannot_list)?.path();
            let is_image = path.extension().and_then(OsStr::to_str).is_some_and(|ext| {
                ["jpg", "jpeg", "png"]
                    .iter()
                    .any(|image| ext.eq_ignore_ascii_case(image))
            });
            if is_image && path.is_file() {
                names.push(path);
            }
        }
        names.sort_unstable_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(names)
    }

    /// The frame of one image, from its label file.
    fn frame(&self, split: Split, image: PathBuf) -> FrameItem {
        let Some(stem) = image.file_stem().and_then(OsStr::to_str) else {
            return Err(SkippedRecord {
                file: image.clone(),
                record: None,
                reason: "the file name is not valid UTF-8; rename the image and its labels"
                    .to_string(),
            });
        };
        let stem = stem.to_string();
        let relative = |dir: &str, ext: &str| format!("{dir}/{split}/{stem}.{ext}");
        let labels = relative(DETECTION, "json");
        let labels_path = self.root.join(&labels);
        let (objects, conditions) = read_labels(&labels_path).map_err(|reason| SkippedRecord {
            file: labels_path,
            record: Some(stem.clone()),
            reason,
        })?;
        let mask = |present: bool, dir: &str| present.then(|| self.root.join(relative(dir, "png")));
        Ok(Frame {
            drivable: mask(self.drivable, DRIVABLE),
            lanes: mask(self.lanes, LANES),
            id: stem,
            split,
            origin: labels,
            objects,
            conditions,
            image,
        })
    }
}

impl Source for YolopSource {
    fn format(&self) -> &'static str {
        "yolop"
    }

    fn tasks(&self) -> LabelledTasks {
        LabelledTasks {
            detection: true,
            drivable: self.drivable,
            lanes: self.lanes,
        }
    }

    fn frames(&self) -> Result<Box<dyn Iterator<Item = FrameItem> + Send + '_>, String> {
        let mut images = Vec::with_capacity(self.splits.len());
        for &split in &self.splits {
            images.push((split, self.list_images(split)?));
        }
        Ok(Box::new(images.into_iter().flat_map(
            move |(split, names)| names.into_iter().map(move |image| self.frame(split, image)),
        )))
    }

    fn load(&self, frame: &Frame) -> Result<Pixels, SkippedRecord> {
        let skip = |file: &Path, reason: String| SkippedRecord {
            file: file.to_path_buf(),
            record: Some(frame.id.clone()),
            reason,
        };
        let (image, jpeg) = read_image(&frame.image).map_err(|e| skip(&frame.image, e))?;
        let mask = |path: Option<&Path>, what: &str| {
            path.map(|path| read_mask(path, what, &image).map_err(|e| skip(path, e)))
                .transpose()
        };
        let drivable = mask(frame.drivable.as_deref(), "drivable mask")?;
        let lanes = mask(frame.lanes.as_deref(), "lane mask")?;
        Ok(Pixels {
            image,
            jpeg,
            drivable,
            lanes,
        })
    }
}

/// Reads a per-image label file: the objects of `frames[0]` and the conditions.
fn read_labels(path: &Path) -> Result<(Vec<Object>, percept_data::Conditions), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read the labels: {e}; every image needs its label file here")
    })?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| format!("the JSON is malformed: {e}"))?;
    let Value::Object(record) = &value else {
        return Err(format!(
            "the file holds {}; expected an object with \"attributes\" and \"frames\"",
            describe(&value)
        ));
    };
    let conditions = parse_conditions(record.get("attributes"))?;
    let first = match record.get("frames") {
        Some(Value::Array(frames)) => frames.first().ok_or_else(|| {
            "frames is empty; expected one frame holding the image's objects".to_string()
        })?,
        None | Some(Value::Null) => {
            return Err(
                "frames is missing; expected a list holding one frame with the image's objects"
                    .to_string(),
            )
        }
        Some(other) => {
            return Err(format!(
                "frames is {}; expected a list holding one frame with the image's objects",
                describe(other)
            ))
        }
    };
    let Value::Object(first) = first else {
        return Err(format!(
            "frames[0] is {}; expected an object with \"objects\"",
            describe(first)
        ));
    };
    let objects = parse_objects(first.get("objects"), "frames[0].objects")?;
    Ok((objects, conditions))
}

/// Reads a YOLOP mask as percept's 0/1 mask: grey values above 1 are foreground, as
/// YOLOP's `cv2.threshold(mask, 1, 255, THRESH_BINARY)`.
fn read_mask(path: &Path, what: &str, image: &RgbImage) -> Result<GrayImage, String> {
    let mut mask = read_png_as_grey(path)?;
    check_mask_size(what, &mask, image)?;
    for value in mask.iter_mut() {
        *value = u8::from(*value > 1);
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use image::{ImageFormat, Luma, Rgb};
    use percept_data::Conditions;
    use tempfile::TempDir;

    use super::*;

    const W: u32 = 4;
    const H: u32 = 2;

    fn write(path: PathBuf, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn write_image(path: PathBuf, format: ImageFormat) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_fn(W, H, |x, y| Rgb([(x * 50) as u8, (y * 90) as u8, 7]))
            .save_with_format(path, format)
            .unwrap();
    }

    const A_LABELS: &str = r#"{
      "name": "a",
      "attributes": {"weather": "clear", "scene": "highway", "timeofday": "night"},
      "frames": [{"timestamp": 10000, "objects": [
        {"category": "car", "id": 0,
         "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "none"},
         "box2d": {"x1": 0.5, "y1": 0.25, "x2": 2.5, "y2": 1.0}},
        {"category": "area/drivable", "id": 1,
         "poly2d": [[0, 0, "L"], [3, 0, "L"], [3, 1, "L"]]},
        {"category": "traffic light", "id": 2, "box2d": {"x1": 3, "y1": 0, "x2": 3, "y2": 0}}
      ]}]
    }"#;

    /// YOLOP's layout: train `b.jpg` and `a.JPG` (and a text file); val `c.png`, `d.jpg`
    /// (no labels) and `e.jpg` (labels without frames).
    fn yolop_root() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let at = |path: &str| dir.path().join(path);
        write_image(at("images/train/b.jpg"), ImageFormat::Jpeg);
        write_image(at("images/train/a.JPG"), ImageFormat::Jpeg);
        write(at("images/train/notes.txt"), "not an image");
        write_image(at("images/val/c.png"), ImageFormat::Png);
        write_image(at("images/val/d.jpg"), ImageFormat::Jpeg);
        write_image(at("images/val/e.jpg"), ImageFormat::Jpeg);
        write(at("det_annotations/train/a.json"), A_LABELS);
        write(
            at("det_annotations/train/b.json"),
            r#"{"name": "b", "attributes": {"weather": "snowy"}, "frames": [{"objects": []}]}"#,
        );
        write(
            at("det_annotations/val/c.json"),
            r#"{"frames": [{"objects": [{"category": "rider",
                "box2d": {"x1": 1, "y1": 1, "x2": 1, "y2": 1}}]}]}"#,
        );
        write(
            at("det_annotations/val/e.json"),
            r#"{"name": "e", "frames": []}"#,
        );
        for dir in ["da_seg_annotations", "ll_seg_annotations"] {
            for split in ["train", "val"] {
                fs::create_dir_all(at(&format!("{dir}/{split}"))).unwrap();
            }
        }
        dir
    }

    fn source(root: &Path) -> YolopSource {
        YolopSource::new(YolopOptions {
            root: root.to_path_buf(),
        })
        .unwrap()
    }

    #[test]
    fn frames_come_by_split_in_file_name_order() {
        let dir = yolop_root();
        let root = dir.path();
        let source = source(root);
        assert_eq!(source.format(), "yolop");
        assert_eq!(
            source.tasks(),
            LabelledTasks {
                detection: true,
                drivable: true,
                lanes: true
            }
        );
        let frame = |id: &str, split: Split, image: &str| Frame {
            id: id.to_string(),
            split,
            origin: format!("det_annotations/{split}/{id}.json"),
            objects: vec![],
            conditions: Conditions::new("undefined", "undefined", "undefined"),
            image: root.join(image),
            drivable: Some(root.join(format!("da_seg_annotations/{split}/{id}.png"))),
            lanes: Some(root.join(format!("ll_seg_annotations/{split}/{id}.png"))),
        };
        let a = Frame {
            objects: vec![
                Object::new("car", [0.5, 0.25, 3.5, 2.0]),
                Object::new("traffic light", [3.0, 0.0, 4.0, 1.0]),
            ],
            conditions: Conditions::new("clear", "night", "highway"),
            ..frame("a", Split::Train, "images/train/a.JPG")
        };
        let b = Frame {
            conditions: Conditions::new("snowy", "undefined", "undefined"),
            ..frame("b", Split::Train, "images/train/b.jpg")
        };
        let c = Frame {
            objects: vec![Object::new("rider", [1.0, 1.0, 2.0, 2.0])],
            ..frame("c", Split::Val, "images/val/c.png")
        };
        for _ in 0..2 {
            let items: Vec<FrameItem> = source.frames().unwrap().collect();
            assert_eq!(items.len(), 5);
            assert_eq!(items[0], Ok(a.clone()));
            assert_eq!(items[1], Ok(b.clone()));
            assert_eq!(items[2], Ok(c.clone()));
            let missing = items[3].as_ref().unwrap_err();
            assert_eq!(missing.file, root.join("det_annotations/val/d.json"));
            assert_eq!(missing.record.as_deref(), Some("d"));
            assert!(
                missing.reason.starts_with("cannot read the labels"),
                "{}",
                missing.reason
            );
            assert_eq!(
                items[4],
                Err(SkippedRecord {
                    file: root.join("det_annotations/val/e.json"),
                    record: Some("e".to_string()),
                    reason: "frames is empty; expected one frame holding the image's objects"
                        .to_string(),
                })
            );
        }
    }

    #[test]
    fn masks_are_thresholded_as_yolop_does() {
        let dir = yolop_root();
        let root = dir.path();
        // Grey values 0, 1, 2, 255 by column.
        let values = [0, 1, 2, 255];
        GrayImage::from_fn(W, H, |x, _| Luma([values[x as usize]]))
            .save(root.join("da_seg_annotations/train/a.png"))
            .unwrap();
        // The same values in colour.
        RgbImage::from_fn(W, H, |x, _| Rgb([values[x as usize]; 3]))
            .save(root.join("ll_seg_annotations/train/a.png"))
            .unwrap();
        let source = source(root);
        let frame = source.frames().unwrap().next().unwrap().unwrap();
        let pixels = source.load(&frame).unwrap();
        assert_eq!(pixels.image.dimensions(), (W, H));
        assert_eq!(
            pixels.jpeg,
            Some(fs::read(root.join("images/train/a.JPG")).unwrap())
        );
        let expected = GrayImage::from_fn(W, H, |x, _| Luma([[0, 0, 1, 1][x as usize]]));
        assert_eq!(pixels.drivable.as_ref(), Some(&expected));
        assert_eq!(pixels.lanes.as_ref(), Some(&expected));

        // A mask of the wrong size, and a missing one.
        GrayImage::new(W, H + 1)
            .save(root.join("ll_seg_annotations/train/a.png"))
            .unwrap();
        let e = source.load(&frame).unwrap_err();
        assert_eq!(
            e,
            SkippedRecord {
                file: root.join("ll_seg_annotations/train/a.png"),
                record: Some("a".to_string()),
                reason: "the lane mask is 4x3 but its image is 4x2".to_string(),
            }
        );
        fs::remove_file(root.join("da_seg_annotations/train/a.png")).unwrap();
        let e = source.load(&frame).unwrap_err();
        assert_eq!(e.file, root.join("da_seg_annotations/train/a.png"));
        assert!(e.reason.starts_with("cannot read the mask"), "{}", e.reason);
    }

    #[test]
    fn mask_tasks_follow_the_directories_present() {
        let dir = yolop_root();
        let root = dir.path();
        fs::remove_dir_all(root.join("ll_seg_annotations")).unwrap();
        fs::remove_dir_all(root.join("images/val")).unwrap();
        let source = source(root);
        assert_eq!(
            source.tasks(),
            LabelledTasks {
                detection: true,
                drivable: true,
                lanes: false
            }
        );
        let frames: Vec<Frame> = source.frames().unwrap().map(Result::unwrap).collect();
        let ids: Vec<(&str, Split)> = frames.iter().map(|f| (f.id.as_str(), f.split)).collect();
        assert_eq!(ids, [("a", Split::Train), ("b", Split::Train)]);
        assert!(frames
            .iter()
            .all(|f| f.lanes.is_none() && f.drivable.is_some()));
    }

    #[test]
    fn new_checks_the_layout() {
        let dir = yolop_root();
        let root = dir.path();
        let error = || {
            YolopSource::new(YolopOptions {
                root: root.to_path_buf(),
            })
            .unwrap_err()
        };
        fs::remove_dir_all(root.join("da_seg_annotations/val")).unwrap();
        let e = error();
        assert!(
            e.contains("images/val/ exists but da_seg_annotations/val/ does not"),
            "{e}"
        );
        fs::remove_dir_all(root.join("images/train")).unwrap();
        fs::remove_dir_all(root.join("images/val")).unwrap();
        let e = error();
        assert!(
            e.contains("neither images/train/ nor images/val/ exists"),
            "{e}"
        );
        fs::remove_dir_all(root.join("det_annotations")).unwrap();
        let e = error();
        assert!(
            e.starts_with(&format!(
                "--root {}: there is no det_annotations/",
                root.display()
            )),
            "{e}"
        );
    }
}
