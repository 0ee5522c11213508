//! Evaluation reports: the metrics as JSON, charts as PNG and SVG, example overlays as PNG,
//! and a Markdown and an HTML page presenting them.
//!
//! [`write_report`] lays a report directory out as
//!
//! ```text
//! eval.json              the EvalReport, pretty-printed
//! report.md              Markdown
//! report.html            HTML with inline CSS
//! ap50_per_class.png     bar chart of AP@0.5 per class        (when detection was evaluated)
//! pr_curves.png          precision-recall curves at IoU 0.5   (when detection was evaluated)
//! ap50_per_class.svg,    the same charts as SVG
//! pr_curves.svg
//! examples/000-<id>.png  example overlays, in evaluation order
//! ```
//!
//! The Markdown and HTML pages are rendered from one list of [`Block`]s, so they say the same
//! things, and reference the images by relative path (the directory can be moved whole). The
//! HTML page shows the SVG charts (each linking to its PNG); the Markdown page the PNGs.
//! Every file is written atomically ([`percept_data::atomic_file`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::chart::{bar_chart, line_chart, readable_on_white, Bar, ChartImage, Series};
use crate::eval::{
    ClassMatch, ClassMatchKind, DetectionReport, EvalReport, Evaluation, MetricResolution,
    SegmentationReport,
};
use crate::overlay::class_color;
use crate::EvalError;
use percept_data::{save_png_atomic, write_atomic};

/// The metrics as JSON.
pub const JSON_FILE: &str = "eval.json";
/// The Markdown report.
pub const MARKDOWN_FILE: &str = "report.md";
/// The HTML report.
pub const HTML_FILE: &str = "report.html";
/// Bar chart of AP@0.5 per class.
pub const AP_CHART_FILE: &str = "ap50_per_class.png";
/// Precision-recall curves at IoU 0.5, one per class with ground truth.
pub const PR_CHART_FILE: &str = "pr_curves.png";
/// [`AP_CHART_FILE`] as SVG.
pub const AP_CHART_SVG: &str = "ap50_per_class.svg";
/// [`PR_CHART_FILE`] as SVG.
pub const PR_CHART_SVG: &str = "pr_curves.svg";
/// Directory of the example overlays.
pub const EXAMPLES_DIR: &str = "examples";

/// Longest sample id kept in an example's file name (the rest is cut).
const MAX_ID_CHARS: usize = 80;
/// Example images per row of the Markdown table.
const MARKDOWN_GALLERY_COLUMNS: usize = 3;

/// The files [`write_report`] wrote, as paths under `dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub dir: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
    /// [`AP_CHART_FILE`] and [`PR_CHART_FILE`]; empty when detection was not evaluated.
    pub charts: Vec<PathBuf>,
    /// The same charts as SVG: [`AP_CHART_SVG`] and [`PR_CHART_SVG`]; empty when detection
    /// was not evaluated.
    pub chart_svgs: Vec<PathBuf>,
    /// One overlay per example, in evaluation order.
    pub examples: Vec<PathBuf>,
}

