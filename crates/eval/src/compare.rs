//! Evaluations side by side (`percept compare`): two or more [`EvalReport`]s (each
//! `percept eval`'s `eval.json`) joined into one table, the first report the reference.
//!
//! Rows are the task metrics (mAP@0.5, mAP@.5:.95, vehicle AP@0.5, recall, drivable-area
//! and lane-line IoU) and then AP@0.5 per class; columns are the reports, then each later
//! report's difference from the first. Classes are matched by name: a class one report lacks
//! (or has no ground truth for, so no AP) shows `–`, and so does its difference. A metric no
//! report has (a task none evaluated) has no row.
//!
//! [`write_comparison`] lays a directory out as
//!
//! ```text
//! compare.json                 the Comparison
//! compare.md                   Markdown: the reports, the table, the chart
//! compare.html                 the same as HTML
//! ap50_per_class_compare.png   AP@0.5 per class, one bar per report, grouped by class
//! ap50_per_class_compare.svg   the same chart as SVG
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use image::Rgb;
use serde::{Deserialize, Serialize};

use crate::chart::{bar_chart, Bar};
use crate::eval::{EvalReport, Evaluation};
use crate::report::{escape_html, escape_markdown};
use crate::EvalError;
use percept_data::write_atomic;

/// The comparison as JSON.
pub const COMPARE_JSON: &str = "compare.json";
/// The Markdown page.
pub const COMPARE_MARKDOWN: &str = "compare.md";
/// The HTML page.
pub const COMPARE_HTML: &str = "compare.html";
/// File stem of the grouped per-class AP@0.5 chart (`.png` and `.svg`).
pub const COMPARE_CHART_STEM: &str = "ap50_per_class_compare";

/// Shown for a value a report does not have.
pub const MISSING: &str = "–";

/// Bar colours of the reports in the chart, in order (then repeated).
const REPORT_COLORS: [Rgb<u8>; 6] = [
    Rgb([31, 119, 180]),
    Rgb([255, 127, 14]),
    Rgb([44, 160, 44]),
    Rgb([214, 39, 40]),
    Rgb([148, 103, 189]),
    Rgb([140, 86, 75]),
];

impl AsRef<EvalReport> for Evaluation {
    fn as_ref(&self) -> &EvalReport {
        &self.report
    }
}

impl AsRef<EvalReport> for EvalReport {
    fn as_ref(&self) -> &EvalReport {
        self
    }
}

/// Which part of the table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    /// A task metric.
    Task,
    /// AP@0.5 of one class.
    Class,
}

/// One row: a metric of every report, and each later report's difference from the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub kind: RowKind,
    /// What is measured: `mAP@0.5`, ..., or `AP@0.5 <class>`.
    pub metric: String,
    /// The class of a [`RowKind::Class`] row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// One per report; `None`: the report has no such value.
    pub values: Vec<Option<f64>>,
    /// One per report after the first: its value minus the first's; `None` when either is.
    pub differences: Vec<Option<f64>>,
}

/// One report's summary: its label, images and where metrics were computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparedReport {
    pub label: String,
    pub images: usize,
    /// [`EvalReport::resolution_note`].
    pub resolution: String,
    /// How the dataset's classes were scored against the model's, when they differed
    /// ([`crate::eval::ClassMatch::describe`]); empty when the lists were the same.
    pub class_match: Vec<String>,
}

/// Two or more evaluations side by side; the first is the reference of the differences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub reports: Vec<ComparedReport>,
    /// Every class of any report, by name: the first report's in its order, then each later
    /// report's new ones in theirs.
    pub classes: Vec<String>,
    /// Task rows, then one class row per class.
    pub rows: Vec<ComparisonRow>,
}

