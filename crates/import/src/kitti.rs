//! KITTI object detection: the 2D boxes of the KITTI object devkit's label files.
//!
//! # Layout
//!
//! ```text
//! training/image_2/000000.png   (--images training/image_2)
//! training/label_2/000000.txt   (--labels training/label_2)
//! ```
//!
//! Every `*.txt` file of the label directory is one frame, in file-name order: its id is the
//! file stem and its image is `<stem>.png` in the image directory, or `<stem>.jpg` /
//! `<stem>.jpeg` when that is what exists. Every frame goes to the one split given
//! ([`KittiOptions::split`]): the devkit labels only its training set, so a validation split is
//! a second import of held-out label files.
//!
//! The names of the label files are listed and sorted once, when the source is made: a sorted
//! `Vec` of paths (under a megabyte for KITTI's 7481 frames) is what gives every pass
//! over the frames the same order. The labels themselves are read one file at a time.
//!
//! # Label files
//!
//! One object per line, 15 fields separated by whitespace, as in the devkit's readme:
//!
//! | Fields | Meaning | Use |
//! |--------|---------|-----|
//! | 1 | type: `Car`, `Pedestrian`, `DontCare`, ... | [`Object::category`], verbatim |
//! | 2 | truncated, 0 (not) ..= 1 (fully) | checked, not used |
//! | 3 | occluded: 0 visible, 1 partly, 2 largely, 3 unknown | checked, not used |
//! | 4 | alpha, observation angle (rad) | checked to be a number, not used |
//! | 5–8 | bbox left, top, right, bottom (pixels) | [`Object::bbox`] |
//! | 9–11 | dimensions height, width, length (m) | checked to be numbers, not used |
//! | 12–14 | location x, y, z in camera coordinates (m) | checked to be numbers, not used |
//! | 15 | rotation_y (rad) | checked to be a number, not used |
//!
//! The devkit's types are `Car`, `Van`, `Truck`, `Pedestrian`, `Person_sitting`, `Cyclist`,
//! `Tram`, `Misc` and `DontCare`; they are case-sensitive and passed through as they are,
//! whatever they are (no check against that list): the class map decides what each becomes,
//! including `DontCare`, which a class map usually turns into an ignore region. Empty lines, trailing whitespace and CRLF line endings are accepted.
//!
//! A line that is not ground truth as described skips the whole frame, never just the line:
//! keeping the frame's other objects would turn the dropped object into background. Refused are
//! a field count other than 15 (16 fields is a detection result, whose last field is a score),
//! a field that is not a finite number, truncated outside 0..=1, occluded other than 0, 1, 2 or
//! 3, and a box with right < left or bottom < top.
//!
//! `DontCare` lines write `-1` for truncated and occluded and `-10` for alpha (and, in the
//! devkit's files, `-1` dimensions, `-1000` location and `-10` rotation_y): the `-1`s are
//! accepted on `DontCare` lines only; the others need no exception, as the 3D fields are only
//! checked to be numbers (their ranges are not checked: a frame is not dropped for a field
//! this importer does not use).
//!
//! # Boxes
//!
//! KITTI's boxes are floating-point pixel coordinates (`712.40 143.00 810.73 307.92`), and the
//! devkit computes a box's area as `(right - left) * (bottom - top)`: they are continuous
//! coordinates already, so [`Object::bbox`] is `[left, top, right, bottom]` as given, with no
//! `+ 1`. Boxes are not clipped here; the pipeline clips them to the image.
//!
//! # Conditions
//!
//! KITTI labels no per-frame conditions: weather, time of day and scene are all `unknown`.

use std::path::{Path, PathBuf};

use percept_data::{Conditions, Split};

use crate::pixels::read_image;
use crate::source::{Frame, FrameItem, LabelledTasks, Object, Pixels, SkippedRecord, Source};

/// The type of KITTI's "do not care" regions, the only type whose truncated and occluded
/// fields may be `-1`.
const DONT_CARE: &str = "DontCare";

/// The fields of a ground-truth label line.
const FIELDS: usize = 15;

/// The names of the last fields of a label line, the 3D box (dimensions, location, rotation).
const THREE_D_FIELDS: [&str; 7] = [
    "height",
    "width",
    "length",
    "location x",
    "location y",
    "location z",
    "rotation_y",
];

