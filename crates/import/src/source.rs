//! What an importer implements: a [`Source`] streams [`Frame`]s (names and labels, cheap) and
//! loads each frame's pixels ([`Pixels`], expensive, on many threads). The
//! [pipeline](crate::pipeline) does everything else: class mapping, clipping, parallelism,
//! shards, resume and the report.

use std::path::PathBuf;

use image::{GrayImage, RgbImage};
pub use percept_data::LabelledTasks;
use percept_data::{Conditions, Split};
use serde::{Deserialize, Serialize};

/// One object as the source labels it, before class mapping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    /// The source's category name, exactly as in the label file (e.g. `car`, `Van`,
    /// `DontCare`); the class map decides what it becomes.
    pub category: String,
    /// `[x1, y1, x2, y2]` in continuous pixel coordinates of the source image (a box covering
    /// pixel columns 10..=19 has `x1 = 10, x2 = 20`): each source converts its own convention
    /// to this one. Not yet clipped to the image; the pipeline clips.
    pub bbox: [f32; 4],
}

impl Object {
    pub fn new(category: &str, bbox: [f32; 4]) -> Self {
        Object {
            category: category.to_string(),
            bbox,
        }
    }
}

/// One frame of a source: its labels and where its pixels are, without the pixels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    /// Sample id, unique within the import (e.g. the image file name without extension).
    pub id: String,
    pub split: Split,
    /// Where the labels came from, for reports: a file, or a file and a record
    /// (`det_train.json, frame 17`).
    pub origin: String,
    pub objects: Vec<Object>,
    pub conditions: Conditions,
    /// The image file.
    pub image: PathBuf,
    /// The drivable-area label file, when the source labels drivable area.
    pub drivable: Option<PathBuf>,
    /// The lane label file, when the source labels lanes.
    pub lanes: Option<PathBuf>,
}

/// A record the source could not turn into a [`Frame`], or a frame that failed to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecord {
    /// The file at fault (label file, image or mask).
    pub file: PathBuf,
    /// The record within the file, when the file holds many (`frame 17`, `line 3`), or the
    /// frame's id.
    pub record: Option<String>,
    /// Why it was skipped, in words.
    pub reason: String,
}

/// A frame's decoded pixels.
#[derive(Debug, Clone)]
pub struct Pixels {
    pub image: RgbImage,
    /// The source's JPEG bytes when the image was a colour JPEG: stored as they are instead of
    /// re-encoding (no second generation of compression loss, and faster).
    pub jpeg: Option<Vec<u8>>,
    /// 1 drivable, 0 not; `None` when the source does not label drivable area.
    pub drivable: Option<GrayImage>,
    /// 1 lane line, 0 not; `None` when the source does not label lanes.
    pub lanes: Option<GrayImage>,
}

/// An item of [`Source::frames`]: a frame, or a record skipped with its reason.
pub type FrameItem = Result<Frame, SkippedRecord>;

/// A dataset on disk in some format.
pub trait Source: Sync {
    /// The format's name, as in `percept import <format>` (`bdd100k`, `yolop`, `kitti`).
    fn format(&self) -> &'static str;

    /// Which tasks the frames are labelled for (with the options given).
    fn tasks(&self) -> LabelledTasks;

    /// Options that change what [`load`](Self::load) makes of a frame, as `(name, value)`
    /// pairs: an interrupted import resumes only with the same ones. (Everything in the
    /// frames themselves is covered by the scan's fingerprint.)
    fn settings(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Streams every frame, in an order that is the same on every call (the pipeline calls
    /// it twice: once to check classes, once to import; resume relies on the order).
    ///
    /// Memory must not grow with the dataset: stream from the label file(s). A malformed record
    /// is yielded as `Err(SkippedRecord)` and the stream goes on; an error that stops the
    /// stream (a label file that cannot be opened, JSON that is not a list) is the outer `Err`,
    /// or a final `Err(SkippedRecord)` whose reason says the rest of the file was not read.
    fn frames(&self) -> Result<Box<dyn Iterator<Item = FrameItem> + Send + '_>, String>;

    /// Decodes one frame's image and label masks. Masks are converted to percept's 0/1 masks
    /// here, by the format's rules. The error is the reason the frame is skipped; the pipeline
    /// reports it with the frame's files.
    fn load(&self, frame: &Frame) -> Result<Pixels, SkippedRecord>;
}
