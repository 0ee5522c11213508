//! BDD100K in its own layout: one Scalabel JSON label file per split, images and label masks
//! in directories.
//!
//! # Layout
//!
//! As BDD100K unpacks (`percept import bdd100k` takes each path as a flag, so other layouts
//! work as long as the file names match):
//!
//! ```text
//! --images    bdd100k/images/100k/train/            b1c66a42-6f7d68ca.jpg, ...
//! --labels    bdd100k/labels/det_20/det_train.json
//! --drivable  bdd100k/labels/drivable/masks/train/  b1c66a42-6f7d68ca.png, ...  (optional)
//! --lanes     bdd100k/labels/lane/masks/train/      b1c66a42-6f7d68ca.png, ...  (optional)
//! ```
//!
//! Without `--drivable` (`--lanes`) the frames are not labelled for drivable area (lanes):
//! those tasks are neither trained nor evaluated on them. The masks are the `masks`
//! directories (one grey byte per pixel), not the `colormaps` (RGB, for viewing).
//!
//! # Labels
//!
//! The label file is a JSON list of frames (BDD100K's `det_20` files; the 2018
//! `bdd100k_labels_images_*.json` files have the same shape):
//!
//! ```json
//! [{"name": "b1c66a42-6f7d68ca.jpg",
//!   "attributes": {"weather": "overcast", "scene": "city street", "timeofday": "daytime"},
//!   "labels": [{"category": "car",
//!               "box2d": {"x1": 45.2, "y1": 254.5, "x2": 357.8, "y2": 487.9}}]}]
//! ```
//!
//! It is read as a stream, one frame at a time on a thread of its own, so memory does not grow
//! with the file (`det_train.json` is about 1 GB). Frame `K` in reports is the `K`-th element
//! of the list, counting from 0 (`jq '.[K]'`).
//!
//! - Frame id: `name` without its extension; image `<--images>/<name>`, masks
//!   `<--drivable>/<id>.png` and `<--lanes>/<id>.png`. A `name` that is not a plain file name
//!   (a path) is refused.
//! - Objects: every label with a `box2d`, its `category` passed on verbatim (the class map
//!   decides what `person`, `bike` or `traffic light` become).
//! - Boxes: Scalabel's `box2d` corners are inclusive pixel coordinates (a box from `x1 = 10`
//!   to `x2 = 19` is 10 pixels wide), so the box is `[x1, y1, x2 + 1, y2 + 1]` in percept's
//!   continuous coordinates.
//! - Conditions: `attributes.weather`, `attributes.timeofday` and `attributes.scene`, verbatim;
//!   missing or null is `undefined` (BDD100K's own word for unknown).
//! - Ignored: labels without `box2d` (the `poly2d` drivable-area and lane polygons of older
//!   files: the masks are the drivable and lane labels), label and frame attributes other
//!   than the three conditions (`occluded`, `truncated`, `trafficLightColor`), `id`,
//!   `timestamp`, and any other key.
//!
//! A malformed frame (no `name`, a `box2d` corner that is missing, not a finite number, or
//! with `x2 < x1` or `y2 < y1`, `labels` that is not a list, a boxed label without
//! `category`) is skipped with a reason naming the key, and the stream goes on. A file that
//! does not start with a list is refused up front (the outer error of
//! [`Source::frames`]); malformed JSON further in ends the stream with a skipped record
//! saying where (line and column) and that the rest of the file was not read.
//!
//! # Masks
//!
//! - Drivable (`labels/drivable/masks`): 0 direct drivable, 1 alternative drivable,
//!   2 background. percept's drivable mask is 1 for 0 and 1, 0 for 2; any other value skips
//!   the frame (the reason names the value and the pixel).
//! - Lanes (`labels/lane/masks`): one byte per pixel, bit-packed as in BDD100K's
//!   `eval/lane.py`: bits 0-2 the category ([`LaneCategory::bits`]), bit 3 background
//!   (1 background, 0 lane), bit 4 style (solid, dashed), bit 5 direction (parallel,
//!   vertical). percept's lane mask is 1 where the background bit is 0 and the category is
//!   one of [`Bdd100kOptions::lane_categories`], else 0; style and direction do not matter.
//!
//! Both must be the size of their image.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use image::{GrayImage, RgbImage};
use percept_data::{Conditions, Split};
use serde::de::{Deserializer as _, SeqAccess, Visitor};
use serde_json::Value;

use crate::pixels::{check_mask_size, read_grey_png, read_image};
use crate::source::{FrameItem, LabelledTasks, Object, Pixels, SkippedRecord};
use crate::{Frame, Source};

/// BDD100K's word for a condition that is not labelled.
const UNDEFINED: &str = "undefined";

/// How many parsed frames the label reader may run ahead of the pipeline.
const STREAM_AHEAD: usize = 256;

/// A BDD100K lane category, as packed in bits 0-2 of a lane mask byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaneCategory {
    Crosswalk,
    DoubleOther,
    DoubleWhite,
    DoubleYellow,
    RoadCurb,
    SingleOther,
    SingleWhite,
    SingleYellow,
}

impl LaneCategory {
    /// Every category, in the order of their values.
    pub const ALL: [LaneCategory; 8] = [
        LaneCategory::Crosswalk,
        LaneCategory::DoubleOther,
        LaneCategory::DoubleWhite,
        LaneCategory::DoubleYellow,
        LaneCategory::RoadCurb,
        LaneCategory::SingleOther,
        LaneCategory::SingleWhite,
        LaneCategory::SingleYellow,
    ];

