//! percept-import: public driving datasets on disk to region-tagged percept shards.
//!
//! - [`source`]: what a format implements ([`Source`], [`Frame`], [`Pixels`]).
//! - [`bdd100k`], [`yolop`], [`kitti`]: the formats; each module documents its layout and
//!   mapping in full.
//! - [`class_map`]: source categories to percept classes, as TOML data ([`ClassMap`]).
//! - [`pipeline`]: streaming, parallel, resumable import into shards ([`import`]).
//!
//! # Mappings at a glance
//!
//! | | BDD100K (`bdd100k`) | YOLOP layout (`yolop`) | KITTI (`kitti`) |
//! |---|---|---|---|
//! | labels | one Scalabel JSON list per split, streamed | one BDD100K 2018 JSON per image | one text file per image, 15 fields per object |
//! | box | `box2d` corners inclusive: `[x1, y1, x2 + 1, y2 + 1]` | as BDD100K | `left top right bottom` as given |
//! | classes | `configs/classmaps/bdd100k.toml`: the 10 categories, legacy `person`/`bike`/`motor`/`van`/`caravan`; `other person`/`other vehicle`/`trailer` as ignore regions | as BDD100K | `configs/classmaps/kitti.toml` onto the same 10 classes; `DontCare` and `Misc` as ignore regions |
//! | drivable | `--drivable` PNG: 0 direct, 1 alternative -> 1; 2 background -> 0 | `da_seg_annotations`: grey > 1 -> 1 | not labelled |
//! | lanes | `--lanes` PNG, bits 0-2 category, bit 3 background: lane line where background is 0 and the category is a `--lane-categories` one | `ll_seg_annotations`: grey > 1 -> 1 | not labelled |
//! | conditions | `attributes` weather / timeofday / scene, `undefined` when missing | as BDD100K | `unknown` |
//! | split | `--split` or `--val-fraction` | the `train`/`val` directories (or `--val-fraction`) | `--split` or `--val-fraction` |
//!
//! Every format: boxes are clipped to their image (a box with nothing left is dropped and
//! counted); a task the source does not label is recorded in the manifest's `tasks` and is
//! then neither trained nor evaluated on the dataset (its masks are stored empty); the traffic
//! side is the region's ([`percept_data::TrafficSide::of_region`]); RGB JPEG images are stored
//! byte for byte, others (PNG, grey JPEG) re-encoded as JPEG quality 90.

pub mod bdd100k;
pub mod bench;
pub mod class_map;
pub mod kitti;
pub mod pipeline;
pub mod pixels;
pub mod source;
pub mod synthetic;
pub mod yolop;

pub use class_map::{ClassMap, Target, UnmappedPolicy};
pub use pipeline::{
    import, ImportError, ImportOptions, ImportProgress, ImportReport, ImportSummary,
};
pub use source::{Frame, FrameItem, LabelledTasks, Object, Pixels, SkippedRecord, Source};