/// The task metrics compared, as (row name, value of a report).
type TaskMetric = (&'static str, fn(&EvalReport) -> Option<f64>);

const TASK_METRICS: [TaskMetric; 9] = [
    ("mAP@0.5", |r| r.detection.as_ref().map(|d| d.metrics.map50)),
    ("mAP@.5:.95", |r| {
        r.detection.as_ref().map(|d| d.metrics.map50_95)
    }),
    ("vehicle AP@0.5 (car/truck/bus)", |r| {
        r.detection.as_ref().and_then(|d| d.vehicle_ap50)
    }),
    ("recall@0.5 at the operating threshold", |r| {
        r.detection.as_ref().map(|d| d.recall50_at_threshold)
    }),
    ("drivable mIoU", |r| r.drivable.as_ref().map(|s| s.miou)),
    ("drivable IoU", |r| r.drivable.as_ref().map(|s| s.iou)),
    ("lane IoU", |r| r.lanes.as_ref().map(|s| s.iou)),
    ("lane pixel recall", |r| {
        r.lanes.as_ref().map(|s| s.pixel_recall)
    }),
    ("lane balanced accuracy", |r| {
        r.lanes.as_ref().map(|s| s.balanced_accuracy)
    }),
];

/// AP@0.5 of the class named `class` in `report`: `None` when the report has no such class,
/// did not evaluate detection, or saw no ground truth of it.
fn class_ap50(report: &EvalReport, class: &str) -> Option<f64> {
    let d = report.detection.as_ref()?;
    let index = d.classes.iter().position(|c| c == class)?;
    d.metrics
        .per_class
        .iter()
        .find(|c| usize::from(c.class) == index)
        .and_then(|c| c.ap50)
}

fn row(
    kind: RowKind,
    metric: String,
    class: Option<String>,
    values: Vec<Option<f64>>,
) -> ComparisonRow {
    let first = values.first().copied().flatten();
    let differences = values
        .iter()
        .skip(1)
        .map(|v| Some(v.as_ref()? - first?))
        .collect();
    ComparisonRow {
        kind,
        metric,
        class,
        values,
        differences,
    }
}

/// Joins `reports` (label, report) into one table, the first the reference of the
/// differences. Accepts [`EvalReport`]s, [`Evaluation`]s or references to either.
pub fn compare_reports<R: AsRef<EvalReport>>(reports: &[(String, R)]) -> Comparison {
    let all: Vec<(&str, &EvalReport)> = reports
        .iter()
        .map(|(label, r)| (label.as_str(), r.as_ref()))
        .collect();
    let mut rows = Vec::new();
    for (name, value) in TASK_METRICS {
        let values: Vec<Option<f64>> = all.iter().map(|(_, r)| value(r)).collect();
        if values.iter().any(Option::is_some) {
            rows.push(row(RowKind::Task, name.to_string(), None, values));
        }
    }
    let mut classes: Vec<String> = Vec::new();
    for (_, r) in &all {
        for c in r.detection.iter().flat_map(|d| &d.classes) {
            if !classes.contains(c) {
                classes.push(c.clone());
            }
        }
    }
    for class in &classes {
        let values = all.iter().map(|(_, r)| class_ap50(r, class)).collect();
        rows.push(row(
            RowKind::Class,
            format!("AP@0.5 {class}"),
            Some(class.clone()),
            values,
        ));
    }
    Comparison {
        reports: all
            .iter()
            .map(|(label, r)| ComparedReport {
                label: label.to_string(),
                images: r.images,
                resolution: r.resolution_note(),
                class_match: r
                    .class_match
                    .as_ref()
                    .map(|m| m.describe())
                    .unwrap_or_default(),
            })
            .collect(),
        classes,
        rows,
    }
}

/// Reads an `eval.json` written by `percept eval`; anything else is refused naming the file.
pub fn read_eval_report(path: &Path) -> Result<EvalReport, EvalError> {
    let io = |source: std::io::Error| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    serde_json::from_str(&text).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an evaluation report (the eval.json of `percept eval --out` or \
                 `--report`): {e}"
            ),
        ))
    })
}

/// A value to 3 decimals, or [`MISSING`].
fn value_text(v: Option<f64>) -> String {
    v.map_or_else(|| MISSING.to_string(), |v| format!("{v:.3}"))
}

/// A difference to 3 decimals with its sign, or [`MISSING`].
fn difference_text(v: Option<f64>) -> String {
    v.map_or_else(
        || MISSING.to_string(),
        // -0.000 would read as a loss.
        |v| {
            if format!("{:.3}", v.abs()) == "0.000" {
                "±0.000".to_string()
            } else {
                format!("{v:+.3}")
            }
        },
    )
}

impl Comparison {
    /// The table's header: `metric`, each report's label, `Δ <label>` for each later report.
    pub fn header(&self) -> Vec<String> {
        let mut header = vec!["metric".to_string()];
        header.extend(self.reports.iter().map(|r| r.label.clone()));
        header.extend(
            self.reports
                .iter()
                .skip(1)
                .map(|r| format!("Δ {} vs {}", r.label, self.reports[0].label)),
        );
        header
    }