/// Writes the report of `evaluation` into `dir` (created if need be), with `title` as its
/// heading. Files of an earlier report in `dir` are replaced, except examples whose names
/// are not reused.
///
/// Errors: [`EvalError::Io`] naming `dir` when it cannot be created (for instance, it is a
/// regular file), or naming the file that could not be written.
pub fn write_report(
    evaluation: &Evaluation,
    dir: &Path,
    title: &str,
) -> Result<ReportFiles, EvalError> {
    std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let report = &evaluation.report;

    let json = dir.join(JSON_FILE);
    let bytes = serde_json::to_vec_pretty(report).map_err(|e| EvalError::Io {
        path: json.clone(),
        source: e.into(),
    })?;
    write_atomic(&json, &bytes)?;

    let (mut charts, mut chart_svgs) = (Vec::new(), Vec::new());
    if let Some(detection) = &report.detection {
        for (chart, png, svg) in [
            (ap_chart(detection)?, AP_CHART_FILE, AP_CHART_SVG),
            (pr_chart(detection)?, PR_CHART_FILE, PR_CHART_SVG),
        ] {
            let (png, svg) = (dir.join(png), dir.join(svg));
            chart.save_as(&png, &svg)?;
            charts.push(png);
            chart_svgs.push(svg);
        }
    }

    let ids: Vec<&str> = evaluation.examples.iter().map(|e| e.id.as_str()).collect();
    let example_names = example_file_names(&ids);
    let mut examples = Vec::with_capacity(example_names.len());
    for (example, name) in evaluation.examples.iter().zip(&example_names) {
        let path = dir.join(name);
        save_png_atomic(&example.overlay, &path)?;
        examples.push(path);
    }

    let gallery: Vec<Figure> = ids
        .iter()
        .zip(example_names)
        .map(|(id, src)| Figure {
            src,
            caption: id.to_string(),
        })
        .collect();
    let blocks = blocks(report, title, gallery);
    let markdown = dir.join(MARKDOWN_FILE);
    write_atomic(&markdown, to_markdown(&blocks).as_bytes())?;
    let html = dir.join(HTML_FILE);
    write_atomic(&html, to_html(title, &blocks).as_bytes())?;

    Ok(ReportFiles {
        dir: dir.to_path_buf(),
        markdown,
        html,
        json,
        charts,
        chart_svgs,
        examples,
    })
}

/// The name of class `class`, or `#<index>` when the report has none.
fn class_name(detection: &DetectionReport, class: u16) -> String {
    detection
        .classes
        .get(usize::from(class))
        .cloned()
        .unwrap_or_else(|| format!("#{class}"))
}

/// Bar chart of AP@0.5 per class, in the classes' overlay colours.
fn ap_chart(detection: &DetectionReport) -> Result<ChartImage, EvalError> {
    let bars: Vec<Bar> = detection
        .metrics
        .per_class
        .iter()
        .map(|c| Bar {
            label: class_name(detection, c.class),
            value: c.ap50,
            color: class_color(c.class),
        })
        .collect();
    bar_chart("AP@0.5 per class", "AP@0.5", &bars)
}

/// Precision against recall at IoU 0.5 for each class with ground truth.
fn pr_chart(detection: &DetectionReport) -> Result<ChartImage, EvalError> {
    let series: Vec<Series> = detection
        .metrics
        .per_class
        .iter()
        .filter(|c| c.num_gt > 0 && !c.precision50.is_empty())
        .map(|c| {
            // Recall k / 100 for the usual 101 points.
            let last = (c.precision50.len() - 1).max(1) as f64;
            Series {
                name: class_name(detection, c.class),
                color: readable_on_white(class_color(c.class)),
                points: (0u32..)
                    .zip(&c.precision50)
                    .map(|(k, &p)| (f64::from(k) / last, p))
                    .collect(),
            }
        })
        .collect();
    line_chart(
        "Precision-recall at IoU 0.5",
        "recall",
        "precision",
        &series,
    )
}

/// The relative paths of the example overlays: `examples/<index>-<id>.png`, the index
/// zero-padded (at least 3 digits) so names sort in evaluation order and are unique, the id
/// with every character outside `[A-Za-z0-9._-]` replaced by `_` and cut at
/// [`MAX_ID_CHARS`].
fn example_file_names(ids: &[&str]) -> Vec<String> {
    let digits = ids.len().saturating_sub(1).to_string().len().max(3);
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let mut safe: String = id
                .chars()
                .take(MAX_ID_CHARS)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if safe.is_empty() {
                safe.push_str("example");
            }
            format!("{EXAMPLES_DIR}/{i:0digits$}-{safe}.png")
        })
        .collect()
}

/// One piece of a report, as plain text (renderers escape it).
#[derive(Debug, Clone, PartialEq)]
enum Block {
    /// A heading of level 1 (the title) or 2 (a section).
    Heading(u8, String),
    Paragraph(String),
    Table(Table),
    /// An image, by path relative to the report; the HTML page shows `svg` where there is
    /// one, linking to `src`.
    Image {
        src: String,
        svg: Option<String>,
        alt: String,
    },
    /// Example images with captions.
    Gallery(Vec<Figure>),
}