/// Image file extensions looked for, in order, next to a label file's stem.
const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// What the frames' conditions are, as KITTI does not label them.
const UNKNOWN: &str = "unknown";

/// Where a KITTI object dataset is on disk, and which split its frames go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KittiOptions {
    /// The image directory (`training/image_2`), `--images`.
    pub images: PathBuf,
    /// The label directory (`training/label_2`), `--labels`.
    pub labels: PathBuf,
    /// The split of every frame.
    pub split: Split,
}

/// A KITTI object dataset: one frame per label file (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct KittiSource {
    opts: KittiOptions,
    /// The `*.txt` files of the label directory, sorted by name.
    label_files: Vec<PathBuf>,
}

impl KittiSource {
    /// Checks that the image directory exists and lists the label directory's `*.txt` files,
    /// refusing a label directory with none.
    pub fn new(opts: KittiOptions) -> Result<Self, String> {
        if !opts.images.is_dir() {
            return Err(format!(
                "--images {}: not a directory; give the KITTI image directory \
                 (training/image_2 in the object devkit)",
                opts.images.display()
            ));
        }
        let label_files = list_label_files(&opts.labels)?;
        Ok(Self { opts, label_files })
    }

    /// The frame of one label file.
    fn frame(&self, label_file: &Path) -> FrameItem {
        let Some(id) = label_file.file_stem().and_then(|stem| stem.to_str()) else {
            return Err(SkippedRecord {
                file: label_file.to_path_buf(),
                record: None,
                reason: "the file name is not UTF-8, so it cannot be a frame id; rename it \
                         (KITTI's are like 000123.txt)"
                    .to_string(),
            });
        };
        let image = self.find_image(id)?;
        let text = std::fs::read_to_string(label_file).map_err(|e| SkippedRecord {
            file: label_file.to_path_buf(),
            record: Some(id.to_string()),
            reason: format!("cannot read the label file: {e}"),
        })?;
        let objects = parse_labels(&text).map_err(|bad| SkippedRecord {
            file: label_file.to_path_buf(),
            record: Some(format!("line {}", bad.line)),
            reason: bad.reason,
        })?;
        Ok(Frame {
            id: id.to_string(),
            split: self.opts.split,
            origin: self.origin(id),
            objects,
            conditions: unknown_conditions(),
            image,
            drivable: None,
            lanes: None,
        })
    }

    /// The image of frame `id`: the first of `<id>.png`, `<id>.jpg`, `<id>.jpeg` that exists.
    fn find_image(&self, id: &str) -> Result<PathBuf, SkippedRecord> {
        let candidate = |ext: &str| self.opts.images.join(format!("{id}.{ext}"));
        IMAGE_EXTENSIONS
            .into_iter()
            .map(candidate)
            .find(|path| path.is_file())
            .ok_or_else(|| SkippedRecord {
                file: candidate(IMAGE_EXTENSIONS[0]),
                record: Some(id.to_string()),
                reason: format!(
                    "no image for this label file in --images {} (looked for .png, .jpg, .jpeg)",
                    self.opts.images.display()
                ),
            })
    }

    /// `label_2/000123.txt`: the label directory's name and the file's.
    fn origin(&self, id: &str) -> String {
        match self.opts.labels.file_name() {
            Some(dir) => format!("{}/{id}.txt", dir.to_string_lossy()),
            None => format!("{id}.txt"),
        }
    }
}

impl Source for KittiSource {
    fn format(&self) -> &'static str {
        "kitti"
    }

    fn tasks(&self) -> LabelledTasks {
        LabelledTasks::DETECTION_ONLY
    }

    fn frames(&self) -> Result<Box<dyn Iterator<Item = FrameItem> + Send + '_>, String> {
        Ok(Box::new(
            self.label_files.iter().map(|file| self.frame(file)),
        ))
    }

    fn load(&self, frame: &Frame) -> Result<Pixels, SkippedRecord> {
        let (image, jpeg) = read_image(&frame.image).map_err(|reason| SkippedRecord {
            file: frame.image.clone(),
            record: Some(frame.id.clone()),
            reason,
        })?;
        Ok(Pixels {
            image,
            jpeg,
            drivable: None,
            lanes: None,
        })
    }
}

