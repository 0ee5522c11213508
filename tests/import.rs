//! Integration tests of `percept import`.
//!
//! Each test writes real source datasets into a temporary directory — BDD100K (JPEG images,
//! a Scalabel JSON label list, drivable-area PNGs holding 0/1/2 and lane PNGs in BDD100K's
//! bit-packed layout) or KITTI (PNG images and 15-field `label_2` text files) — imports them
//! through the `percept` binary or the library's pipeline, and reads the shards, the manifest
//! and the import report back, asserting exact values: class ids in class-map order, boxes
//! with BDD100K's inclusive corners (`x2 + 1`) and clipped to the image, ignore regions,
//! masks, conditions, refusals, skipped records and exact resume after an interruption.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{GrayImage, Luma, Rgb, RgbImage};
use percept::data::{
    BoxLabel, Conditions, IgnoreRegion, LabelledTasks, Manifest, Sample, ShardReader, Split,
    TrafficSide, MANIFEST_FILE,
};
use percept::import::bdd100k::{default_lane_lines, Bdd100kOptions, Bdd100kSource, LaneCategory};
use percept::import::pipeline::{import, ImportOptions, ImportProgress, Quiet, STATE_FILE};
use percept::import::{ClassMap, ImportError, ImportReport, UnmappedPolicy};
use percept::synth::{SceneGenerator, SYNTH_CLASSES};
use serde_json::{json, Value};

use common::{percept, Output};

/// Size of the hand-written test frames.
const W: u32 = 64;
const H: u32 = 48;

/// percept's classes in the built-in BDD100K and KITTI class maps, in class-id order.
const BDD_CLASSES: [&str; 10] = [
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
    "traffic light",
    "traffic sign",
];

/// Lane-mask bytes in BDD100K's layout (bits 0-2 category, bit 3 background, bit 4 style,
/// bit 5 direction) and percept's lane value for them under the default lane categories.
const LANE_BYTES: [(u8, u8); 12] = [
    (6, 1),      // single white, solid, parallel
    (6 | 16, 1), // single white, dashed
    (6 | 32, 1), // single white, vertical
    (7, 1),      // single yellow
    (2 | 16, 1), // double white, dashed
    (5, 1),      // single other
    (0, 0),      // crosswalk: not a lane line by default
    (32, 0),     // crosswalk, vertical
    (4, 0),      // road curb: not a lane line by default
    (8, 0),      // background
    (8 | 6, 0),  // the background bit wins over the category bits
    (255, 0),    // background, every bit set
];

// ---------------------------------------------------------------------------------------------
// Small helpers.

fn s(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs the binary and asserts that it succeeded.
fn percept_ok(args: &[&str]) -> Output {
    let out = percept(args);
    assert!(
        out.ok,
        "percept {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

/// Asserts that `text` contains every one of `needles`.
fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// Asserts that a refused command explained itself without panicking.
fn assert_no_panic(out: &Output) {
    for word in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(!out.stderr.contains(word), "{}", out.stderr);
    }
}

fn class_id(name: &str) -> u16 {
    BDD_CLASSES.iter().position(|c| *c == name).unwrap() as u16
}

fn ignored([x1, y1, x2, y2]: [f32; 4]) -> IgnoreRegion {
    IgnoreRegion { x1, y1, x2, y2 }
}

/// A map of counts, as the report holds them.
fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

fn grey(width: u32, height: u32, value: impl Fn(u32, u32) -> u8) -> GrayImage {
    GrayImage::from_fn(width, height, |x, y| Luma([value(x, y)]))
}

/// A `width` x `height` picture, different for every `seed`.
fn picture(width: u32, height: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            (x * 4 + seed * 30) as u8,
            (y * 5 + seed * 7) as u8,
            (x + y + seed * 50) as u8,
        ])
    })
}

/// BDD100K's drivable value of pattern frame `k` at `(x, y)`: 0 direct, 1 alternative,
/// 2 background, in diagonal bands.
fn bdd_drivable(k: u32, x: u32, y: u32) -> u8 {
    ((x / 3 + y / 5 + k) % 3) as u8
}

/// The lane byte of pattern frame `k` at `(x, y)` and percept's value for it.
fn bdd_lane(k: u32, x: u32, y: u32) -> (u8, u8) {
    LANE_BYTES[((x + 2 * y + k) as usize) % LANE_BYTES.len()]
}

/// Pattern frame `k` in BDD100K's files: image, drivable mask and lane mask.
fn pattern_frame(k: u32) -> (RgbImage, GrayImage, GrayImage) {
    (
        picture(W, H, k),
        grey(W, H, |x, y| bdd_drivable(k, x, y)),
        grey(W, H, |x, y| bdd_lane(k, x, y).0),
    )
}

/// percept's masks of pattern frame `k`: drivable where BDD100K says direct or alternative,
/// lanes where the byte is a default lane line.
fn pattern_masks(k: u32) -> (GrayImage, GrayImage) {
    (
        grey(W, H, |x, y| u8::from(bdd_drivable(k, x, y) != 2)),
        grey(W, H, |x, y| bdd_lane(k, x, y).1),
    )
}

// ---------------------------------------------------------------------------------------------
// BDD100K on disk.

/// One BDD100K split on disk: `images/`, `drivable/`, `lanes/` and `labels.json`.
struct BddSplit {
    images: PathBuf,
    drivable: PathBuf,
    lanes: PathBuf,
    labels: PathBuf,
}

impl BddSplit {
    fn new(root: &Path) -> Self {
        let split = BddSplit {
            images: root.join("images"),
            drivable: root.join("drivable"),
            lanes: root.join("lanes"),
            labels: root.join("labels.json"),
        };
        for dir in [&split.images, &split.drivable, &split.lanes] {
            fs::create_dir_all(dir).unwrap();
        }
        split
    }

    fn image_path(&self, id: &str) -> PathBuf {
        self.images.join(format!("{id}.jpg"))
    }

