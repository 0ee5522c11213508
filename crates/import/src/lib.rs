//! percept-import: public driving datasets on disk to region-tagged percept shards.
//!
//! - [`source`]: what a format implements ([`Source`], [`Frame`], [`Pixels`]).
//! - [`bdd100k`], [`yolop`], [`kitti`]: the formats.
//! - [`class_map`]: source categories to percept classes, as TOML data ([`ClassMap`]).
//! - [`pipeline`]: streaming, parallel, resumable import into shards ([`import`]).

pub mod bdd100k;
pub mod class_map;
pub mod kitti;
pub mod pipeline;
pub mod pixels;
pub mod source;
pub mod yolop;

pub use class_map::{ClassMap, Target, UnmappedPolicy};
pub use pipeline::{
    import, ImportError, ImportOptions, ImportProgress, ImportReport, ImportSummary,
};
pub use source::{Frame, FrameItem, LabelledTasks, Object, Pixels, SkippedRecord, Source};