/// The `*.txt` files of the label directory, sorted by name; an error names `--labels`.
fn list_label_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let cannot_list = |e: std::io::Error| {
        format!(
            "--labels {}: cannot list the directory ({e}); give the KITTI label directory \
             (training/label_2 in the object devkit)",
            dir.display()
        )
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(cannot_list)? {
        let path = entry.map_err(cannot_list)?.path();
        if path.extension().is_some_and(|ext| ext == "txt") && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(format!(
            "--labels {}: no *.txt label files; give the KITTI label directory \
             (training/label_2 in the object devkit)",
            dir.display()
        ));
    }
    files.sort_unstable();
    Ok(files)
}

fn unknown_conditions() -> Conditions {
    Conditions {
        weather: UNKNOWN.to_string(),
        time_of_day: UNKNOWN.to_string(),
        scene: UNKNOWN.to_string(),
    }
}

/// A label line that is not ground truth: its 1-based number and why.
#[derive(Debug)]
struct BadLine {
    line: usize,
    reason: String,
}

/// The objects of a label file, skipping blank lines; the first bad line fails the whole file.
fn parse_labels(text: &str) -> Result<Vec<Object>, BadLine> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            parse_object(line).map_err(|reason| BadLine {
                line: index + 1,
                reason,
            })
        })
        .collect()
}

/// One label line: its type and 2D box, after checking every field.
fn parse_object(line: &str) -> Result<Object, String> {
    let [category, truncated, occluded, alpha, left, top, right, bottom, three_d @ ..] =
        split_fields(line)?;
    let dont_care = category == DONT_CARE;
    check_truncated(truncated, dont_care)?;
    check_occluded(occluded, dont_care)?;
    number("alpha", alpha)?;
    let bbox = parse_bbox([left, top, right, bottom])?;
    for (name, value) in THREE_D_FIELDS.into_iter().zip(three_d) {
        number(name, value)?;
    }
    Ok(Object {
        category: category.to_string(),
        bbox,
    })
}

/// The 15 whitespace-separated fields of a line.
fn split_fields(line: &str) -> Result<[&str; FIELDS], String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    fields
        .try_into()
        .map_err(|fields: Vec<&str>| match fields.len() {
            16 => "16 fields: this looks like a detection result (16 fields with a score), not \
               ground truth; give --labels the devkit's label_2 directory"
                .to_string(),
            n => format!(
                "{n} fields; a KITTI label line has {FIELDS}: type truncated occluded alpha \
             left top right bottom height width length x y z rotation_y"
            ),
        })
}

/// A finite number; `name` is the field's, for the error.
fn number(name: &str, value: &str) -> Result<f32, String> {
    let parsed: f32 = value
        .parse()
        .map_err(|_| format!("{name} is `{value}`, not a number; expected a decimal number"))?;
    if !parsed.is_finite() {
        return Err(format!("{name} is `{value}`; expected a finite number"));
    }
    Ok(parsed)
}

/// Truncated is 0..=1, or -1 on a `DontCare` line.
fn check_truncated(value: &str, dont_care: bool) -> Result<(), String> {
    let truncated = number("truncated", value)?;
    if (0.0..=1.0).contains(&truncated) || (dont_care && truncated == -1.0) {
        Ok(())
    } else {
        Err(format!(
            "truncated is `{value}`; expected 0..=1 (-1 only on {DONT_CARE} lines)"
        ))
    }
}

/// Occluded is 0, 1, 2 or 3, or -1 on a `DontCare` line.
fn check_occluded(value: &str, dont_care: bool) -> Result<(), String> {
    let valid = match value.parse::<i32>() {
        Ok(occluded) => (0..=3).contains(&occluded) || (dont_care && occluded == -1),
        Err(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "occluded is `{value}`; expected the integer 0, 1, 2 or 3 (-1 only on {DONT_CARE} \
             lines)"
        ))
    }
}