    /// Writes frame `id`: its image as JPEG and its masks (BDD100K values) as grey PNGs.
    fn write_frame(&self, id: &str, image: &RgbImage, drivable: &GrayImage, lanes: &GrayImage) {
        image.save(self.image_path(id)).unwrap();
        drivable
            .save(self.drivable.join(format!("{id}.png")))
            .unwrap();
        lanes.save(self.lanes.join(format!("{id}.png"))).unwrap();
    }

    /// Writes pattern frame `k` as `id`.
    fn write_pattern_frame(&self, id: &str, k: u32) {
        let (image, drivable, lanes) = pattern_frame(k);
        self.write_frame(id, &image, &drivable, &lanes);
    }

    fn write_labels(&self, frames: &[Value]) {
        fs::write(&self.labels, serde_json::to_vec_pretty(frames).unwrap()).unwrap();
    }

    /// `percept import bdd100k` with every path of this split, into `out`.
    fn args<'a>(&'a self, out: &'a Path) -> Vec<&'a str> {
        vec![
            "import",
            "bdd100k",
            "--images",
            s(&self.images),
            "--labels",
            s(&self.labels),
            "--drivable",
            s(&self.drivable),
            "--lanes",
            s(&self.lanes),
            "--out",
            s(out),
        ]
    }

    fn source(&self, split: Split) -> Bdd100kSource {
        self.source_with_lanes(split, default_lane_lines())
    }

    fn source_with_lanes(&self, split: Split, lane_categories: Vec<LaneCategory>) -> Bdd100kSource {
        Bdd100kSource::new(Bdd100kOptions {
            images: self.images.clone(),
            labels: self.labels.clone(),
            drivable: Some(self.drivable.clone()),
            lanes: Some(self.lanes.clone()),
            split,
            lane_categories,
        })
        .unwrap()
    }
}

/// A frame of a Scalabel label list.
fn bdd_frame(name: &str, attributes: Value, labels: Vec<Value>) -> Value {
    json!({"name": name, "attributes": attributes, "timestamp": 10000, "labels": labels})
}

fn bdd_attributes(weather: &str, scene: &str, timeofday: &str) -> Value {
    json!({"weather": weather, "scene": scene, "timeofday": timeofday})
}

/// A boxed label; `box2d` corners are inclusive pixel coordinates.
fn bdd_box(category: &str, [x1, y1, x2, y2]: [f64; 4]) -> Value {
    json!({
        "category": category,
        "attributes": {"occluded": false, "truncated": false, "trafficLightColor": "none"},
        "manualShape": true,
        "box2d": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
    })
}

// ---------------------------------------------------------------------------------------------
// KITTI on disk.

/// A KITTI object set on disk: `image_2/` and `label_2/`.
struct KittiSet {
    images: PathBuf,
    labels: PathBuf,
}

impl KittiSet {
    fn new(root: &Path) -> Self {
        let set = KittiSet {
            images: root.join("image_2"),
            labels: root.join("label_2"),
        };
        fs::create_dir_all(&set.images).unwrap();
        fs::create_dir_all(&set.labels).unwrap();
        set
    }

    /// Writes frame `id`: a PNG image and its label file with `lines`.
    fn write_frame(&self, id: &str, seed: u32, lines: &[String]) {
        picture(W, H, seed)
            .save(self.images.join(format!("{id}.png")))
            .unwrap();
        fs::write(
            self.labels.join(format!("{id}.txt")),
            lines.join("\n") + "\n",
        )
        .unwrap();
    }

    /// `percept import kitti` with this set's paths, into `out`.
    fn args<'a>(&'a self, out: &'a Path) -> Vec<&'a str> {
        vec![
            "import",
            "kitti",
            "--images",
            s(&self.images),
            "--labels",
            s(&self.labels),
            "--out",
            s(out),
        ]
    }
}