#[derive(Debug, Clone, PartialEq)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    /// Leading columns of text (left-aligned); the rest are numbers (right-aligned).
    text_columns: usize,
}

#[derive(Debug, Clone, PartialEq)]
struct Figure {
    src: String,
    caption: String,
}

/// A value to 3 decimals.
fn num(v: f64) -> String {
    format!("{v:.3}")
}

/// A value to 3 decimals, or `-`.
fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), num)
}

fn strings<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.map(str::to_string).to_vec()
}

/// The sentence saying where metrics were computed.
fn resolution_sentence(report: &EvalReport) -> String {
    match report.resolution {
        MetricResolution::Original => "Metrics computed at the original image resolution \
                                       (predictions mapped back out of the letterbox)."
            .to_string(),
        MetricResolution::Network => format!(
            "Metrics computed at network resolution {}x{} on letterboxed inputs and labels.",
            report.input[0], report.input[1]
        ),
    }
}

/// The report's content.
fn blocks(report: &EvalReport, title: &str, gallery: Vec<Figure>) -> Vec<Block> {
    let mut b = vec![
        Block::Heading(1, title.to_string()),
        Block::Paragraph(format!(
            "{} image{} evaluated. {}",
            report.images,
            if report.images == 1 { "" } else { "s" },
            resolution_sentence(report)
        )),
    ];
    if let Some(m) = &report.class_match {
        class_match_blocks(m, &mut b);
    }
    b.push(Block::Heading(2, "Detection".to_string()));
    match &report.detection {
        Some(d) => detection_blocks(d, &mut b),
        None => b.push(not_evaluated("Detection was")),
    }
    b.push(Block::Heading(2, "Drivable area".to_string()));
    match &report.drivable {
        Some(r) => segmentation_blocks(r, false, &mut b),
        None => b.push(not_evaluated("Drivable area was")),
    }
    b.push(Block::Heading(2, "Lane lines".to_string()));
    match &report.lanes {
        Some(r) => segmentation_blocks(r, true, &mut b),
        None => b.push(not_evaluated("Lane lines were")),
    }
    b.push(Block::Heading(2, "By condition".to_string()));
    if report.slices.is_empty() {
        b.push(Block::Paragraph("No condition slices.".to_string()));
    } else {
        b.push(Block::Table(Table {
            header: strings([
                "key",
                "value",
                "images",
                "mAP@0.5",
                "AP@.5:.95",
                "drivable mIoU",
                "lane IoU",
            ]),
            rows: report
                .slices
                .iter()
                .map(|s| {
                    vec![
                        s.key.clone(),
                        s.value.clone(),
                        s.images.to_string(),
                        opt(s.map50),
                        opt(s.map50_95),
                        opt(s.drivable_miou),
                        opt(s.lane_iou),
                    ]
                })
                .collect(),
            text_columns: 2,
        }));
        b.push(Block::Paragraph(
            "`-` means the task is not evaluated or, for AP, no image of the slice has a box."
                .to_string(),
        ));
    }
    b.push(Block::Heading(2, "Examples".to_string()));
    if gallery.is_empty() {
        b.push(Block::Paragraph("No example images.".to_string()));
    } else {
        b.push(Block::Gallery(gallery));
    }
    b
}

/// Which dataset classes were scored as which model class, when the lists differ.
fn class_match_blocks(m: &ClassMatch, b: &mut Vec<Block>) {
    b.push(Block::Heading(2, "Classes scored".to_string()));
    b.push(Block::Paragraph(
        match m.how {
            ClassMatchKind::FinetuneMapping => {
                "The model's classes differ from the dataset's: the dataset has the global \
                 classes the model was fine-tuned from, and its boxes are relabelled through \
                 the model's fine-tune class mapping."
            }
            ClassMatchKind::Name => {
                "The model's classes differ from the dataset's: classes are matched by name."
            }
        }
        .to_string(),
    ));
    let mut rows: Vec<Vec<String>> = m
        .scored
        .iter()
        .map(|c| vec![c.class.clone(), c.from.join(" + ")])
        .collect();
    rows.extend(
        m.unscored
            .iter()
            .map(|c| vec![c.clone(), "not in the dataset: no AP".to_string()]),
    );
    rows.extend(m.dropped.iter().map(|d| {
        vec![
            "dropped: the model has no such class".to_string(),
            d.clone(),
        ]
    }));
    b.push(Block::Table(Table {
        header: strings(["model class", "dataset classes scored as it"]),
        rows,
        text_columns: 2,
    }));
}