/// `[left, top, right, bottom]` as given (continuous coordinates), with right >= left and
/// bottom >= top.
fn parse_bbox([left, top, right, bottom]: [&str; 4]) -> Result<[f32; 4], String> {
    let left = number("bbox left", left)?;
    let top = number("bbox top", top)?;
    let right = number("bbox right", right)?;
    let bottom = number("bbox bottom", bottom)?;
    if right < left {
        return Err(format!(
            "bbox right ({right}) is less than bbox left ({left}); expected left <= right"
        ));
    }
    if bottom < top {
        return Err(format!(
            "bbox bottom ({bottom}) is less than bbox top ({top}); expected top <= bottom"
        ));
    }
    Ok([left, top, right, bottom])
}

#[cfg(test)]
mod tests {
    use super::*;

    use image::RgbImage;
    use tempfile::TempDir;

    // Lines of the devkit's training/label_2 files.
    const CAR: &str =
        "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59";
    const VAN: &str =
        "Van 0.00 0 -1.55 566.83 165.68 597.09 196.01 2.06 1.86 4.60 -0.40 1.62 59.10 -1.56";
    const PEDESTRIAN: &str =
        "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01";
    const DONT_CARE_LINE: &str =
        "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10";

    /// A KITTI devkit tree in a temporary directory.
    struct Devkit {
        _root: TempDir,
        images: PathBuf,
        labels: PathBuf,
    }

    impl Devkit {
        fn new() -> Self {
            let root = tempfile::tempdir().unwrap();
            let images = root.path().join("training/image_2");
            let labels = root.path().join("training/label_2");
            std::fs::create_dir_all(&images).unwrap();
            std::fs::create_dir_all(&labels).unwrap();
            Devkit {
                _root: root,
                images,
                labels,
            }
        }

        fn label(&self, id: &str, text: &str) -> &Self {
            std::fs::write(self.labels.join(format!("{id}.txt")), text).unwrap();
            self
        }