    /// The table's cells, row by row, as [`Comparison::header`] orders them.
    pub fn cells(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| {
                let mut cells = vec![r.metric.clone()];
                cells.extend(r.values.iter().map(|v| value_text(*v)));
                cells.extend(r.differences.iter().map(|v| difference_text(*v)));
                cells
            })
            .collect()
    }

    /// The table as Markdown (what `percept compare` prints).
    pub fn markdown(&self) -> String {
        let row = |cells: &[String]| {
            let cells: Vec<String> = cells.iter().map(|c| escape_markdown(c)).collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let header = self.header();
        let mut s = row(&header);
        let align: Vec<&str> = (0..header.len())
            .map(|i| if i == 0 { ":--" } else { "--:" })
            .collect();
        let _ = writeln!(s, "| {} |", align.join(" | "));
        for cells in self.cells() {
            s.push_str(&row(&cells));
        }
        s
    }

    /// Per-class AP@0.5 as one bar per report, grouped by class, each report in its colour.
    pub fn chart(&self) -> Result<crate::chart::ChartImage, EvalError> {
        let labels: Vec<&str> = self.reports.iter().map(|r| r.label.as_str()).collect();
        let bars: Vec<Bar> = self
            .rows
            .iter()
            .filter(|r| r.kind == RowKind::Class)
            .flat_map(|r| {
                let class = r.class.clone().unwrap_or_default();
                r.values
                    .iter()
                    .zip(&labels)
                    .enumerate()
                    .map(move |(i, (v, label))| Bar {
                        label: format!("{class} ({label})"),
                        value: *v,
                        color: REPORT_COLORS[i % REPORT_COLORS.len()],
                    })
            })
            .collect();
        bar_chart(
            &format!("AP@0.5 per class: {}", labels.join(" vs ")),
            "AP@0.5",
            &bars,
        )
    }

    /// The reports compared, one line each (Markdown or HTML text after escaping).
    fn report_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for r in &self.reports {
            lines.push(format!(
                "{}: {} images; {}",
                r.label, r.images, r.resolution
            ));
            for m in &r.class_match {
                lines.push(format!("{}: {m}", r.label));
            }
        }
        lines
    }

    fn title(&self) -> String {
        let labels: Vec<&str> = self.reports.iter().map(|r| r.label.as_str()).collect();
        format!("Evaluation comparison: {}", labels.join(" vs "))
    }

    fn note(&self) -> String {
        format!(
            "Differences are each report's value minus {}'s. {MISSING}: the report has no such \
             metric or class, or no ground truth of the class (no AP).",
            self.reports.first().map_or("", |r| r.label.as_str())
        )
    }

    /// The Markdown page: title, the reports, the table, the chart.
    fn markdown_page(&self) -> String {
        let mut s = format!("# {}\n\n", escape_markdown(&self.title()));
        for line in self.report_lines() {
            let _ = writeln!(s, "- {}", escape_markdown(&line));
        }
        s.push('\n');
        s.push_str(&self.markdown());
        let _ = writeln!(s, "\n{}\n", escape_markdown(&self.note()));
        let _ = writeln!(s, "![AP@0.5 per class]({COMPARE_CHART_STEM}.png)");
        s
    }

    /// The HTML page: as the Markdown page, the chart as SVG linking to its PNG.
    fn html_page(&self) -> String {
        let title = escape_html(&self.title());
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n<ul>\n"
        );
        for line in self.report_lines() {
            let _ = writeln!(s, "<li>{}</li>", escape_html(&line));
        }
        s.push_str("</ul>\n<table>\n<tr>");
        for (i, h) in self.header().iter().enumerate() {
            let class = if i == 0 { "" } else { " class=\"num\"" };
            let _ = write!(s, "<th{class}>{}</th>", escape_html(h));
        }
        s.push_str("</tr>\n");
        for (row, cells) in self.rows.iter().zip(self.cells()) {
            let class = match row.kind {
                RowKind::Task => "",
                RowKind::Class => " class=\"per-class\"",
            };
            let _ = write!(s, "<tr{class}>");
            for (i, c) in cells.iter().enumerate() {
                let class = if i == 0 { "" } else { " class=\"num\"" };
                let _ = write!(s, "<td{class}>{}</td>", escape_html(c));
            }
            s.push_str("</tr>\n");
        }
        let _ = writeln!(
            s,
            "</table>\n<p>{}</p>\n<p><a href=\"{COMPARE_CHART_STEM}.png\"><img \
             src=\"{COMPARE_CHART_STEM}.svg\" alt=\"AP@0.5 per class\"></a></p>\n</body>\n</html>",
            escape_html(&self.note())
        );
        s
    }
}

const CSS: &str = "\
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; \
max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f3f3f3; }
tr.per-class td { background: #fafafa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
";

/// Writes `comparison` into `out_dir` (created if need be): [`COMPARE_JSON`],
/// [`COMPARE_MARKDOWN`], [`COMPARE_HTML`] and the chart as PNG and SVG; returns their paths
/// in that order. Every file is written atomically.
pub fn write_comparison(
    comparison: &Comparison,
    out_dir: &Path,
) -> Result<Vec<PathBuf>, EvalError> {
    std::fs::create_dir_all(out_dir).map_err(|source| EvalError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let json = out_dir.join(COMPARE_JSON);
    let bytes = serde_json::to_vec_pretty(comparison).expect("a comparison serialises");
    write_atomic(&json, &bytes)?;
    let markdown = out_dir.join(COMPARE_MARKDOWN);
    write_atomic(&markdown, comparison.markdown_page().as_bytes())?;
    let html = out_dir.join(COMPARE_HTML);
    write_atomic(&html, comparison.html_page().as_bytes())?;
    let (png, svg) = comparison.chart()?.save(out_dir, COMPARE_CHART_STEM)?;
    Ok(vec![json, markdown, html, png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_print_with_a_sign_and_no_negative_zero() {
        assert_eq!(difference_text(Some(0.0421)), "+0.042");
        assert_eq!(difference_text(Some(-0.1)), "-0.100");
        assert_eq!(difference_text(Some(-0.0001)), "±0.000");
        assert_eq!(difference_text(None), MISSING);
        assert_eq!(value_text(None), MISSING);
    }
}