fn not_evaluated(subject: &str) -> Block {
    Block::Paragraph(format!(
        "{subject} not evaluated (the model lacks the task or the dataset does not label it)."
    ))
}

fn detection_blocks(d: &DetectionReport, b: &mut Vec<Block>) {
    let m = &d.metrics;
    let mut rows: Vec<Vec<String>> = m
        .per_class
        .iter()
        .map(|c| {
            vec![
                class_name(d, c.class),
                opt(c.ap50),
                opt(c.ap50_95),
                opt(c.recall50),
                c.num_gt.to_string(),
                c.num_det.to_string(),
            ]
        })
        .collect();
    rows.push(vec![
        "mAP".to_string(),
        num(m.map50),
        num(m.map50_95),
        String::new(),
        String::new(),
        String::new(),
    ]);
    if let Some(v) = d.vehicle_ap50 {
        rows.push(vec![
            "vehicles (car/truck/bus)".to_string(),
            num(v),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    let total_gt: u64 = m.per_class.iter().map(|c| c.num_gt).sum();
    let threshold = d.operating_threshold;
    rows.push(vec![
        format!("all classes at score >= {threshold}"),
        String::new(),
        String::new(),
        num(d.recall50_at_threshold),
        total_gt.to_string(),
        String::new(),
    ]);
    b.push(Block::Table(Table {
        header: strings([
            "class",
            "AP@0.5",
            "AP@.5:.95",
            "recall@0.5",
            "GT",
            "detections",
        ]),
        rows,
        text_columns: 1,
    }));
    b.push(Block::Paragraph(format!(
        "AP is COCO-style (101-point interpolated); mAP is the mean over classes with ground \
         truth. Recall@0.5 counts the detections at the operating score threshold \
         {threshold}, per class and (last row) over all classes; AP and the detection \
         counts rank every detection down to score 0.001."
    )));
    b.push(Block::Image {
        src: AP_CHART_FILE.to_string(),
        svg: Some(AP_CHART_SVG.to_string()),
        alt: "AP@0.5 per class".to_string(),
    });
    b.push(Block::Image {
        src: PR_CHART_FILE.to_string(),
        svg: Some(PR_CHART_SVG.to_string()),
        alt: "Precision-recall curves at IoU 0.5".to_string(),
    });
}

fn segmentation_blocks(r: &SegmentationReport, lanes: bool, b: &mut Vec<Block>) {
    let (recall, balanced) = if lanes {
        (
            "lane pixel recall TP/(TP+FN) (YOLOP's lane accuracy)",
            "balanced accuracy (TPR+TNR)/2 (HybridNets' lane accuracy)",
        )
    } else {
        ("pixel recall TP/(TP+FN)", "balanced accuracy (TPR+TNR)/2")
    };
    b.push(Block::Table(Table {
        header: strings(["metric", "value"]),
        rows: vec![
            vec!["IoU".to_string(), num(r.iou)],
            vec![
                "mIoU (mean of background and foreground IoU)".to_string(),
                num(r.miou),
            ],
            vec![recall.to_string(), num(r.pixel_recall)],
            vec![balanced.to_string(), num(r.balanced_accuracy)],
        ],
        text_columns: 1,
    }));
    b.push(Block::Paragraph("Pixel confusion matrix:".to_string()));
    let [[tn, fp], [fn_, tp]] = r.confusion;
    b.push(Block::Table(Table {
        header: strings(["", "predicted: background", "predicted: foreground"]),
        rows: vec![
            vec![
                "label: background".to_string(),
                tn.to_string(),
                fp.to_string(),
            ],
            vec![
                "label: foreground".to_string(),
                fn_.to_string(),
                tp.to_string(),
            ],
        ],
        text_columns: 1,
    }));
}

/// `text` with Markdown's special characters backslash-escaped and line breaks made spaces,
/// so it renders literally (also inside a table cell). `<` is escaped, so no HTML tag can
/// form; `>` only matters at the start of a line, where no escaped text is put.
pub(crate) fn escape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '|' | '#' | '!' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// `text` with HTML's special characters escaped.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Renders paragraph text as Markdown, backtick-quoted parts as code spans. (Paragraphs
/// hold the report's own sentences, never sample ids or class names.)
fn markdown_paragraph(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("`{part}`")
            } else {
                escape_markdown(part)
            }
        })
        .collect()
}