        /// Writes a `width` x `height` image `<id>.<ext>` (the extension picks the format).
        fn image(&self, id: &str, ext: &str, width: u32, height: u32) -> &Self {
            let image = RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]));
            image.save(self.images.join(format!("{id}.{ext}"))).unwrap();
            self
        }

        /// A frame with a PNG image and the given labels.
        fn frame(&self, id: &str, text: &str) -> &Self {
            self.image(id, "png", 8, 6).label(id, text)
        }

        fn options(&self, split: Split) -> KittiOptions {
            KittiOptions {
                images: self.images.clone(),
                labels: self.labels.clone(),
                split,
            }
        }

        fn source(&self) -> KittiSource {
            KittiSource::new(self.options(Split::Train)).unwrap()
        }
    }

    fn frames(source: &KittiSource) -> Vec<FrameItem> {
        source.frames().unwrap().collect()
    }

    #[test]
    fn a_frame_has_its_objects_verbatim_with_dont_care_sentinels() {
        let devkit = Devkit::new();
        let text = [CAR, VAN, PEDESTRIAN, DONT_CARE_LINE].join("\n") + "\n";
        devkit.frame("000123", &text);
        let source = KittiSource::new(devkit.options(Split::Val)).unwrap();

        assert_eq!(source.format(), "kitti");
        assert_eq!(
            source.tasks(),
            LabelledTasks {
                detection: true,
                drivable: false,
                lanes: false
            }
        );
        let expected = Frame {
            id: "000123".to_string(),
            split: Split::Val,
            origin: "label_2/000123.txt".to_string(),
            objects: vec![
                Object::new("Car", [587.01, 173.33, 614.12, 200.12]),
                Object::new("Van", [566.83, 165.68, 597.09, 196.01]),
                Object::new("Pedestrian", [712.40, 143.00, 810.73, 307.92]),
                Object::new("DontCare", [503.89, 169.71, 590.61, 190.13]),
            ],
            conditions: Conditions {
                weather: "unknown".to_string(),
                time_of_day: "unknown".to_string(),
                scene: "unknown".to_string(),
            },
            image: devkit.images.join("000123.png"),
            drivable: None,
            lanes: None,
        };
        assert_eq!(frames(&source), vec![Ok(expected)]);
    }

    #[test]
    fn types_pass_through_unvalidated_and_case_sensitive() {
        let devkit = Devkit::new();
        let text = CAR.replacen("Car", "car", 1) + "\n" + &CAR.replacen("Car", "Hovercraft", 1);
        devkit.frame("000000", &text);
        let frame = frames(&devkit.source()).remove(0).unwrap();
        let categories: Vec<&str> = frame.objects.iter().map(|o| o.category.as_str()).collect();
        assert_eq!(categories, ["car", "Hovercraft"]);
    }

    #[test]
    fn frames_come_in_file_name_order_with_jpg_and_jpeg_images() {
        let devkit = Devkit::new();
        devkit
            .frame("000010", CAR)
            .frame("000000", VAN)
            .image("000002", "jpg", 8, 6)
            .label("000002", PEDESTRIAN)
            .image("000001", "jpeg", 8, 6)
            .label("000001", "");
        // Not label files: ignored.
        std::fs::write(devkit.labels.join("README.md"), "KITTI").unwrap();
        std::fs::create_dir(devkit.labels.join("backup.txt")).unwrap();
        let source = devkit.source();

        let listed: Vec<(String, PathBuf, usize)> = frames(&source)
            .into_iter()
            .map(|frame| {
                let frame = frame.unwrap();
                (frame.id, frame.image, frame.objects.len())
            })
            .collect();
        let images = &devkit.images;
        assert_eq!(
            listed,
            [
                ("000000".to_string(), images.join("000000.png"), 1),
                ("000001".to_string(), images.join("000001.jpeg"), 0),
                ("000002".to_string(), images.join("000002.jpg"), 1),
                ("000010".to_string(), images.join("000010.png"), 1),
            ]
        );
        assert_eq!(frames(&source), frames(&source), "every pass is the same");
    }

    #[test]
    fn png_is_preferred_when_several_images_exist() {
        let devkit = Devkit::new();
        devkit.image("000000", "jpg", 8, 6).frame("000000", CAR);
        let frame = frames(&devkit.source()).remove(0).unwrap();
        assert_eq!(frame.image, devkit.images.join("000000.png"));
    }

    #[test]
    fn load_returns_the_image_and_no_masks() {
        let devkit = Devkit::new();
        devkit
            .image("000000", "png", 37, 23)
            .label("000000", CAR)
            .image("000001", "jpg", 19, 11)
            .label("000001", CAR);
        let source = devkit.source();
        let loaded: Vec<Pixels> = frames(&source)
            .into_iter()
            .map(|frame| source.load(&frame.unwrap()).unwrap())
            .collect();

        assert_eq!(loaded[0].image.dimensions(), (37, 23));
        assert_eq!(loaded[0].image.get_pixel(5, 9), &image::Rgb([5, 9, 7]));
        assert!(loaded[0].jpeg.is_none());
        assert_eq!(loaded[1].image.dimensions(), (19, 11));
        let jpeg = std::fs::read(devkit.images.join("000001.jpg")).unwrap();
        assert_eq!(loaded[1].jpeg.as_deref(), Some(jpeg.as_slice()));
        for pixels in &loaded {
            assert!(pixels.drivable.is_none());
            assert!(pixels.lanes.is_none());
        }
    }

    #[test]
    fn an_unreadable_image_is_skipped_at_load() {
        let devkit = Devkit::new();
        devkit.label("000000", CAR);
        std::fs::write(devkit.images.join("000000.png"), b"not an image").unwrap();
        let source = devkit.source();
        let frame = frames(&source).remove(0).unwrap();

        let skipped = source.load(&frame).unwrap_err();
        assert_eq!(skipped.file, devkit.images.join("000000.png"));
        assert_eq!(skipped.record.as_deref(), Some("000000"));
        assert!(
            skipped.reason.contains("not an image"),
            "{}",
            skipped.reason
        );
    }

    #[test]
    fn a_malformed_line_skips_its_whole_frame_and_the_next_frames_follow() {
        let with = |field: usize, value: &str| {
            let mut fields: Vec<&str> = CAR.split(' ').collect();
            fields[field] = value;
            fields.join(" ")
        };
        let cases: Vec<(String, &[&str])> = vec![
            (
                CAR.rsplit_once(' ').unwrap().0.to_string(),
                &["14 fields", "15"],
            ),
            (
                format!("{CAR} 0.93"),
                &["16 fields", "detection result", "score", "not ground truth"],
            ),
            (with(4, "abc"), &["bbox left", "`abc`", "not a number"]),
            (with(5, "NaN"), &["bbox top", "`NaN`", "finite"]),
            (with(12, "inf"), &["location y", "`inf`", "finite"]),
            (with(2, "5"), &["occluded", "`5`", "0, 1, 2 or 3"]),
            (with(2, "0.5"), &["occluded", "`0.5`", "integer"]),
            (with(2, "-1"), &["occluded", "`-1`", "only on DontCare"]),
            (with(1, "1.5"), &["truncated", "`1.5`", "0..=1"]),
            (with(1, "-1"), &["truncated", "`-1`", "only on DontCare"]),
            (
                with(6, "500.00"),
                &["bbox right (500)", "bbox left (587.01)", "left <= right"],
            ),
            (
                with(7, "100.5"),
                &["bbox bottom (100.5)", "bbox top (173.33)", "top <= bottom"],
            ),
        ];
        for (bad, words) in cases {
            let devkit = Devkit::new();
            // The bad line is line 3, after a good object and a blank line.
            devkit
                .frame("000000", &format!("{CAR}\n\n{bad}\n{VAN}\n"))
                .frame("000001", CAR);
            let mut items = frames(&devkit.source()).into_iter();

            let skipped = items.next().unwrap().unwrap_err();
            assert_eq!(skipped.file, devkit.labels.join("000000.txt"), "{bad}");
            assert_eq!(skipped.record.as_deref(), Some("line 3"), "{bad}");
            for word in words {
                assert!(
                    skipped.reason.contains(word),
                    "{bad}: {:?} lacks {word:?}",
                    skipped.reason
                );
            }
            let next = items.next().unwrap().unwrap();
            assert_eq!(next.id, "000001");
            assert!(items.next().is_none());
        }
    }

    #[test]
    fn a_frame_without_an_image_is_skipped() {
        let devkit = Devkit::new();
        devkit.label("000000", CAR).frame("000001", CAR);
        let mut items = frames(&devkit.source()).into_iter();

        let skipped = items.next().unwrap().unwrap_err();
        assert_eq!(skipped.file, devkit.images.join("000000.png"));
        assert_eq!(skipped.record.as_deref(), Some("000000"));
        assert!(skipped.reason.contains("no image"), "{}", skipped.reason);
        assert!(skipped.reason.contains(".png, .jpg"), "{}", skipped.reason);
        assert_eq!(items.next().unwrap().unwrap().id, "000001");
    }

    #[test]
    fn crlf_blank_lines_and_trailing_whitespace_parse() {
        let devkit = Devkit::new();
        devkit.frame("000000", &format!("{CAR} \r\n\r\n{PEDESTRIAN}\t\r\n  \r\n"));
        let frame = frames(&devkit.source()).remove(0).unwrap();
        assert_eq!(
            frame.objects,
            [
                Object::new("Car", [587.01, 173.33, 614.12, 200.12]),
                Object::new("Pedestrian", [712.40, 143.00, 810.73, 307.92]),
            ]
        );
    }

    #[test]
    fn new_refuses_missing_directories_and_an_empty_label_directory() {
        let devkit = Devkit::new();
        let error = KittiSource::new(devkit.options(Split::Train)).unwrap_err();
        assert!(error.starts_with("--labels "), "{error}");
        assert!(
            error.contains(&devkit.labels.display().to_string()),
            "{error}"
        );
        assert!(error.contains("no *.txt label files"), "{error}");

        let missing = KittiOptions {
            labels: devkit.labels.join("absent"),
            ..devkit.options(Split::Train)
        };
        let error = KittiSource::new(missing).unwrap_err();
        assert!(error.starts_with("--labels "), "{error}");
        assert!(error.contains("absent"), "{error}");

        devkit.label("000000", CAR);
        let missing = KittiOptions {
            images: devkit.images.join("absent"),
            ..devkit.options(Split::Train)
        };
        let error = KittiSource::new(missing).unwrap_err();
        assert!(error.starts_with("--images "), "{error}");
        assert!(error.contains("absent"), "{error}");
    }
}