    /// The category's value in bits 0-2 of a lane mask byte.
    pub fn bits(self) -> u8 {
        match self {
            LaneCategory::Crosswalk => 0,
            LaneCategory::DoubleOther => 1,
            LaneCategory::DoubleWhite => 2,
            LaneCategory::DoubleYellow => 3,
            LaneCategory::RoadCurb => 4,
            LaneCategory::SingleOther => 5,
            LaneCategory::SingleWhite => 6,
            LaneCategory::SingleYellow => 7,
        }
    }

    /// BDD100K's name for the category (`single white`).
    pub fn name(self) -> &'static str {
        match self {
            LaneCategory::Crosswalk => "crosswalk",
            LaneCategory::DoubleOther => "double other",
            LaneCategory::DoubleWhite => "double white",
            LaneCategory::DoubleYellow => "double yellow",
            LaneCategory::RoadCurb => "road curb",
            LaneCategory::SingleOther => "single other",
            LaneCategory::SingleWhite => "single white",
            LaneCategory::SingleYellow => "single yellow",
        }
    }
}

impl fmt::Display for LaneCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LaneCategory {
    type Err = String;

    /// Parses BDD100K's name for a category (`single white`).
    fn from_str(s: &str) -> Result<Self, String> {
        LaneCategory::ALL
            .into_iter()
            .find(|category| category.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = LaneCategory::ALL
                    .iter()
                    .map(|category| format!("\"{category}\""))
                    .collect();
                format!(
                    "unknown BDD100K lane category \"{s}\"; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// The lane categories percept trains as lane lines by default: the six painted lines
/// (single and double; white, yellow and other). Crosswalks and road curbs are left out: a
/// crosswalk's stripes run across the road and a curb is the road's edge, not a line marking a
/// lane, and both would teach the lane head shapes that are not lanes.
pub fn default_lane_lines() -> Vec<LaneCategory> {
    vec![
        LaneCategory::DoubleOther,
        LaneCategory::DoubleWhite,
        LaneCategory::DoubleYellow,
        LaneCategory::SingleOther,
        LaneCategory::SingleWhite,
        LaneCategory::SingleYellow,
    ]
}

/// Where a BDD100K split is on disk, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bdd100kOptions {
    /// The split's image directory (`bdd100k/images/100k/train`).
    pub images: PathBuf,
    /// The split's label file (`bdd100k/labels/det_20/det_train.json`).
    pub labels: PathBuf,
    /// The split's drivable-area masks (`bdd100k/labels/drivable/masks/train`), if any.
    pub drivable: Option<PathBuf>,
    /// The split's lane masks (`bdd100k/labels/lane/masks/train`), if any.
    pub lanes: Option<PathBuf>,
    /// The split every frame is imported into.
    pub split: Split,
    /// The lane categories that are lane lines (see [`default_lane_lines`]).
    pub lane_categories: Vec<LaneCategory>,
}

/// A BDD100K split on disk (see the [module docs](crate::bdd100k)).
#[derive(Debug)]
pub struct Bdd100kSource {
    opts: Bdd100kOptions,
    /// percept's lane value (0 or 1) for each BDD100K lane mask byte.
    lane_values: [u8; 256],
}

impl Bdd100kSource {
    /// Checks that the directories and the label file exist.
    pub fn new(opts: Bdd100kOptions) -> Result<Self, String> {
        if !opts.images.is_dir() {
            return Err(format!(
                "--images {}: no such directory; expected a split's images, such as \
                 bdd100k/images/100k/train",
                opts.images.display()
            ));
        }
        if !opts.labels.is_file() {
            return Err(format!(
                "--labels {}: no such file; expected a split's label file, such as \
                 bdd100k/labels/det_20/det_train.json",
                opts.labels.display()
            ));
        }
        if let Some(drivable) = opts.drivable.as_deref().filter(|dir| !dir.is_dir()) {
            return Err(format!(
                "--drivable {}: no such directory; expected a split's drivable masks, such as \
                 bdd100k/labels/drivable/masks/train (or leave --drivable out)",
                drivable.display()
            ));
        }
        if let Some(lanes) = opts.lanes.as_deref().filter(|dir| !dir.is_dir()) {
            return Err(format!(
                "--lanes {}: no such directory; expected a split's lane masks, such as \
                 bdd100k/labels/lane/masks/train (or leave --lanes out)",
                lanes.display()
            ));
        }
        if opts.lanes.is_some() && opts.lane_categories.is_empty() {
            return Err(
                "no lane categories chosen, so every lane mask would be empty; choose at least \
                 one, or leave --lanes out"
                    .to_string(),
            );
        }
        let mut lane_values = [0; 256];
        for (byte, value) in (0..=u8::MAX).zip(lane_values.iter_mut()) {
            let background = byte & 0b1000 != 0;
            let category = byte & 0b111;
            *value = u8::from(
                !background
                    && opts
                        .lane_categories
                        .iter()
                        .any(|wanted| wanted.bits() == category),
            );
        }
        Ok(Self { opts, lane_values })
    }
}

impl Source for Bdd100kSource {
    fn format(&self) -> &'static str {
        "bdd100k"
    }

    fn tasks(&self) -> LabelledTasks {
        LabelledTasks {
            detection: true,
            drivable: self.opts.drivable.is_some(),
            lanes: self.opts.lanes.is_some(),
        }
    }

    fn settings(&self) -> Vec<(String, String)> {
        let names: Vec<&str> = self.opts.lane_categories.iter().map(|c| c.name()).collect();
        vec![("lane categories".into(), names.join(","))]
    }

    /// Streams the label file from a thread of its own; see the
    /// [module docs](crate::bdd100k) for what ends the stream. Dropping the iterator stops and
    /// joins the thread.
    fn frames(&self) -> Result<Box<dyn Iterator<Item = FrameItem> + Send + '_>, String> {
        let labels = &self.opts.labels;
        let cannot_read = |e: std::io::Error| format!("--labels {}: {e}", labels.display());
        let mut reader =
            BufReader::with_capacity(1 << 16, File::open(labels).map_err(cannot_read)?);
        let head = reader.fill_buf().map_err(cannot_read)?;
        let expected = "expected a JSON list of frames, as in BDD100K's \
                        labels/det_20/det_train.json";
        match head.iter().find(|byte| !byte.is_ascii_whitespace()) {
            Some(b'[') => {}
            // Whitespace only, as far as the first block goes: the parser reports what follows.
            None if !head.is_empty() => {}
            None => {
                return Err(format!(
                    "--labels {}: the file is empty; {expected}",
                    labels.display()
                ))
            }
            Some(b'{') => {
                return Err(format!(
                    "--labels {}: the file holds a JSON object; {expected} (a Scalabel dataset \
                     object with a \"frames\" key is not read: extract the list, e.g. \
                     `jq .frames`)",
                    labels.display()
                ))
            }
            Some(_) => {
                return Err(format!(
                    "--labels {}: the file does not start with '['; {expected}",
                    labels.display()
                ))
            }
        }
        let (tx, rx) = mpsc::sync_channel(STREAM_AHEAD);
        let opts = self.opts.clone();
        let thread = std::thread::Builder::new()
            .name("bdd100k-labels".to_string())
            .spawn(move || stream_frames(&opts, reader, &tx))
            .map_err(|e| format!("cannot start the label reader thread: {e}"))?;
        Ok(Box::new(FrameStream {
            rx: Some(rx),
            thread: Some(thread),
        }))
    }

    fn load(&self, frame: &Frame) -> Result<Pixels, SkippedRecord> {
        let skip = |file: &Path, reason: String| SkippedRecord {
            file: file.to_path_buf(),
            record: Some(frame.id.clone()),
            reason,
        };
        let (image, jpeg) = read_image(&frame.image).map_err(|e| skip(&frame.image, e))?;
        let drivable = frame
            .drivable
            .as_deref()
            .map(|path| read_drivable(path, &image).map_err(|e| skip(path, e)))
            .transpose()?;
        let lanes = frame
            .lanes
            .as_deref()
            .map(|path| self.read_lanes(path, &image).map_err(|e| skip(path, e)))
            .transpose()?;
        Ok(Pixels {
            image,
            jpeg,
            drivable,
            lanes,
        })
    }
}

impl Bdd100kSource {
    /// Reads a BDD100K lane mask as percept's 0/1 lane mask.
    fn read_lanes(&self, path: &Path, image: &RgbImage) -> Result<GrayImage, String> {
        let mut mask = read_grey_png(path)?;
        check_mask_size("lane mask", &mask, image)?;
        for byte in mask.iter_mut() {
            *byte = self.lane_values[usize::from(*byte)];
        }
        Ok(mask)
    }
}

/// Reads a BDD100K drivable mask (0 direct, 1 alternative, 2 background) as percept's 0/1
/// drivable mask.
///
/// The 2018 release's `drivable_maps/labels/<id>_drivable_id.png` use other values
/// (0 background, 1 direct, 2 alternative) that pass every check here: reading them would
/// silently invert the labels, so a frame whose mask exists only under that name is refused
/// with the reason.
fn read_drivable(path: &Path, image: &RgbImage) -> Result<GrayImage, String> {
    if !path.exists() {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let legacy = path.with_file_name(format!("{stem}_drivable_id.png"));
        if legacy.exists() {
            return Err(format!(
                "no {} but {} exists: that is the 2018 drivable_maps encoding (0 background, \
                 1 direct, 2 alternative), which this importer does not read; pass the current \
                 release's labels/drivable/masks directory as --drivable",
                path.display(),
                legacy.display()
            ));
        }
    }
    let mut mask = read_grey_png(path)?;
    check_mask_size("drivable mask", &mask, image)?;
    let width = mask.width() as usize;
    for (i, value) in mask.iter_mut().enumerate() {
        *value = match *value {
            0 | 1 => 1,
            2 => 0,
            other => {
                let (x, y) = (i % width, i / width);
                return Err(format!(
                    "pixel ({x}, {y}) of the drivable mask is {other}; BDD100K drivable masks \
                     hold 0 (direct), 1 (alternative) or 2 (background): is this a \
                     labels/drivable/masks file?"
                ));
            }
        };
    }
    Ok(mask)
}

/// The iterator [`Bdd100kSource::frames`] returns: frames as the reader thread parses them.
struct FrameStream {
    /// `None` only while dropping.
    rx: Option<Receiver<FrameItem>>,
    thread: Option<JoinHandle<()>>,
}

impl Iterator for FrameStream {
    type Item = FrameItem;