/// A ground-truth line of a KITTI label file (15 fields); `DontCare` lines carry the devkit's
/// -1/-10/-1000 placeholders.
fn kitti_line(kind: &str, [left, top, right, bottom]: [f32; 4]) -> String {
    let bbox = format!("{left} {top} {right} {bottom}");
    if kind == "DontCare" {
        format!("DontCare -1 -1 -10 {bbox} -1 -1 -1 -1000 -1000 -1000 -10")
    } else {
        format!("{kind} 0.00 1 -1.58 {bbox} 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59")
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a dataset back.

/// A sample read back from a shard, with its shard's split and the JPEG bytes it stores.
struct Stored {
    split: Split,
    sample: Sample,
    jpeg: Vec<u8>,
}

/// The manifest of the dataset in `dir` and every sample, shard by shard in manifest order.
fn read_back(dir: &Path) -> (Manifest, Vec<Stored>) {
    let manifest = Manifest::load_dir(dir).unwrap();
    let mut stored = Vec::new();
    for entry in &manifest.shards {
        let reader = ShardReader::open(dir.join(&entry.file)).unwrap();
        assert_eq!(reader.len(), entry.samples, "{}", entry.file);
        assert_eq!(reader.sample_checksums(), entry.sample_checksums);
        for i in 0..reader.len() {
            stored.push(Stored {
                split: entry.split,
                sample: reader.read(i).unwrap(),
                jpeg: reader.jpeg_bytes(i).unwrap().to_vec(),
            });
        }
    }
    (manifest, stored)
}

/// Asserts that two images are equal, naming the first pixel that differs (instead of
/// printing every pixel of both).
fn assert_same_pixels<P>(
    got: &image::ImageBuffer<P, Vec<u8>>,
    want: &image::ImageBuffer<P, Vec<u8>>,
    what: &str,
) where
    P: image::Pixel<Subpixel = u8> + std::fmt::Debug + PartialEq,
{
    assert_eq!(got.dimensions(), want.dimensions(), "{what}: size");
    let first = got
        .enumerate_pixels()
        .zip(want.pixels())
        .find(|((_, _, g), w)| g != w);
    if let Some(((x, y, g), w)) = first {
        panic!("{what}: pixel ({x}, {y}) is {g:?}, expected {w:?}");
    }
}

/// Asserts that `got` is `want`, field by field.
fn assert_same_sample(got: &Sample, want: &Sample) {
    let id = &want.id;
    assert_eq!(got.id, want.id);
    assert_eq!(got.boxes, want.boxes, "{id}: boxes");
    assert_eq!(got.ignore, want.ignore, "{id}: ignore regions");
    assert_eq!(got.conditions, want.conditions, "{id}: conditions");
    assert_eq!(got.traffic_side, want.traffic_side, "{id}: traffic side");
    assert_same_pixels(&got.image, &want.image, &format!("{id}: image"));
    assert_same_pixels(
        &got.drivable,
        &want.drivable,
        &format!("{id}: drivable mask"),
    );
    assert_same_pixels(&got.lanes, &want.lanes, &format!("{id}: lane mask"));
}

fn read_report(dir: &Path, splits: &str) -> ImportReport {
    let path = dir.join(format!("import-report-{splits}.json"));
    serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
}

fn shard_files(manifest: &Manifest) -> Vec<&str> {
    manifest.shards.iter().map(|s| s.file.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn bdd100k_import_keeps_boxes_masks_and_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let bdd = BddSplit::new(&dir.path().join("bdd100k"));
    let ids = [
        "b1c66a42-6f7d68ca",
        "b1c81faa-3df17267",
        "b1d0091f-75824d0d",
    ];
    for (k, id) in ids.iter().enumerate() {
        bdd.write_pattern_frame(id, k as u32);
    }
    bdd.write_labels(&[
        bdd_frame(
            "b1c66a42-6f7d68ca.jpg",
            bdd_attributes("clear", "city street", "daytime"),
            vec![
                bdd_box("car", [10.0, 12.0, 29.0, 31.0]),
                // The 2018 name of `pedestrian`.
                bdd_box("person", [40.5, 5.0, 49.5, 30.0]),
                // A polygon label (older files): not an object.
                json!({"category": "area/drivable",
                       "poly2d": [{"vertices": [[0, 40], [63, 40], [63, 47]],
                                   "types": "LLL", "closed": true}]}),
            ],
        ),
        bdd_frame(
            "b1c81faa-3df17267.jpg",
            bdd_attributes("rainy", "highway", "night"),
            vec![
                // The 2018 name of `bicycle`, partly left of the image.
                bdd_box("bike", [-3.5, 20.0, 15.0, 40.0]),
                bdd_box("other vehicle", [30.0, 10.0, 45.0, 25.0]),
                // Partly right of and below the image: x2 + 1 = 71 -> 64, y2 + 1 = 51 -> 48.
                bdd_box("truck", [50.0, 30.0, 70.0, 50.0]),
            ],
        ),
        bdd_frame(
            "b1d0091f-75824d0d.jpg",
            // No time of day: `undefined`.
            json!({"weather": "overcast", "scene": "residential"}),
            vec![
                bdd_box("traffic light", [5.0, 2.0, 8.0, 9.0]),
                bdd_box("traffic sign", [20.25, 3.0, 27.75, 8.0]),
                // Wholly right of the image: dropped with a count.
                bdd_box("car", [66.0, 0.0, 80.0, 10.0]),
            ],
        ),
    ]);

    let out = dir.path().join("dataset");
    let run = percept_ok(&[bdd.args(&out), vec!["--region", "US"]].concat());
    assert_contains(
        &run.stdout,
        &[
            "imported 3 train frames into",
            "(dataset `bdd100k-us`, region US, 1 shard, tasks: detection, drivable, lanes)",
            "boxes: bicycle 1, car 1, pedestrian 1, traffic light 1, traffic sign 1, truck 1",
            "ignore regions: 1",
            "dropped objects: 1 x box outside the image",
            "import-report-train.json",
        ],
    );
    assert!(!run.stdout.contains("skipped"), "{}", run.stdout);

    let (manifest, stored) = read_back(&out);
    assert_eq!(manifest.name, "bdd100k-us");
    assert_eq!(manifest.region, "US");
    assert_eq!(manifest.policy.processing_regions, ["US"]);
    assert_eq!(manifest.classes, BDD_CLASSES);
    assert_eq!(manifest.tasks, LabelledTasks::ALL);
    assert_eq!(shard_files(&manifest), ["train-00000.shard"]);

    let labels: [(Vec<BoxLabel>, Vec<IgnoreRegion>, Conditions); 3] = [
        (
            vec![
                BoxLabel::new(class_id("car"), [10.0, 12.0, 30.0, 32.0]),
                BoxLabel::new(class_id("pedestrian"), [40.5, 5.0, 50.5, 31.0]),
            ],
            vec![],
            Conditions::new("clear", "daytime", "city street"),
        ),
        (
            vec![
                BoxLabel::new(class_id("bicycle"), [0.0, 20.0, 16.0, 41.0]),
                BoxLabel::new(class_id("truck"), [50.0, 30.0, 64.0, 48.0]),
            ],
            vec![ignored([30.0, 10.0, 46.0, 26.0])],
            Conditions::new("rainy", "night", "highway"),
        ),
        (
            vec![
                BoxLabel::new(class_id("traffic light"), [5.0, 2.0, 9.0, 10.0]),
                BoxLabel::new(class_id("traffic sign"), [20.25, 3.0, 28.75, 9.0]),
            ],
            vec![],
            Conditions::new("overcast", "undefined", "residential"),
        ),
    ];
    assert_eq!(stored.len(), 3);
    for (k, ((id, got), (boxes, ignore, conditions))) in
        ids.iter().zip(&stored).zip(labels).enumerate()
    {
        let source_jpeg = fs::read(bdd.image_path(id)).unwrap();
        assert_eq!(got.jpeg, source_jpeg, "{id}: the JPEG is stored as it is");
        let (drivable, lanes) = pattern_masks(k as u32);
        let expected = Sample {
            id: id.to_string(),
            image: image::load_from_memory(&source_jpeg).unwrap().to_rgb8(),
            boxes,
            ignore,
            drivable,
            lanes,
            conditions,
            traffic_side: TrafficSide::Right,
        };
        assert_eq!(got.split, Split::Train);
        assert_eq!(got.sample.image.dimensions(), (W, H));
        assert_same_sample(&got.sample, &expected);
    }
    assert_eq!(TrafficSide::of_region("US"), TrafficSide::Right);

    let report = read_report(&out, "train");
    assert_eq!(report.format, "bdd100k");
    assert_eq!(report.dataset, "bdd100k-us");
    assert_eq!(report.records, 3);
    assert_eq!(report.imported, BTreeMap::from([(Split::Train, 3)]));
    assert_eq!(
        report.objects,
        counts(&[
            ("bicycle", 1),
            ("car", 1),
            ("pedestrian", 1),
            ("traffic light", 1),
            ("traffic sign", 1),
            ("truck", 1),
        ])
    );
    assert_eq!(report.ignore_regions, 1);
    assert_eq!(
        report.dropped_objects,
        counts(&[("box outside the image", 1)])
    );
    let three = |a, b, c| counts(&[(a, 1), (b, 1), (c, 1)]);
    assert_eq!(
        report.conditions,
        BTreeMap::from([
            ("weather".into(), three("clear", "overcast", "rainy")),
            ("time_of_day".into(), three("daytime", "night", "undefined")),
            (
                "scene".into(),
                three("city street", "highway", "residential")
            ),
        ])
    );
    assert!(report.skipped.is_empty());
    assert_eq!(report.shards, ["train-00000.shard"]);
    assert_eq!(report.resumed_blocks, 0);
    assert!(!out.join(STATE_FILE).exists());
}

#[test]
fn kitti_dontcare_becomes_ignore_regions_and_tasks_are_detection_only() {
    let dir = tempfile::tempdir().unwrap();
    let kitti = KittiSet::new(dir.path());
    kitti.write_frame(
        "000000",
        0,
        &[
            kitti_line("Car", [12.5, 10.25, 30.75, 28.0]),
            kitti_line("DontCare", [40.0, 30.0, 70.0, 47.5]),
            kitti_line("Van", [1.0, 2.0, 11.0, 12.0]),
        ],
    );
    kitti.write_frame(
        "000001",
        1,
        &[
            kitti_line("Cyclist", [20.0, 15.5, 26.0, 40.0]),
            kitti_line("Misc", [50.0, 20.0, 60.0, 30.0]),
            String::new(),
            kitti_line("DontCare", [0.0, 0.0, 8.0, 6.0]),
        ],
    );

    let out = dir.path().join("dataset");
    let run = percept_ok(&[kitti.args(&out), vec!["--split", "val", "--region", "DE"]].concat());
    assert_contains(
        &run.stdout,
        &[
            "imported 2 val frames",
            "tasks: detection)",
            "boxes: car 2, rider 1",
            "ignore regions: 3",
        ],
    );

    let (manifest, stored) = read_back(&out);
    assert_eq!(manifest.name, "kitti-de");
    assert_eq!(manifest.region, "DE");
    assert_eq!(manifest.classes, BDD_CLASSES);
    assert_eq!(manifest.tasks, LabelledTasks::DETECTION_ONLY);
    assert_eq!(shard_files(&manifest), ["val-00000.shard"]);
    assert_eq!(manifest.samples_of(Split::Val), 2);
    assert_eq!(manifest.samples_of(Split::Train), 0);

    let expected = [
        (
            "000000",
            vec![
                BoxLabel::new(class_id("car"), [12.5, 10.25, 30.75, 28.0]),
                BoxLabel::new(class_id("car"), [1.0, 2.0, 11.0, 12.0]),
            ],
            // Clipped to the image like boxes.
            vec![ignored([40.0, 30.0, 64.0, 47.5])],
        ),
        (
            "000001",
            vec![BoxLabel::new(class_id("rider"), [20.0, 15.5, 26.0, 40.0])],
            vec![
                ignored([50.0, 20.0, 60.0, 30.0]),
                ignored([0.0, 0.0, 8.0, 6.0]),
            ],
        ),
    ];
    assert_eq!(stored.len(), 2);
    for (got, (id, boxes, ignore)) in stored.iter().zip(expected) {
        let sample = &got.sample;
        assert_eq!(got.split, Split::Val);
        assert_eq!(sample.id, id);
        assert_eq!(sample.boxes, boxes, "{id}");
        assert_eq!(sample.ignore, ignore, "{id}");
        assert_eq!(sample.image.dimensions(), (W, H));
        let nothing = GrayImage::new(W, H);
        assert_same_pixels(
            &sample.drivable,
            &nothing,
            &format!("{id}: unlabelled drivable"),
        );
        assert_same_pixels(&sample.lanes, &nothing, &format!("{id}: unlabelled lanes"));
        assert_eq!(
            sample.conditions,
            Conditions::new("unknown", "unknown", "unknown")
        );
        assert_eq!(sample.traffic_side, TrafficSide::Right);
    }

    let report = read_report(&out, "val");
    assert_eq!(report.imported, BTreeMap::from([(Split::Val, 2)]));
    assert_eq!(report.objects, counts(&[("car", 2), ("rider", 1)]));
    assert_eq!(report.ignore_regions, 3);
    assert!(report.dropped_objects.is_empty());
    assert!(report.skipped.is_empty());
    assert!(!out.join(STATE_FILE).exists());
}

#[test]
fn yolop_layout_imports_both_splits_with_thresholded_masks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("yolop");
    // YOLOP's masks are black and white; its loader counts grey values above 1 as foreground.
    let da = |k: u32| grey(W, H, move |x, _| if x < 8 * (k + 1) { 255 } else { 1 });
    let ll = |k: u32| {
        grey(
            W,
            H,
            move |x, y| if (x + y + k).is_multiple_of(9) { 2 } else { 0 },
        )
    };
    for (split, stems) in [("train", ["t0", "t1"]), ("val", ["v0", "v1"])] {
        for sub in [
            "images",
            "det_annotations",
            "da_seg_annotations",
            "ll_seg_annotations",
        ] {
            fs::create_dir_all(root.join(sub).join(split)).unwrap();
        }
        for (k, stem) in stems.iter().enumerate() {
            let k = k as u32;
            picture(W, H, k)
                .save(root.join(format!("images/{split}/{stem}.jpg")))
                .unwrap();
            da(k)
                .save(root.join(format!("da_seg_annotations/{split}/{stem}.png")))
                .unwrap();
            ll(k)
                .save(root.join(format!("ll_seg_annotations/{split}/{stem}.png")))
                .unwrap();
            // BDD100K's 2018 per-image format, with a polygon object that is not a box.
            let label = json!({
                "name": stem,
                "attributes": {"weather": "rainy", "scene": "highway", "timeofday": "night"},
                "frames": [{"timestamp": 10000, "objects": [
                    {"category": "motor", "id": 0, "attributes": {"occluded": true},
                     "box2d": {"x1": 2.0, "y1": 3.0, "x2": 11.5, "y2": 20.0}},
                    {"category": "area/drivable", "id": 1, "poly2d": [[0, 0, "L"]]}
                ]}]
            });
            fs::write(
                root.join(format!("det_annotations/{split}/{stem}.json")),
                label.to_string(),
            )
            .unwrap();
        }
    }
    let out = dir.path().join("dataset");
    let run = percept_ok(&[
        "import",
        "yolop",
        "--root",
        s(&root),
        "--region",
        "JP",
        "--out",
        s(&out),
    ]);
    assert_contains(
        &run.stdout,
        &["imported 2 train + 2 val frames", "yolop-jp"],
    );
    let (manifest, stored) = read_back(&out);
    assert_eq!(manifest.tasks, LabelledTasks::ALL);
    assert_eq!(
        shard_files(&manifest),
        ["train-00000.shard", "val-00000.shard"]
    );
    let ids: Vec<(Split, &str)> = stored
        .iter()
        .map(|s| (s.split, s.sample.id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (Split::Train, "t0"),
            (Split::Train, "t1"),
            (Split::Val, "v0"),
            (Split::Val, "v1")
        ]
    );
    for (k, stored) in stored.iter().enumerate() {
        let k = (k % 2) as u32;
        let sample = &stored.sample;
        // `motor` is the legacy name of motorcycle; box2d corners are inclusive.
        assert_eq!(
            sample.boxes,
            vec![BoxLabel::new(
                class_id("motorcycle"),
                [2.0, 3.0, 12.5, 21.0]
            )]
        );
        assert_eq!(
            sample.traffic_side,
            TrafficSide::Left,
            "JP drives on the left"
        );
        assert_eq!(
            sample.conditions,
            Conditions::new("rainy", "night", "highway")
        );
        let want_da = grey(W, H, |x, _| u8::from(x < 8 * (k + 1)));
        let want_ll = grey(W, H, |x, y| u8::from((x + y + k).is_multiple_of(9)));
        assert_same_pixels(
            &sample.drivable,
            &want_da,
            &format!("{}: drivable", sample.id),
        );
        assert_same_pixels(&sample.lanes, &want_ll, &format!("{}: lanes", sample.id));
    }
}

#[test]
fn unmapped_categories_are_listed_or_dropped_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let kitti = KittiSet::new(dir.path());
    let car_a = [2.0, 3.0, 20.0, 21.0];
    let car_b = [30.0, 5.0, 44.0, 19.0];
    let hover_a = [10.0, 25.0, 30.0, 40.0];
    let hover_b = [33.0, 22.0, 63.0, 47.0];
    kitti.write_frame(
        "000000",
        0,
        &[kitti_line("Car", car_a), kitti_line("Hovercraft", hover_a)],
    );
    kitti.write_frame(
        "000001",
        1,
        &[
            kitti_line("Hovercraft", hover_b),
            kitti_line("Blimp", [0.0, 0.0, 40.0, 10.0]),
            kitti_line("Car", car_b),
        ],
    );
    let import_into = |out: &Path, extra: &[&str]| {
        percept(&[&kitti.args(out)[..], &["--region", "DE"], extra].concat())
    };

    // By default: refused before anything is written, listing every unmapped category.
    let refused_out = dir.path().join("refused");
    let refused = import_into(&refused_out, &[]);
    assert!(!refused.ok, "{}", refused.stdout);
    assert_contains(
        &refused.stderr,
        &[
            "2 categories are not in the built-in kitti class map",
            "`Hovercraft`: 2 objects (first in label_2/000000.txt)",
            "`Blimp`: 1 object",
            "(first in label_2/000001.txt)",
            "--class-map",
            "--unmapped drop",
        ],
    );
    assert_no_panic(&refused);
    let written: Vec<_> = fs::read_dir(&refused_out)
        .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(written.is_empty(), "a refused import wrote {written:?}");

    // --unmapped drop: dropped with a count per category.
    let dropped_out = dir.path().join("dropped");
    let dropped = import_into(&dropped_out, &["--unmapped", "drop"]);
    assert!(dropped.ok, "{}", dropped.stderr);
    assert_contains(
        &dropped.stdout,
        &[
            "dropped objects: 1 x unmapped category `Blimp`",
            "dropped objects: 2 x unmapped category `Hovercraft`",
        ],
    );
    let report = read_report(&dropped_out, "train");
    assert_eq!(
        report.dropped_objects,
        counts(&[
            ("unmapped category `Blimp`", 1),
            ("unmapped category `Hovercraft`", 2),
        ])
    );
    assert_eq!(report.objects, counts(&[("car", 2)]));
    let (_, stored) = read_back(&dropped_out);
    let boxes: Vec<Vec<BoxLabel>> = stored.iter().map(|s| s.sample.boxes.clone()).collect();
    let car = class_id("car");
    assert_eq!(
        boxes,
        [
            vec![BoxLabel::new(car, car_a)],
            vec![BoxLabel::new(car, car_b)]
        ]
    );

    // A class map of one's own: hovercraft are cars, blimps are dropped.
    let map = dir.path().join("hovercraft.toml");
    fs::write(
        &map,
        r#"classes = ["pedestrian", "car"]
ignore = ["DontCare"]
drop = ["Blimp"]

[map]
"Car" = "car"
"Hovercraft" = "car"
"Pedestrian" = "pedestrian"
"#,
    )
    .unwrap();
    let mapped_out = dir.path().join("mapped");
    let mapped = import_into(&mapped_out, &["--class-map", s(&map)]);
    assert!(mapped.ok, "{}", mapped.stderr);
    let (manifest, stored) = read_back(&mapped_out);
    assert_eq!(manifest.classes, ["pedestrian", "car"]);
    let boxes: Vec<Vec<BoxLabel>> = stored.iter().map(|s| s.sample.boxes.clone()).collect();
    assert_eq!(
        boxes,
        [
            vec![BoxLabel::new(1, car_a), BoxLabel::new(1, hover_a)],
            vec![BoxLabel::new(1, hover_b), BoxLabel::new(1, car_b)],
        ]
    );
    let report = read_report(&mapped_out, "train");
    assert_eq!(report.class_map, s(&map));
    assert_eq!(report.objects, counts(&[("car", 4)]));
    assert_eq!(
        report.dropped_objects,
        counts(&[("`Blimp` dropped by the class map", 1)])
    );
}

#[test]
fn malformed_records_are_reported_with_file_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bdd = BddSplit::new(&dir.path().join("bdd100k"));
    bdd.write_pattern_frame("good", 0);
    bdd.write_pattern_frame("flipped", 1);
    // `gone` has masks but no image.
    let (_, drivable, lanes) = pattern_frame(2);
    drivable.save(bdd.drivable.join("gone.png")).unwrap();
    lanes.save(bdd.lanes.join("gone.png")).unwrap();
    // `small` has a drivable mask half as wide as its image.
    let (image, _, lanes) = pattern_frame(3);
    bdd.write_frame("small", &image, &grey(W / 2, H, |_, _| 2), &lanes);
    let car = || vec![bdd_box("car", [10.0, 10.0, 19.0, 19.0])];
    let attributes = || bdd_attributes("clear", "highway", "daytime");
    bdd.write_labels(&[
        bdd_frame("good.jpg", attributes(), car()),
        bdd_frame(
            "flipped.jpg",
            attributes(),
            vec![bdd_box("car", [20.0, 1.0, 10.0, 5.0])],
        ),
        bdd_frame("gone.jpg", attributes(), car()),
        bdd_frame("small.jpg", attributes(), car()),
    ]);

    let out = dir.path().join("dataset");
    let run = percept_ok(&[bdd.args(&out), vec!["--region", "US"]].concat());

    let report = read_report(&out, "train");
    assert_eq!(report.records, 4);
    assert_eq!(report.imported, BTreeMap::from([(Split::Train, 1)]));
    let at = |file: PathBuf, record: &str| (file, Some(record.to_string()));
    let skipped: Vec<(PathBuf, Option<String>)> = report
        .skipped
        .iter()
        .map(|k| (k.file.clone(), k.record.clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            at(bdd.labels.clone(), "frame 1 (flipped.jpg)"),
            at(bdd.image_path("gone"), "gone"),
            at(bdd.drivable.join("small.png"), "small"),
        ]
    );
    let reasons: Vec<&str> = report.skipped.iter().map(|k| k.reason.as_str()).collect();
    assert_eq!(
        reasons[0],
        "labels[0].box2d has x2 = 10 < x1 = 20; expected x1 <= x2"
    );
    // Followed by the operating system's words.
    assert!(
        reasons[1].starts_with("cannot read the image: "),
        "{}",
        reasons[1]
    );
    assert_eq!(
        reasons[2],
        format!(
            "the drivable mask is {}x{H} but its image is {W}x{H}",
            W / 2
        )
    );
    // The terminal lists each with its file, record and reason.
    for k in &report.skipped {
        let line = format!(
            "    {} ({}): {}",
            k.file.display(),
            k.record.as_deref().unwrap(),
            k.reason
        );
        assert_contains(&run.stdout, &[&line]);
    }
    assert_contains(
        &run.stdout,
        &["imported 1 train frame ", "skipped records: 3"],
    );

    let (_, stored) = read_back(&out);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sample.id, "good");
    assert_eq!(
        stored[0].sample.boxes,
        [BoxLabel::new(class_id("car"), [10.0, 10.0, 20.0, 20.0])]
    );
}