/// Renders paragraph text as HTML, backtick-quoted parts as `<code>`.
fn html_paragraph(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{}</code>", escape_html(part))
            } else {
                escape_html(part)
            }
        })
        .collect()
}

fn to_markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let marks = "#".repeat(usize::from(*level));
                let _ = writeln!(s, "{marks} {}\n", escape_markdown(text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(s, "{}\n", markdown_paragraph(text));
            }
            Block::Table(t) => {
                let row = |cells: &[String]| {
                    let cells: Vec<String> = cells.iter().map(|c| escape_markdown(c)).collect();
                    format!("| {} |", cells.join(" | "))
                };
                let _ = writeln!(s, "{}", row(&t.header));
                let align: Vec<&str> = (0..t.header.len())
                    .map(|i| if i < t.text_columns { ":--" } else { "--:" })
                    .collect();
                let _ = writeln!(s, "| {} |", align.join(" | "));
                for r in &t.rows {
                    let _ = writeln!(s, "{}", row(r));
                }
                s.push('\n');
            }
            Block::Image { src, alt, .. } => {
                let _ = writeln!(s, "![{}]({src})\n", escape_markdown(alt));
            }
            Block::Gallery(figures) => {
                let n = MARKDOWN_GALLERY_COLUMNS;
                let _ = writeln!(s, "|{}", " |".repeat(n));
                let _ = writeln!(s, "|{}", " --- |".repeat(n));
                for chunk in figures.chunks(n) {
                    let mut cells: Vec<String> = chunk
                        .iter()
                        .map(|f| {
                            let caption = escape_markdown(&f.caption);
                            format!("![{caption}]({})<br>{caption}", f.src)
                        })
                        .collect();
                    cells.resize(n, String::new());
                    let _ = writeln!(s, "| {} |", cells.join(" | "));
                }
                s.push('\n');
            }
        }
    }
    s
}

const CSS: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; \
max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; \
border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); \
gap: 1em; }
figure { margin: 0; }
figcaption { font-family: monospace; font-size: 0.85em; word-break: break-all; }
";