    fn next(&mut self) -> Option<FrameItem> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for FrameStream {
    fn drop(&mut self) {
        // Hanging up first makes the reader's next send fail, so it stops and the join is
        // prompt. A panic on the reader thread has nothing left to report to.
        drop(self.rx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reader thread: parses the label file's list one frame at a time and sends each frame,
/// until the list ends, the JSON is malformed, or the receiver hangs up.
fn stream_frames(opts: &Bdd100kOptions, reader: BufReader<File>, tx: &SyncSender<FrameItem>) {
    let labels_file = opts.labels.file_name().map_or_else(
        || opts.labels.display().to_string(),
        |file| file.to_string_lossy().into_owned(),
    );
    let mut read = 0;
    let mut json = serde_json::Deserializer::from_reader(reader);
    let visitor = FrameVisitor {
        opts,
        labels_file: &labels_file,
        tx,
        read: &mut read,
    };
    let result = json.deserialize_seq(visitor).and_then(|()| json.end());
    if let Err(e) = result {
        // When the receiver has hung up, the visitor stopped early (and this send fails too).
        let frames = if read == 1 { "frame" } else { "frames" };
        let _ = tx.send(Err(SkippedRecord {
            file: opts.labels.clone(),
            record: None,
            reason: format!(
                "malformed JSON after the first {read} {frames}: {e}; the rest of the file was \
                 not read"
            ),
        }));
    }
}

/// Visits the label file's top-level list, sending each element as it is parsed.
struct FrameVisitor<'a> {
    opts: &'a Bdd100kOptions,
    /// The label file's name, for [`Frame::origin`].
    labels_file: &'a str,
    tx: &'a SyncSender<FrameItem>,
    /// How many elements have been read.
    read: &'a mut usize,
}

impl<'de> Visitor<'de> for FrameVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of frames")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Each element is parsed as a plain JSON value first, so a frame of the wrong shape
        // is skipped with a precise reason instead of ending the stream.
        while let Some(value) = seq.next_element::<Value>()? {
            let item = parse_frame(self.opts, self.labels_file, *self.read, &value);
            *self.read += 1;
            if self.tx.send(item).is_err() {
                break; // The iterator was dropped.
            }
        }
        Ok(())
    }
}

/// Turns element `index` of the label file (named `labels_file`) into a frame.
fn parse_frame(opts: &Bdd100kOptions, labels_file: &str, index: usize, value: &Value) -> FrameItem {
    let name = value.get("name").and_then(Value::as_str);
    let record = match name {
        Some(name) => format!("frame {index} ({name})"),
        None => format!("frame {index}"),
    };
    let skip = |reason: String| SkippedRecord {
        file: opts.labels.clone(),
        record: Some(record.clone()),
        reason,
    };
    let Value::Object(frame) = value else {
        return Err(skip(format!(
            "the frame is {}; expected an object with \"name\" and \"labels\"",
            describe(value)
        )));
    };
    let name = match (name, frame.get("name")) {
        (Some(name), _) => name,
        (None, None | Some(Value::Null)) => {
            return Err(skip(
                "name is missing; expected the image's file name".to_string(),
            ))
        }
        (None, Some(other)) => {
            return Err(skip(format!(
                "name is {}; expected the image's file name, a string",
                describe(other)
            )))
        }
    };
    let stem = match Path::new(name).file_name().and_then(|file| file.to_str()) {
        Some(file) if file == name => Path::new(name)
            .file_stem()
            .and_then(|stem| stem.to_str())
            .unwrap_or(name),
        _ => {
            return Err(skip(format!(
                "name {} is not a plain file name; expected the image's file name, such as \
                 \"b1c66a42-6f7d68ca.jpg\"",
                describe(&frame["name"])
            )))
        }
    };
    let conditions = parse_conditions(frame.get("attributes")).map_err(skip)?;
    let objects = parse_objects(frame.get("labels"), "labels").map_err(skip)?;
    let mask = |dir: &Option<PathBuf>| dir.as_ref().map(|dir| dir.join(format!("{stem}.png")));
    Ok(Frame {
        id: stem.to_string(),
        split: opts.split,
        origin: format!("{labels_file}, {record}"),
        objects,
        conditions,
        image: opts.images.join(name),
        drivable: mask(&opts.drivable),
        lanes: mask(&opts.lanes),
    })
}

/// Reads a BDD100K frame's conditions from its `attributes` object (missing or null:
/// all `undefined`).
///
/// Shared by the Scalabel list files and YOLOP's per-image files, which hold the same
/// `attributes`.
pub(crate) fn parse_conditions(attributes: Option<&Value>) -> Result<Conditions, String> {
    let attributes = match attributes {
        None | Some(Value::Null) => None,
        Some(Value::Object(attributes)) => Some(attributes),
        Some(other) => {
            return Err(format!(
                "attributes is {}; expected an object",
                describe(other)
            ))
        }
    };
    let condition = |key: &str| match attributes.and_then(|attributes| attributes.get(key)) {
        None | Some(Value::Null) => Ok(UNDEFINED.to_string()),
        Some(Value::String(value)) => Ok(value.clone()),
        Some(other) => Err(format!(
            "attributes.{key} is {}; expected a string",
            describe(other)
        )),
    };
    Ok(Conditions {
        weather: condition("weather")?,
        time_of_day: condition("timeofday")?,
        scene: condition("scene")?,
    })
}

/// Reads the objects of a BDD100K label list (`key` names it in errors: `labels`,
/// `frames[0].objects`): every label with a `box2d`, its box converted from inclusive corners
/// to `[x1, y1, x2 + 1, y2 + 1]`. Missing or null is no objects.
///
/// Shared by the Scalabel list files and YOLOP's per-image files, which hold the same labels.
pub(crate) fn parse_objects(labels: Option<&Value>, key: &str) -> Result<Vec<Object>, String> {
    let labels = match labels {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(labels)) => labels,
        Some(other) => {
            return Err(format!(
                "{key} is {}; expected a list of labels",
                describe(other)
            ))
        }
    };
    let mut objects = Vec::new();
    for (i, label) in labels.iter().enumerate() {
        let Value::Object(label) = label else {
            return Err(format!(
                "{key}[{i}] is {}; expected an object",
                describe(label)
            ));
        };
        let Some(box2d) = label.get("box2d").filter(|box2d| !box2d.is_null()) else {
            continue; // A polygon or another kind of label: not an object to detect.
        };
        let category = match label.get("category") {
            Some(Value::String(category)) => category.clone(),
            None | Some(Value::Null) => {
                return Err(format!(
                    "{key}[{i}].category is missing; expected the object's category, such as \
                     \"car\""
                ))
            }
            Some(other) => {
                return Err(format!(
                    "{key}[{i}].category is {}; expected a string, such as \"car\"",
                    describe(other)
                ))
            }
        };
        let bbox = parse_box2d(box2d, &format!("{key}[{i}].box2d"))?;
        objects.push(Object { category, bbox });
    }
    Ok(objects)
}

/// Reads a Scalabel `box2d` (inclusive corners) as a continuous `[x1, y1, x2 + 1, y2 + 1]`.
fn parse_box2d(box2d: &Value, key: &str) -> Result<[f32; 4], String> {
    let Value::Object(corners) = box2d else {
        return Err(format!(
            "{key} is {}; expected an object with x1, y1, x2 and y2",
            describe(box2d)
        ));
    };
    let corner = |name: &str| match corners.get(name) {
        None => Err(format!("{key}.{name} is missing; expected a number")),
        Some(value) => value
            .as_f64()
            .filter(|x| (*x as f32).is_finite())
            .ok_or_else(|| {
                format!(
                    "{key}.{name} is {}; expected a finite number",
                    describe(value)
                )
            }),
    };
    let (x1, y1, x2, y2) = (corner("x1")?, corner("y1")?, corner("x2")?, corner("y2")?);
    if x2 < x1 {
        return Err(format!(
            "{key} has x2 = {x2} < x1 = {x1}; expected x1 <= x2"
        ));
    }
    if y2 < y1 {
        return Err(format!(
            "{key} has y2 = {y2} < y1 = {y1}; expected y1 <= y2"
        ));
    }
    Ok([x1 as f32, y1 as f32, (x2 + 1.0) as f32, (y2 + 1.0) as f32])
}

/// A JSON value as it appears in the file, shortened for an error message.
pub(crate) fn describe(value: &Value) -> String {
    const MAX_CHARS: usize = 40;
    let text = value.to_string();
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use image::{Luma, Rgb};
    use tempfile::TempDir;

    use super::*;

    const W: u32 = 64;
    const H: u32 = 48;

    /// A BDD100K split in a temporary directory: `images/`, `drivable/`, `lanes/` and
    /// `labels.json` holding `labels`.
    fn split_dir(labels: &str) -> (TempDir, Bdd100kOptions) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["images", "drivable", "lanes"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("labels.json"), labels).unwrap();
        let opts = Bdd100kOptions {
            images: dir.path().join("images"),
            labels: dir.path().join("labels.json"),
            drivable: Some(dir.path().join("drivable")),
            lanes: Some(dir.path().join("lanes")),
            split: Split::Train,
            lane_categories: default_lane_lines(),
        };
        (dir, opts)
    }