#[test]
fn a_truncated_jpeg_is_skipped_and_reported_like_any_bad_image() {
    let dir = tempfile::tempdir().unwrap();
    let kitti = KittiSet::new(dir.path());
    let car = [kitti_line("Car", [12.5, 10.25, 30.75, 28.0])];
    kitti.write_frame("000000", 0, &car);
    // Frame 000001's JPEG lost its last 40 bytes: the decoder alone pads it with grey.
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&picture(W, H, 1))
        .unwrap();
    let cut = kitti.images.join("000001.jpg");
    fs::write(&cut, &jpeg[..jpeg.len() - 40]).unwrap();
    fs::write(kitti.labels.join("000001.txt"), car.join("\n") + "\n").unwrap();

    let out = dir.path().join("dataset");
    let run = percept_ok(&[kitti.args(&out), vec!["--region", "DE"]].concat());

    let report = read_report(&out, "train");
    assert_eq!(report.imported, BTreeMap::from([(Split::Train, 1)]));
    let skipped: Vec<(PathBuf, Option<String>, String)> = report
        .skipped
        .iter()
        .map(|k| (k.file.clone(), k.record.clone(), k.reason.clone()))
        .collect();
    let reason = format!(
        "the JPEG is truncated: its {} bytes end in the image data, before the end-of-image \
         marker (FFD9)",
        jpeg.len() - 40
    );
    assert_eq!(
        skipped,
        [(cut.clone(), Some("000001".to_string()), reason.clone())]
    );
    assert_contains(
        &run.stdout,
        &[
            "skipped records: 1",
            &format!("    {} (000001): {reason}", cut.display()),
        ],
    );
    let (_, stored) = read_back(&out);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sample.id, "000000");
}