fn to_html(title: &str, blocks: &[Block]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>",
        escape_html(title)
    );
    for block in blocks {
        match block {
            Block::Heading(level, text) => {
                let _ = writeln!(s, "<h{level}>{}</h{level}>", escape_html(text));
            }
            Block::Paragraph(text) => {
                let _ = writeln!(s, "<p>{}</p>", html_paragraph(text));
            }
            Block::Table(t) => {
                let class = |i: usize| {
                    if i < t.text_columns {
                        ""
                    } else {
                        " class=\"num\""
                    }
                };
                s.push_str("<table>\n<tr>");
                for (i, h) in t.header.iter().enumerate() {
                    let _ = write!(s, "<th{}>{}</th>", class(i), escape_html(h));
                }
                s.push_str("</tr>\n");
                for r in &t.rows {
                    s.push_str("<tr>");
                    for (i, c) in r.iter().enumerate() {
                        let _ = write!(s, "<td{}>{}</td>", class(i), escape_html(c));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
            Block::Image { src, svg, alt } => {
                let (src, alt) = (escape_html(src), escape_html(alt));
                let _ = match svg {
                    Some(svg) => writeln!(
                        s,
                        "<p><a href=\"{src}\"><img src=\"{}\" alt=\"{alt}\"></a></p>",
                        escape_html(svg)
                    ),
                    None => writeln!(s, "<p><img src=\"{src}\" alt=\"{alt}\"></p>"),
                };
            }
            Block::Gallery(figures) => {
                s.push_str("<div class=\"gallery\">\n");
                for f in figures {
                    let caption = escape_html(&f.caption);
                    let _ = writeln!(
                        s,
                        "<figure><img src=\"{}\" alt=\"{caption}\" loading=\"lazy\">\
                         <figcaption>{caption}</figcaption></figure>",
                        escape_html(&f.src)
                    );
                }
                s.push_str("</div>\n");
            }
        }
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;
    use crate::chart::{bar_chart_width, CHART_HEIGHT, LINE_CHART_WIDTH};
    use crate::eval::{ExampleImage, SliceReport};
    use crate::metrics::{ClassAp, DetectionMetrics};

    fn class_ap(class: u16, ap: (f64, f64), counts: (u64, u64), recall: f64) -> ClassAp {
        ClassAp {
            class,
            ap50: Some(ap.0),
            ap50_95: Some(ap.1),
            num_gt: counts.0,
            num_det: counts.1,
            recall50: Some(recall),
            // Precision falling from 1 to 0 as recall rises to `recall`, then 0.
            precision50: (0..=100)
                .map(|k| (1.0 - f64::from(k) / 100.0 / recall).max(0.0))
                .collect(),
        }
    }

    fn segmentation(iou: f64, confusion: [[u64; 2]; 2]) -> SegmentationReport {
        SegmentationReport {
            iou,
            miou: iou - 0.05,
            pixel_recall: 0.95,
            balanced_accuracy: 0.875,
            confusion,
        }
    }

    fn evaluation(detection: bool, resolution: MetricResolution) -> Evaluation {
        let detection = detection.then(|| DetectionReport {
            classes: vec!["car".to_string(), "traffic light".to_string()],
            metrics: DetectionMetrics {
                per_class: vec![
                    class_ap(0, (0.75, 0.5), (10, 12), 0.8),
                    class_ap(1, (0.25, 0.2), (4, 9), 0.5),
                ],
                map50: 0.5,
                map50_95: 0.35,
            },
            recall50_at_threshold: 0.625,
            operating_threshold: 0.25,
            vehicle_ap50: Some(0.75),
        });
        let slice = |key: &str, value: &str, images, map50| SliceReport {
            key: key.to_string(),
            value: value.to_string(),
            images,
            map50,
            map50_95: map50.map(|v| v / 2.0),
            drivable_miou: Some(0.8),
            lane_iou: Some(0.3),
        };
        let example = |id: &str, shade: u8| ExampleImage {
            id: id.to_string(),
            overlay: RgbImage::from_pixel(16, 12, Rgb([shade, 0, 0])),
        };
        Evaluation {
            report: EvalReport {
                images: 2,
                resolution,
                input: [640, 384],
                detection,
                drivable: Some(segmentation(0.9, [[100, 5], [3, 50]])),
                lanes: Some(segmentation(0.3, [[1000, 20], [10, 30]])),
                slices: vec![
                    slice("region", "us-west", 2, Some(0.5)),
                    slice("weather", "clear", 1, None),
                ],
                class_match: None,
            },
            examples: vec![example("frames/a<b>.jpg", 10), example("plain-id", 20)],
        }
    }

    #[test]
    fn writes_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("report");
        let ev = evaluation(true, MetricResolution::Network);
        let files = write_report(&ev, &dir, "Run <1> & co").unwrap();
        assert_eq!(files.dir, dir);
        assert_eq!(
            files.charts,
            [dir.join("ap50_per_class.png"), dir.join("pr_curves.png")]
        );
        assert_eq!(
            files.chart_svgs,
            [dir.join("ap50_per_class.svg"), dir.join("pr_curves.svg")]
        );
        for (svg, title) in files
            .chart_svgs
            .iter()
            .zip(["AP@0.5 per class", "Precision-recall"])
        {
            let svg = std::fs::read_to_string(svg).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains(title), "{svg}");
        }
        // A bar per class; a curve per class with ground truth.
        let svg = std::fs::read_to_string(&files.chart_svgs[1]).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(
            files.examples,
            [
                dir.join("examples/000-frames_a_b_.jpg.png"),
                dir.join("examples/001-plain-id.png")
            ]
        );
        for path in [&files.markdown, &files.html, &files.json]
            .into_iter()
            .chain(&files.charts)
            .chain(&files.chart_svgs)
            .chain(&files.examples)
        {
            assert!(path.is_file(), "{}", path.display());
        }
        let size = |p: &Path| image::open(p).unwrap().to_rgb8().dimensions();
        assert_eq!(size(&files.charts[0]), (bar_chart_width(2), CHART_HEIGHT));
        assert_eq!(size(&files.charts[1]), (LINE_CHART_WIDTH, CHART_HEIGHT));
        let example = image::open(&files.examples[1]).unwrap().to_rgb8();
        assert_eq!(example, ev.examples[1].overlay);

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&files.json).unwrap()).unwrap();
        assert_eq!(json["detection"]["metrics"]["map50"].as_f64(), Some(0.5));
        assert_eq!(json["resolution"], "network");

        let md = std::fs::read_to_string(&files.markdown).unwrap();
        for line in [
            "# Run \\<1> \\& co",
            "2 images evaluated. Metrics computed at network resolution 640x384 on \
             letterboxed inputs and labels.",
            "| class | AP@0.5 | AP@.5:.95 | recall@0.5 | GT | detections |",
            "| car | 0.750 | 0.500 | 0.800 | 10 | 12 |",
            "| traffic light | 0.250 | 0.200 | 0.500 | 4 | 9 |",
            "| mAP | 0.500 | 0.350 |  |  |  |",
            "| vehicles (car/truck/bus) | 0.750 |  |  |  |  |",
            "| all classes at score >= 0.25 |  |  | 0.625 | 14 |  |",
            "![AP@0.5 per class](ap50_per_class.png)",
            "](pr_curves.png)",
            "| IoU | 0.900 |",
            "| lane pixel recall TP/(TP+FN) (YOLOP's lane accuracy) | 0.950 |",
            "| balanced accuracy (TPR+TNR)/2 (HybridNets' lane accuracy) | 0.875 |",
            "|  | predicted: background | predicted: foreground |",
            "| label: background | 100 | 5 |",
            "| label: foreground | 3 | 50 |",
            "| label: foreground | 10 | 30 |",
            "| region | us-west | 2 | 0.500 | 0.250 | 0.800 | 0.300 |",
            "| weather | clear | 1 | - | - | 0.800 | 0.300 |",
            "![frames/a\\<b>.jpg](examples/000-frames_a_b_.jpg.png)<br>frames/a\\<b>.jpg",
            "](examples/001-plain-id.png)",
        ] {
            assert!(md.contains(line), "report.md lacks {line:?}:\n{md}");
        }
        assert!(!md.contains("was not evaluated") && !md.contains("were not evaluated"));

        let html = std::fs::read_to_string(&files.html).unwrap();
        assert!(html.contains("<title>Run &lt;1&gt; &amp; co</title>"));
        assert!(html.contains("<figcaption>frames/a&lt;b&gt;.jpg</figcaption>"));
        assert!(!html.contains("a<b"));
        for src in [
            "ap50_per_class.svg",
            "pr_curves.svg",
            "examples/000-frames_a_b_.jpg.png",
            "examples/001-plain-id.png",
        ] {
            assert!(html.contains(&format!("src=\"{src}\"")), "{src}");
        }
        assert!(html.contains("<a href=\"pr_curves.png\"><img src=\"pr_curves.svg\""));
        assert!(html.contains("<td class=\"num\">0.750</td>"));
        assert!(html.contains("network resolution 640x384"));
        assert!(html.contains("(YOLOP&#39;s lane accuracy)"));
    }

    #[test]
    fn untested_tasks_are_said_so_and_have_no_charts() {
        let tmp = tempfile::tempdir().unwrap();
        let mut ev = evaluation(false, MetricResolution::Original);
        ev.report.lanes = None;
        ev.examples.clear();
        let files = write_report(&ev, tmp.path(), "t").unwrap();
        assert!(files.charts.is_empty() && files.chart_svgs.is_empty());
        assert!(files.examples.is_empty());
        assert!(!tmp.path().join(AP_CHART_SVG).exists());
        assert!(!tmp.path().join(AP_CHART_FILE).exists());
        assert!(!tmp.path().join(PR_CHART_FILE).exists());
        assert!(!tmp.path().join(EXAMPLES_DIR).exists());
        let md = std::fs::read_to_string(&files.markdown).unwrap();
        let html = std::fs::read_to_string(&files.html).unwrap();
        for text in [&md, &html] {
            assert!(text.contains("Detection was not evaluated"));
            assert!(text.contains("Lane lines were not evaluated"));
            assert!(text.contains(
                "Metrics computed at the original image resolution (predictions mapped back \
                 out of the letterbox)."
            ));
            assert!(!text.contains(".png") && !text.contains(".svg"));
            assert!(text.contains("No example images."));
        }
        // Drivable area is still reported.
        assert!(md.contains("| IoU | 0.900 |"));
        assert!(md.contains("| pixel recall TP/(TP+FN) | 0.950 |"));
    }

    #[test]
    fn a_file_in_the_way_is_an_io_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("taken");
        std::fs::write(&file, b"x").unwrap();
        let ev = evaluation(true, MetricResolution::Network);
        match write_report(&ev, &file, "t") {
            Err(EvalError::Io { path, .. }) => assert_eq!(path, file),
            other => panic!("expected an Io error, got {other:?}"),
        }
    }

    #[test]
    fn a_class_match_is_shown_class_by_class() {
        let mut ev = evaluation(true, MetricResolution::Network);
        ev.report.class_match = Some(ClassMatch {
            how: ClassMatchKind::FinetuneMapping,
            model_classes: vec!["car".into(), "heavy vehicle".into(), "tuk".into()],
            dataset_classes: vec!["car".into(), "truck".into(), "bus".into(), "dog".into()],
            relabel: vec![Some(0), Some(1), Some(1), None],
            scored: vec![
                crate::eval::ScoredClass {
                    class: "car".into(),
                    from: vec!["car".into()],
                },
                crate::eval::ScoredClass {
                    class: "heavy vehicle".into(),
                    from: vec!["truck".into(), "bus".into()],
                },
            ],
            dropped: vec!["dog".into()],
            unscored: vec!["tuk".into()],
        });
        let md = to_markdown(&blocks(&ev.report, "t", Vec::new()));
        for want in [
            "## Classes scored\n",
            "its boxes are relabelled through the model's fine-tune class mapping",
            "| model class | dataset classes scored as it |\n| :-- | :-- |\n| car | car |\n\
             | heavy vehicle | truck + bus |\n| tuk | not in the dataset: no AP |\n\
             | dropped: the model has no such class | dog |\n",
        ] {
            assert!(md.contains(want), "{want:?} not in:\n{md}");
        }
        // Before the detection section; absent when the lists are the same.
        assert!(md.find("## Classes scored") < md.find("## Detection"));
        ev.report.class_match = None;
        let md = to_markdown(&blocks(&ev.report, "t", Vec::new()));
        assert!(!md.contains("Classes scored"), "{md}");
    }

    #[test]
    fn example_names_are_safe_ordered_and_unique() {
        let long = "x".repeat(200);
        let names = example_file_names(&["a/b", "a/b", "", "é ok", &long]);
        assert_eq!(
            names[..4],
            [
                "examples/000-a_b.png",
                "examples/001-a_b.png",
                "examples/002-example.png",
                "examples/003-__ok.png",
            ]
        );
        assert_eq!(names[4], format!("examples/004-{}.png", "x".repeat(80)));
        let many: Vec<&str> = vec!["id"; 1001];
        let names = example_file_names(&many);
        assert_eq!(names[0], "examples/0000-id.png");
        assert_eq!(names[1000], "examples/1000-id.png");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape_html(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape_markdown("a|b_c\n*d*"), "a\\|b\\_c \\*d\\*");
        assert_eq!(markdown_paragraph("`-`: a_b"), "`-`: a\\_b");
        assert_eq!(html_paragraph("`<`: a"), "<code>&lt;</code>: a");
    }
}