    fn write_jpeg(path: &Path, width: u32, height: u32) {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, 128])
        })
        .save(path)
        .unwrap();
    }

    fn write_grey(path: &Path, width: u32, height: u32, value: impl Fn(u32, u32) -> u8) {
        GrayImage::from_fn(width, height, |x, y| Luma([value(x, y)]))
            .save(path)
            .unwrap();
    }

    fn frames(source: &Bdd100kSource) -> Vec<FrameItem> {
        source.frames().unwrap().collect()
    }

    fn skipped(item: &FrameItem) -> &SkippedRecord {
        item.as_ref().expect_err("expected a skipped record")
    }

    const THREE_FRAMES: &str = r#"[
      {"name": "b1c66a42-6f7d68ca.jpg",
       "attributes": {"weather": "overcast", "scene": "city street", "timeofday": "daytime"},
       "timestamp": 10000,
       "labels": [
         {"id": "0", "category": "car",
          "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "NA"},
          "box2d": {"x1": 45.25, "y1": 20.5, "x2": 50.75, "y2": 30.0}},
         {"id": "1", "category": "person", "box2d": {"x1": 10, "y1": 11, "x2": 10, "y2": 11}},
         {"id": "2", "category": "area/drivable",
          "poly2d": [{"vertices": [[0, 0], [5, 5], [0, 5]], "types": "LLL", "closed": true}]}
       ],
       "extra": {"unknown": [1, 2, 3]}},
      {"name": "b2.jpg",
       "labels": [{"category": "motor", "box2d": {"x1": 1, "y1": 2, "x2": 3, "y2": 4},
                   "box3d": null}]},
      {"name": "b3.jpg", "attributes": {"weather": "rainy"}, "labels": null}
    ]"#;

    #[test]
    fn frames_follow_the_inclusive_box_convention_and_bdd_conditions() {
        let (dir, opts) = split_dir(THREE_FRAMES);
        let source = Bdd100kSource::new(opts).unwrap();
        assert_eq!(source.format(), "bdd100k");
        assert_eq!(
            source.tasks(),
            LabelledTasks {
                detection: true,
                drivable: true,
                lanes: true
            }
        );
        let root = dir.path();
        let expected = [
            Frame {
                id: "b1c66a42-6f7d68ca".to_string(),
                split: Split::Train,
                origin: "labels.json, frame 0 (b1c66a42-6f7d68ca.jpg)".to_string(),
                objects: vec![
                    Object::new("car", [45.25, 20.5, 51.75, 31.0]),
                    Object::new("person", [10.0, 11.0, 11.0, 12.0]),
                ],
                conditions: Conditions::new("overcast", "daytime", "city street"),
                image: root.join("images/b1c66a42-6f7d68ca.jpg"),
                drivable: Some(root.join("drivable/b1c66a42-6f7d68ca.png")),
                lanes: Some(root.join("lanes/b1c66a42-6f7d68ca.png")),
            },
            Frame {
                id: "b2".to_string(),
                split: Split::Train,
                origin: "labels.json, frame 1 (b2.jpg)".to_string(),
                objects: vec![Object::new("motor", [1.0, 2.0, 4.0, 5.0])],
                conditions: Conditions::new("undefined", "undefined", "undefined"),
                image: root.join("images/b2.jpg"),
                drivable: Some(root.join("drivable/b2.png")),
                lanes: Some(root.join("lanes/b2.png")),
            },
            Frame {
                id: "b3".to_string(),
                split: Split::Train,
                origin: "labels.json, frame 2 (b3.jpg)".to_string(),
                objects: vec![],
                conditions: Conditions::new("rainy", "undefined", "undefined"),
                image: root.join("images/b3.jpg"),
                drivable: Some(root.join("drivable/b3.png")),
                lanes: Some(root.join("lanes/b3.png")),
            },
        ];
        let frames: Vec<Frame> = frames(&source).into_iter().map(Result::unwrap).collect();
        assert_eq!(frames, expected);
        // The same order on every call: the pipeline relies on it to resume.
        let again: Vec<Frame> = self::frames(&source)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(again, expected);
    }

    #[test]
    fn without_mask_directories_the_mask_tasks_are_off() {
        let (_dir, mut opts) = split_dir(THREE_FRAMES);
        opts.drivable = None;
        opts.lanes = None;
        opts.split = Split::Val;
        let source = Bdd100kSource::new(opts).unwrap();
        assert_eq!(
            source.tasks(),
            LabelledTasks {
                detection: true,
                drivable: false,
                lanes: false
            }
        );
        let frame = frames(&source).remove(0).unwrap();
        assert_eq!(
            (frame.split, frame.drivable, frame.lanes),
            (Split::Val, None, None)
        );
    }

    /// Lane mask bytes, and whether each is a lane line with [`default_lane_lines`].
    const LANE_BYTES: [(u8, u8); 8] = [
        (0b0000_0110, 1), // single white, solid, parallel
        (0b0000_1110, 0), // the background bit set
        (0b0010_0100, 0), // road curb, vertical: not a lane line by default
        (0b0001_0010, 1), // double white, dashed
        (0b0011_0111, 1), // single yellow, dashed, vertical
        (0b0000_0000, 0), // crosswalk
        (0b0000_1000, 0), // background
        (0xff, 0),        // background (the background bit is set)
    ];

    #[test]
    fn load_converts_drivable_and_lane_masks() {
        let (dir, opts) = split_dir(THREE_FRAMES);
        let root = dir.path();
        write_jpeg(&root.join("images/b1c66a42-6f7d68ca.jpg"), W, H);
        // Drivable: 0 direct, 1 alternative, 2 background, by column.
        write_grey(
            &root.join("drivable/b1c66a42-6f7d68ca.png"),
            W,
            H,
            |x, _| (x % 3) as u8,
        );
        let lane_byte = |x: u32, y: u32| LANE_BYTES[((x + y) % 8) as usize];
        write_grey(&root.join("lanes/b1c66a42-6f7d68ca.png"), W, H, |x, y| {
            lane_byte(x, y).0
        });

        let source = Bdd100kSource::new(opts.clone()).unwrap();
        let frame = frames(&source).remove(0).unwrap();
        let pixels = source.load(&frame).unwrap();
        assert_eq!(pixels.image.dimensions(), (W, H));
        let jpeg = fs::read(&frame.image).unwrap();
        assert_eq!(pixels.jpeg, Some(jpeg), "an RGB JPEG is passed through");
        let drivable = GrayImage::from_fn(W, H, |x, _| Luma([u8::from(x % 3 != 2)]));
        assert_eq!(pixels.drivable, Some(drivable));
        let lanes = GrayImage::from_fn(W, H, |x, y| Luma([lane_byte(x, y).1]));
        assert_eq!(pixels.lanes, Some(lanes));

        // Another choice of categories: road curbs only.
        let curbs = Bdd100kSource::new(Bdd100kOptions {
            lane_categories: vec![LaneCategory::RoadCurb],
            ..opts
        })
        .unwrap();
        let lanes = curbs.load(&frame).unwrap().lanes.unwrap();
        let curb_byte = |x: u32, y: u32| lane_byte(x, y).0 == 0b0010_0100;
        assert_eq!(
            lanes,
            GrayImage::from_fn(W, H, |x, y| Luma([u8::from(curb_byte(x, y))]))
        );
    }

    #[test]
    fn load_reports_bad_masks_and_missing_files() {
        let (dir, mut opts) = split_dir(
            r#"[{"name": "a.jpg"}, {"name": "b.jpg"}, {"name": "c.jpg"}, {"name": "gone.jpg"},
                {"name": "d.jpg"}, {"name": "e.jpg"}]"#,
        );
        let root = dir.path();
        for name in ["a", "b", "c", "d", "e"] {
            write_jpeg(&root.join(format!("images/{name}.jpg")), W, H);
            write_grey(&root.join(format!("lanes/{name}.png")), W, H, |_, _| 0);
        }
        // a: a drivable value BDD100K does not write, at (5, 3).
        write_grey(&root.join("drivable/a.png"), W, H, |x, y| {
            if (x, y) == (5, 3) {
                7
            } else {
                2
            }
        });
        // b: a lane mask of the wrong size.
        write_grey(&root.join("drivable/b.png"), W, H, |_, _| 0);
        write_grey(&root.join("lanes/b.png"), W / 2, H, |_, _| 0);
        // c: no drivable mask. gone: no image.
        // d: a colour drivable mask (a colormap, not a mask).
        RgbImage::new(W, H)
            .save(root.join("drivable/d.png"))
            .unwrap();
        // e: only a 2018-release mask, whose values mean something else.
        write_grey(&root.join("drivable/e_drivable_id.png"), W, H, |_, _| 1);
        opts.lane_categories = LaneCategory::ALL.to_vec();
        let source = Bdd100kSource::new(opts).unwrap();
        let errors: Vec<SkippedRecord> = frames(&source)
            .into_iter()
            .map(|frame| source.load(&frame.unwrap()).unwrap_err())
            .collect();

        let files: Vec<(PathBuf, Option<String>)> = errors
            .iter()
            .map(|e| (e.file.clone(), e.record.clone()))
            .collect();
        let at = |file: &str, id: &str| (root.join(file), Some(id.to_string()));
        assert_eq!(
            files,
            [
                at("drivable/a.png", "a"),
                at("lanes/b.png", "b"),
                at("drivable/c.png", "c"),
                at("images/gone.jpg", "gone"),
                at("drivable/d.png", "d"),
                at("drivable/e.png", "e"),
            ]
        );
        assert_eq!(
            errors[0].reason,
            "pixel (5, 3) of the drivable mask is 7; BDD100K drivable masks hold 0 (direct), \
             1 (alternative) or 2 (background): is this a labels/drivable/masks file?"
        );
        assert_eq!(
            errors[1].reason,
            "the lane mask is 32x48 but its image is 64x48"
        );
        assert!(
            errors[2].reason.starts_with("cannot read the mask"),
            "{}",
            errors[2].reason
        );
        assert!(
            errors[3].reason.starts_with("cannot read the image"),
            "{}",
            errors[3].reason
        );
        assert!(errors[4].reason.contains("grey"), "{}", errors[4].reason);
        assert!(
            errors[5]
                .reason
                .contains("e_drivable_id.png exists: that is the 2018 drivable_maps encoding"),
            "{}",
            errors[5].reason
        );
    }

    #[test]
    fn malformed_frames_are_skipped_with_the_key_at_fault() {
        let (dir, opts) = split_dir(
            r#"[
              {"name": "ok.jpg", "labels": []},
              {"name": "flip.jpg", "labels": [
                {"category": "car", "box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}},
                {"category": "car", "box2d": {"x1": 20, "y1": 1, "x2": 10, "y2": 5}}]},
              {"name": "text.jpg",
               "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 1, "x2": "abc", "y2": 5}}]},
              {"labels": []},
              {"name": "nocat.jpg", "labels": [{"box2d": {"x1": 1, "y1": 1, "x2": 5, "y2": 5}}]},
              {"name": "notlist.jpg", "labels": {"a": 1}},
              {"name": "missing.jpg",
               "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 1, "y2": 5}}]},
              {"name": "huge.jpg",
               "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 1, "x2": 1e39, "y2": 5}}]},
              {"name": "ydown.jpg",
               "labels": [{"category": "car", "box2d": {"x1": 1, "y1": 9, "x2": 5, "y2": 5}}]},
              {"name": "../escape.jpg"},
              {"name": 7},
              {"name": "weather.jpg", "attributes": {"weather": 3}},
              "not a frame",
              {"name": "last.jpg"}
            ]"#,
        );
        let source = Bdd100kSource::new(opts).unwrap();
        let items = frames(&source);
        assert_eq!(items.len(), 14);
        assert_eq!(items[0].as_ref().unwrap().id, "ok");
        assert_eq!(items[13].as_ref().unwrap().id, "last");
        let labels = dir.path().join("labels.json");
        let expected = [
            (
                1,
                "frame 1 (flip.jpg)",
                "labels[1].box2d has x2 = 10 < x1 = 20; expected x1 <= x2",
            ),
            (
                2,
                "frame 2 (text.jpg)",
                "labels[0].box2d.x2 is \"abc\"; expected a finite number",
            ),
            (
                3,
                "frame 3",
                "name is missing; expected the image's file name",
            ),
            (
                4,
                "frame 4 (nocat.jpg)",
                "labels[0].category is missing; expected the object's category, such as \"car\"",
            ),
            (
                5,
                "frame 5 (notlist.jpg)",
                "labels is {\"a\":1}; expected a list of labels",
            ),
            (
                6,
                "frame 6 (missing.jpg)",
                "labels[0].box2d.x2 is missing; expected a number",
            ),
            (
                7,
                "frame 7 (huge.jpg)",
                "labels[0].box2d.x2 is 1e+39; expected a finite number",
            ),
            (
                8,
                "frame 8 (ydown.jpg)",
                "labels[0].box2d has y2 = 5 < y1 = 9; expected y1 <= y2",
            ),
            (
                9,
                "frame 9 (../escape.jpg)",
                "name \"../escape.jpg\" is not a plain file name; expected the image's file \
                 name, such as \"b1c66a42-6f7d68ca.jpg\"",
            ),
            (
                10,
                "frame 10",
                "name is 7; expected the image's file name, a string",
            ),
            (
                11,
                "frame 11 (weather.jpg)",
                "attributes.weather is 3; expected a string",
            ),
            (
                12,
                "frame 12",
                "the frame is \"not a frame\"; expected an object with \"name\" and \"labels\"",
            ),
        ];
        for (index, record, reason) in expected {
            assert_eq!(
                skipped(&items[index]),
                &SkippedRecord {
                    file: labels.clone(),
                    record: Some(record.to_string()),
                    reason: reason.to_string(),
                }
            );
        }
    }

    #[test]
    fn malformed_json_ends_the_stream_after_the_good_frames() {
        // Truncated in the middle of the third frame.
        let (dir, opts) = split_dir(
            "[{\"name\": \"a.jpg\"},\n {\"name\": \"b.jpg\"},\n \
             {\"name\": \"c.jpg\", \"labels\": [{\"ca",
        );
        let source = Bdd100kSource::new(opts).unwrap();
        let items = frames(&source);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().id, "a");
        assert_eq!(items[1].as_ref().unwrap().id, "b");
        let end = skipped(&items[2]);
        assert_eq!(end.file, dir.path().join("labels.json"));
        assert_eq!(end.record, None);
        assert!(
            end.reason
                .starts_with("malformed JSON after the first 2 frames: EOF while parsing")
                && end.reason.contains("line 3 column")
                && end.reason.ends_with("the rest of the file was not read"),
            "{}",
            end.reason
        );

        // A syntax error in the middle: nothing after it is read.
        let (_dir, opts) = split_dir(r#"[{"name": "a.jpg"}, {"name": b.jpg"}, {"name": "c.jpg"}]"#);
        let items = frames(&Bdd100kSource::new(opts).unwrap());
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().id, "a");
        let end = skipped(&items[1]);
        assert!(
            end.reason.starts_with(
                "malformed JSON after the first 1 frame: expected value at line 1 column 30"
            ),
            "{}",
            end.reason
        );

        // Data after the list.
        let (_dir, opts) = split_dir(r#"[{"name": "a.jpg"}] [{"name": "b.jpg"}]"#);
        let items = frames(&Bdd100kSource::new(opts).unwrap());
        assert_eq!(items.len(), 2);
        assert!(skipped(&items[1]).reason.contains("trailing characters"));
    }

    #[test]
    fn a_label_file_that_is_not_a_list_is_refused_up_front() {
        for (labels, words) in [
            (r#"  {"frames": []}"#, "the file holds a JSON object"),
            ("", "the file is empty"),
            ("\"frames\"", "does not start with '['"),
        ] {
            let (_dir, opts) = split_dir(labels);
            let source = Bdd100kSource::new(opts).unwrap();
            let Err(e) = source.frames() else {
                panic!("{labels:?} was accepted");
            };
            assert!(e.starts_with("--labels ") && e.contains(words), "{e}");
        }
        // An empty list is no frames, not an error.
        let (_dir, opts) = split_dir(" \n[ ]\n");
        assert!(frames(&Bdd100kSource::new(opts).unwrap()).is_empty());
    }

    #[test]
    fn the_label_file_is_streamed_in_order_and_the_reader_stops_when_dropped() {
        const COUNT: usize = 3000;
        let labels: Vec<String> = (0..COUNT)
            .map(|i| {
                format!(
                    r#"{{"name": "f{i:05}.jpg", "labels": [{{"category": "car",
                       "box2d": {{"x1": {i}, "y1": 0, "x2": {}, "y2": 1}}}}]}}"#,
                    i + 1
                )
            })
            .collect();
        let (_dir, opts) = split_dir(&format!("[{}]", labels.join(",\n")));
        let source = Bdd100kSource::new(opts.clone()).unwrap();
        for (i, item) in source.frames().unwrap().enumerate() {
            let frame = item.unwrap();
            assert_eq!(frame.id, format!("f{i:05}"));
            let x1 = i as f32;
            assert_eq!(
                frame.objects,
                [Object::new("car", [x1, 0.0, x1 + 2.0, 2.0])]
            );
        }
        assert_eq!(source.frames().unwrap().count(), COUNT);

        // Dropping the iterator early joins the reader, which must not wait for the rest.
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let source = Bdd100kSource::new(opts).unwrap();
            let mut frames = source.frames().unwrap();
            let first: Vec<String> = frames.by_ref().take(5).map(|f| f.unwrap().id).collect();
            drop(frames);
            done_tx.send(first).unwrap();
        });
        let first = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("dropping the frame iterator did not return");
        assert_eq!(first, ["f00000", "f00001", "f00002", "f00003", "f00004"]);
    }

    #[test]
    fn new_checks_the_paths_and_names_the_flag() {
        let (dir, opts) = split_dir("[]");
        let missing = dir.path().join("missing");
        let cases = [
            (
                Bdd100kOptions {
                    images: missing.clone(),
                    ..opts.clone()
                },
                "--images",
            ),
            (
                Bdd100kOptions {
                    labels: missing.clone(),
                    ..opts.clone()
                },
                "--labels",
            ),
            (
                Bdd100kOptions {
                    drivable: Some(missing.clone()),
                    ..opts.clone()
                },
                "--drivable",
            ),
            (
                Bdd100kOptions {
                    lanes: Some(missing.clone()),
                    ..opts.clone()
                },
                "--lanes",
            ),
        ];
        for (opts, flag) in cases {
            let e = Bdd100kSource::new(opts).unwrap_err();
            assert!(
                e.starts_with(&format!("{flag} {}: no such", missing.display())),
                "{e}"
            );
        }
        let e = Bdd100kSource::new(Bdd100kOptions {
            lane_categories: vec![],
            ..opts
        })
        .unwrap_err();
        assert!(e.contains("no lane categories"), "{e}");
    }

    #[test]
    fn lane_categories_use_bdd_names_and_bits() {
        for (i, category) in LaneCategory::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(category.bits()), i);
            assert_eq!(category.name().parse::<LaneCategory>(), Ok(category));
            assert_eq!(category.to_string(), category.name());
        }
        assert_eq!("single white".parse(), Ok(LaneCategory::SingleWhite));
        assert_eq!("road curb".parse(), Ok(LaneCategory::RoadCurb));
        let e = "single_white".parse::<LaneCategory>().unwrap_err();
        assert!(
            e.contains("\"single_white\"") && e.contains("\"single white\""),
            "{e}"
        );
        let defaults = default_lane_lines();
        assert_eq!(defaults.len(), 6);
        assert!(!defaults.contains(&LaneCategory::Crosswalk));
        assert!(!defaults.contains(&LaneCategory::RoadCurb));
    }
}