/// Progress that asks the import to stop once `records` records are done.
struct StopAfter {
    records: usize,
    done: AtomicUsize,
}

impl ImportProgress for StopAfter {
    fn advanced(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
    fn should_stop(&self) -> bool {
        self.done.load(Ordering::SeqCst) >= self.records
    }
}

#[test]
fn interrupted_import_resumes_to_the_same_dataset() {
    const FRAMES: u32 = 12;
    let dir = tempfile::tempdir().unwrap();
    let bdd = BddSplit::new(&dir.path().join("train"));
    let frames: Vec<Value> = (0..FRAMES)
        .map(|k| {
            let id = format!("f{k:02}");
            bdd.write_pattern_frame(&id, k);
            let x = f64::from(k * 3);
            bdd_frame(
                &format!("{id}.jpg"),
                bdd_attributes(
                    "clear",
                    "highway",
                    if k % 2 == 0 { "daytime" } else { "night" },
                ),
                vec![
                    bdd_box("car", [x, 10.0, x + 9.0, 20.0]),
                    bdd_box("trailer", [x + 20.0, 5.0, x + 30.0, 15.0]),
                ],
            )
        })
        .collect();
    bdd.write_labels(&frames);
    let source = bdd.source(Split::Train);
    let options = |out: &Path, region: &str| ImportOptions {
        out: out.to_path_buf(),
        name: "bdd100k-us".into(),
        region: region.into(),
        class_map: ClassMap::builtin("bdd100k").unwrap(),
        unmapped: UnmappedPolicy::Error,
        samples_per_shard: 4,
        val_fraction: None,
    };

    // Interrupted after the second of three blocks.
    let out = dir.path().join("dataset");
    let stop = StopAfter {
        records: 6,
        done: AtomicUsize::new(0),
    };
    let err = import(&source, &options(&out, "US"), &stop).unwrap_err();
    let ImportError::Interrupted { done, total, state } = err else {
        panic!("expected an interruption, got {err}");
    };
    assert_eq!((done, total), (2, 3));
    assert!((1..3).contains(&done));
    assert_eq!(state, out.join(STATE_FILE));
    assert!(state.exists());
    assert!(!out.join(MANIFEST_FILE).exists());
    assert!(out.join("train-00001.shard").exists());

    // Resuming with other options is refused, naming the option.
    let err = import(&source, &options(&out, "DE"), &Quiet).unwrap_err();
    let ImportError::Resume(message) = &err else {
        panic!("expected a resume refusal, got {err}");
    };
    assert_contains(message, &["region was `US`, now `DE`"]);
    assert!(state.exists(), "a refused resume keeps the state");
    // So is resuming with options of the source that change the masks.
    let curbs = bdd.source_with_lanes(Split::Train, vec![LaneCategory::RoadCurb]);
    let err = import(&curbs, &options(&out, "US"), &Quiet).unwrap_err();
    let ImportError::Resume(message) = &err else {
        panic!("expected a resume refusal, got {err}");
    };
    assert_contains(message, &["lane categories was `double other,"]);
    assert_contains(message, &["now `road curb`"]);

    // Resuming finishes the dataset exactly as an uninterrupted import writes it.
    let resumed = import(&source, &options(&out, "US"), &Quiet).unwrap();
    assert_eq!(resumed.report.resumed_blocks, done);
    assert!(!state.exists());
    let other = dir.path().join("uninterrupted");
    let fresh = import(&source, &options(&other, "US"), &Quiet).unwrap();
    assert_eq!(fresh.report.resumed_blocks, 0);
    assert_eq!(
        shard_files(&resumed.manifest),
        [
            "train-00000.shard",
            "train-00001.shard",
            "train-00002.shard"
        ]
    );
    assert_eq!(resumed.manifest.shards, fresh.manifest.shards);
    assert_eq!(
        Manifest::load_dir(&out).unwrap(),
        Manifest::load_dir(&other).unwrap()
    );
    assert_eq!(
        ImportReport {
            resumed_blocks: 0,
            ..resumed.report.clone()
        },
        fresh.report,
        "the counts of the blocks done before are kept"
    );
    assert_eq!(resumed.report.objects, counts(&[("car", 12)]));
    assert_eq!(resumed.report.ignore_regions, 12);
    assert_eq!(read_report(&out, "train"), resumed.report);

    // A directory holding something else is refused.
    let junk = dir.path().join("junk");
    fs::create_dir(&junk).unwrap();
    fs::write(junk.join("notes.txt"), "mine").unwrap();
    let err = import(&source, &options(&junk, "US"), &Quiet).unwrap_err();
    assert!(
        matches!(&err, ImportError::Options(m) if m.contains("is not empty")),
        "{err}"
    );
    assert_eq!(fs::read_dir(&junk).unwrap().count(), 1);

    // The train split again into the finished dataset is refused, naming the split.
    let err = import(&source, &options(&out, "US"), &Quiet).unwrap_err();
    assert!(
        matches!(&err, ImportError::Options(m) if m.contains("already holds the train split")),
        "{err}"
    );

    // The val split (through the binary) goes into the same dataset.
    let val = BddSplit::new(&dir.path().join("val"));
    for k in 0..3 {
        val.write_pattern_frame(&format!("v{k}"), k);
    }
    val.write_labels(
        &(0..3)
            .map(|k| {
                bdd_frame(
                    &format!("v{k}.jpg"),
                    bdd_attributes("foggy", "residential", "dawn/dusk"),
                    vec![bdd_box("bus", [1.0, 2.0, 30.0, 40.0])],
                )
            })
            .collect::<Vec<_>>(),
    );
    let run = percept_ok(&[val.args(&out), vec!["--split", "val", "--region", "US"]].concat());
    assert_contains(
        &run.stdout,
        &["imported 3 val frames", "import-report-val.json"],
    );
    let (manifest, stored) = read_back(&out);
    assert_eq!(
        shard_files(&manifest),
        [
            "train-00000.shard",
            "train-00001.shard",
            "train-00002.shard",
            "val-00000.shard"
        ]
    );
    assert_eq!(manifest.samples_of(Split::Train), 12);
    assert_eq!(manifest.samples_of(Split::Val), 3);
    let train: Vec<_> = manifest.shards_of(Split::Train).cloned().collect();
    assert_eq!(
        train, fresh.manifest.shards,
        "the train shards are untouched"
    );
    let ids: Vec<(Split, &str)> = stored
        .iter()
        .map(|s| (s.split, s.sample.id.as_str()))
        .collect();
    assert_eq!(ids[11], (Split::Train, "f11"));
    assert_eq!(
        ids[12..],
        [(Split::Val, "v0"), (Split::Val, "v1"), (Split::Val, "v2")]
    );
    assert_eq!(
        read_report(&out, "val").imported,
        BTreeMap::from([(Split::Val, 3)])
    );
    assert!(out.join("import-report-train.json").exists());

    // The same frames once more as test data: ids must be unique across the dataset's splits.
    fs::remove_file(out.join("import-report-val.json")).unwrap();
    let mut manifest = Manifest::load_dir(&out).unwrap();
    manifest.shards.retain(|s| s.split == Split::Train);
    manifest.save(out.join(MANIFEST_FILE)).unwrap();
    let err = import(&source, &options(&out, "US"), &Quiet).unwrap_err();
    assert!(
        matches!(&err, ImportError::Options(m) if m.contains("already holds the train split")),
        "{err}"
    );
    let err = import(&bdd.source(Split::Val), &options(&out, "US"), &Quiet).unwrap_err();
    assert!(
        matches!(&err, ImportError::Source(m) if m.contains("frame id `f00` appears twice in the dataset")),
        "{err}"
    );
}

#[test]
fn imported_dataset_trains() {
    const FRAMES: u64 = 8;
    // BDD100K's names for the synthetic classes, by synthetic class id.
    const BDD_NAMES: [&str; 7] = [
        "car",
        "truck",
        "bus",
        "pedestrian",
        "rider",
        "traffic light",
        "traffic sign",
    ];
    assert_eq!(SYNTH_CLASSES.len(), BDD_NAMES.len());
    let (w, h) = (common::W, common::H);
    let dir = tempfile::tempdir().unwrap();
    let bdd = BddSplit::new(&dir.path().join("bdd100k"));
    let generator = SceneGenerator::for_region(w, h, "US", 11);
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for k in 0..FRAMES {
        let scene = generator.generate(k);
        let id = format!("scene-{k}");
        // BDD100K's values: drivable 0 (direct) or 2 (background); lanes single white or
        // background.
        let drivable = grey(
            w,
            h,
            |x, y| if scene.drivable[(x, y)][0] == 1 { 0 } else { 2 },
        );
        let lanes = grey(w, h, |x, y| if scene.lanes[(x, y)][0] == 1 { 6 } else { 8 });
        bdd.write_frame(&id, &scene.image, &drivable, &lanes);
        let labels = scene
            .boxes
            .iter()
            .map(|b| {
                let corners = [b.x1, b.y1, b.x2 - 1.0, b.y2 - 1.0].map(f64::from);
                bdd_box(BDD_NAMES[usize::from(b.class)], corners)
            })
            .collect();
        let c = &scene.conditions;
        frames.push(bdd_frame(
            &format!("{id}.jpg"),
            bdd_attributes(&c.weather, &c.scene, &c.time_of_day),
            labels,
        ));
        let boxes: Vec<BoxLabel> = scene
            .boxes
            .iter()
            .map(|b| BoxLabel {
                class: class_id(BDD_NAMES[usize::from(b.class)]),
                ..*b
            })
            .collect();
        expected.push((id, boxes, scene.drivable, scene.lanes, scene.conditions));
    }
    bdd.write_labels(&frames);

    let data = dir.path().join("dataset");
    percept_ok(
        &[
            bdd.args(&data),
            vec!["--region", "US", "--samples-per-shard", "4"],
        ]
        .concat(),
    );
    let (_, stored) = read_back(&data);
    assert_eq!(stored.len(), FRAMES as usize);
    for (got, (id, boxes, drivable, lanes, conditions)) in stored.iter().zip(&expected) {
        assert_eq!(&got.sample.id, id);
        assert_eq!(&got.sample.boxes, boxes, "{id}");
        assert_same_pixels(&got.sample.drivable, drivable, &format!("{id}: drivable"));
        assert_same_pixels(&got.sample.lanes, lanes, &format!("{id}: lanes"));
        assert_eq!(&got.sample.conditions, conditions, "{id}");
    }

    let config = common::run_config(dir.path(), &[&data], "US", 2, "");
    let config_path = dir.path().join("run.toml");
    fs::write(&config_path, config.to_toml()).unwrap();
    let run = percept_ok(&["train", "--config", s(&config_path)]);
    assert_contains(&run.stdout, &["trained 2 steps"]);
    let checkpoints: Vec<PathBuf> = fs::read_dir(config.run_dir().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    assert!(
        !checkpoints.is_empty(),
        "no checkpoint in {}",
        config.run_dir().display()
    );
}
