//! Charts for evaluation reports and training curves, drawn with `plotters` and written as PNG
//! and SVG: bar charts (AP per class) and line charts (precision-recall curves, losses and
//! metrics against the step).
//!
//! Bar charts and [`line_chart`] plot values on a fixed `0..1` scale, with ticks labelled at
//! `0.0, 0.2, ..., 1.0`; [`line_chart_on`] takes an [`Axis`] per direction instead: any range,
//! linear or logarithmic, with "nice" ticks (1, 2 or 5 times a power of ten; decades on a log
//! axis). The layout and the ticks are this module's; plotters draws the shapes and the text,
//! once into an RGB buffer (the PNG) and once into an SVG document, so both show the same
//! chart. All are drawn on a white background with dark axes and light grey gridlines. Text
//! is DejaVu Sans (bundled by the `dejavu` crate, see [`crate::font`]), so no font files or
//! system libraries are needed; an SVG names the family `sans-serif` and is rendered with the
//! viewer's own sans-serif font. Charts are [`CHART_HEIGHT`] pixels high; line charts are
//! [`LINE_CHART_WIDTH`] wide and bar charts widen with their number of bars (see
//! [`bar_chart_width`]).
//!
//! [`ChartImage::save`] writes a chart as `<stem>.png` and `<stem>.svg`, each atomically.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use plotters::backend::{BitMapBackend, DrawingBackend, SVGBackend};
use plotters::coord::Shift;
use plotters::drawing::{DrawingArea, IntoDrawingArea};
use plotters::element::{Circle, PathElement, Rectangle, Text};
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{IntoFont, RGBColor, ShapeStyle, TextStyle};

use crate::font;
use crate::EvalError;
use percept_data::{save_png_atomic, write_atomic};

/// Background colour of every chart.
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
/// Colour of axes, ticks and text.
pub const AXIS_COLOR: Rgb<u8> = Rgb([40, 40, 40]);
/// Colour of gridlines.
pub const GRID_COLOR: Rgb<u8> = Rgb([220, 220, 220]);

/// Height of every chart, in pixels.
pub const CHART_HEIGHT: u32 = 400;
/// Width of a line chart, in pixels: a 480-pixel-wide plot and a legend to its right.
pub const LINE_CHART_WIDTH: u32 = 720;
/// The plot area of a line chart, in pixels: `(left, top, right, bottom)`. An axis' start
/// lies on the `left` column (x) or the `bottom` row (y), its end on `right` or `top`.
pub const LINE_PLOT_AREA: (u32, u32, u32, u32) = (
    PLOT_LEFT as u32,
    PLOT_TOP as u32,
    (PLOT_LEFT + LINE_PLOT_WIDTH) as u32,
    PLOT_BOTTOM as u32,
);
/// Narrowest bar chart, in pixels.
pub const BAR_CHART_MIN_WIDTH: u32 = 480;
/// Horizontal space per bar (bar, gaps and label), in pixels, when the chart is wider than
/// [`BAR_CHART_MIN_WIDTH`].
pub const BAR_SLOT: u32 = 88;

/// Text sizes, in pixels (ascent to descent): title, labels, ticks and values.
const TITLE_SIZE: f64 = 20.0;
const LABEL_SIZE: f64 = 14.0;
const TICK_SIZE: f64 = 12.0;
/// Width of a bar, in pixels.
const BAR_WIDTH: i32 = 48;
/// Lines a bar's label may wrap onto.
const LABEL_LINES: usize = 3;
/// Width of a series' line, in pixels.
const LINE_WIDTH: u32 = 2;
/// The plot's edges: the left margin leaves room for tick labels, the top for the title and
/// the y-axis label, the bottom for tick and axis labels.
const PLOT_LEFT: i32 = 64;
const PLOT_TOP: i32 = 60;
const PLOT_BOTTOM: i32 = 350;
/// Margin right of a bar chart's plot.
const BAR_RIGHT_MARGIN: i32 = 24;
/// Width of a line chart's plot.
const LINE_PLOT_WIDTH: i32 = 480;
/// Top row of the y-axis label.
const Y_LABEL_TOP: i32 = 36;
/// Top row of the title.
const TITLE_TOP: i32 = 8;
/// Intervals between ticks an axis aims at (`0.0, 0.2, ..., 1.0` on the unit axis).
const TICK_INTERVALS: u32 = 5;
/// Positions on an axis (0 at its start, 1 at its end) are clamped to this range, so absurd
/// (but finite) values cannot overflow pixel coordinates.
const POSITION_LIMIT: f64 = 1e6;

/// One bar of a [`bar_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Drawn under the bar, wrapped onto up to three lines.
    pub label: String,
    /// Height on the `0..1` scale; `None` (or a non-finite value) draws `n/a` and no bar.
    pub value: Option<f64>,
    pub color: Rgb<u8>,
}

/// One line of a [`line_chart`] or [`line_chart_on`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    pub color: Rgb<u8>,
    /// `(x, y)` points in the axes' units (on the `0..1` scales for [`line_chart`]), joined
    /// in order. A non-finite point, or one a log axis cannot show (zero or negative), breaks
    /// the line.
    pub points: Vec<(f64, f64)>,
}

/// A rendered chart: the same drawing as an RGB image and as an SVG document.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartImage {
    pub png: RgbImage,
    pub svg: String,
}

impl ChartImage {
    /// Writes the chart as `dir/<stem>.png` and `dir/<stem>.svg`, each atomically, and
    /// returns their paths (PNG, SVG).
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), EvalError> {
        let png = dir.join(format!("{stem}.png"));
        let svg = dir.join(format!("{stem}.svg"));
        self.save_as(&png, &svg)?;
        Ok((png, svg))
    }

    /// Writes the chart to the paths given, each atomically.
    pub fn save_as(&self, png: &Path, svg: &Path) -> Result<(), EvalError> {
        save_png_atomic(&self.png, png)?;
        write_atomic(svg, self.svg.as_bytes())?;
        Ok(())
    }
}

/// How an [`Axis`] maps values to positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Equal distances for equal differences.
    Linear,
    /// Equal distances for equal ratios (base 10); only positive values can be shown.
    Log,
}

/// One axis of a [`line_chart_on`]: its label, the range it spans and its scale.
///
/// A range that cannot be drawn (not finite, empty, or not positive on a log axis) is
/// widened around its values instead of failing.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub label: String,
    pub min: f64,
    pub max: f64,
    pub scale: Scale,
}

impl Axis {
    /// A linear axis from 0 to 1, ticks at `0.0, 0.2, ..., 1.0` (the axes of [`line_chart`]).
    pub fn unit(label: &str) -> Axis {
        Axis::linear(label, 0.0, 1.0)
    }

    /// A linear axis from `min` to `max`.
    pub fn linear(label: &str, min: f64, max: f64) -> Axis {
        Axis {
            label: label.to_string(),
            min,
            max,
            scale: Scale::Linear,
        }
    }

    /// A base-10 logarithmic axis from `min` to `max` (both positive).
    pub fn log(label: &str, min: f64, max: f64) -> Axis {
        Axis {
            label: label.to_string(),
            min,
            max,
            scale: Scale::Log,
        }
    }

    /// The range drawn: `min..max` when it can be, else a range widened around it.
    pub fn bounds(&self) -> (f64, f64) {
        let (mut lo, mut hi) = (self.min, self.max);
        if self.scale == Scale::Log {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            match (positive(lo), positive(hi)) {
                (true, true) => {}
                (true, false) => hi = lo * 10.0,
                (false, true) => lo = hi / 10.0,
                (false, false) => (lo, hi) = (0.1, 1.0),
            }
            if lo > hi {
                (lo, hi) = (hi, lo);
            }
            if hi / lo < 1.0 + 1e-9 {
                (lo, hi) = (lo / 2.0, hi * 2.0);
            }
            // Keep the range inside what f64 logarithms resolve.
            let lo = lo.clamp(1e-300, 1e299);
            return (lo, hi.min(1e300).max(lo * (1.0 + 1e-6)));
        }
        if !lo.is_finite() {
            lo = if hi.is_finite() { hi - 1.0 } else { 0.0 };
        }
        if !hi.is_finite() {
            hi = lo + 1.0;
        }
        if lo > hi {
            (lo, hi) = (hi, lo);
        }
        // Bounded, so the span stays finite.
        let (mut lo, mut hi) = (lo.clamp(-1e300, 1e300), hi.clamp(-1e300, 1e300));
        if hi - lo <= 1e-12 * lo.abs().max(hi.abs()) {
            let delta = if lo == 0.0 { 1.0 } else { lo.abs() / 10.0 };
            (lo, hi) = (lo - delta, hi + delta);
        }
        (lo, hi)
    }

    /// Where `v` lies on the axis: 0 at the range's start, 1 at its end; not finite for a
    /// value the axis cannot show (not finite, or not positive on a log axis).
    pub fn position(&self, v: f64) -> f64 {
        let (lo, hi) = self.bounds();
        match self.scale {
            Scale::Linear => (v - lo) / (hi - lo),
            Scale::Log if v > 0.0 => (v.log10() - lo.log10()) / (hi.log10() - lo.log10()),
            Scale::Log => f64::NAN,
        }
    }

    /// The labelled ticks inside the range, as `(value, label)`, in increasing order.
    ///
    /// Linear: multiples of the step of 1, 2 or 5 times a power of ten nearest to a fifth of
    /// the range (four to eight intervals), all printed with the step's decimals (`0.0, 0.2, ...`), in scientific
    /// notation for steps below 0.001 or values of a million or more. Log: every decade (every
    /// n-th when there are more than eight), 1-2-5 steps when the range spans under three
    /// decades, the linear ticks when it spans less than one.
    pub fn ticks(&self) -> Vec<(f64, String)> {
        let (lo, hi) = self.bounds();
        match self.scale {
            Scale::Linear => linear_ticks(lo, hi),
            Scale::Log => log_ticks(lo, hi),
        }
    }
}

/// The width of a bar chart of `bars` bars: [`BAR_SLOT`] per bar plus margins, at least
/// [`BAR_CHART_MIN_WIDTH`].
pub fn bar_chart_width(bars: usize) -> u32 {
    let slots = u32::try_from(bars)
        .unwrap_or(u32::MAX)
        .saturating_mul(BAR_SLOT);
    slots
        .saturating_add((PLOT_LEFT + BAR_RIGHT_MARGIN) as u32)
        .max(BAR_CHART_MIN_WIDTH)
}

/// A vertical bar chart on a `0..1` y axis, [`bar_chart_width`] by [`CHART_HEIGHT`] pixels.
///
/// Each bar is filled with its colour inside a 1-pixel outline of a darker shade (so light
/// colours still show on white), with its value printed above it to three decimals and its
/// label below the axis. Bar heights are clamped to `0..1` (the printed value is not); a bar
/// whose value is `None` or not finite is drawn as `n/a` with no bar.
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar]) -> Result<ChartImage, EvalError> {
    let width = bar_chart_width(bars.len());
    let plot = Plot {
        left: PLOT_LEFT,
        top: PLOT_TOP,
        right: i32::try_from(width).unwrap_or(i32::MAX) - BAR_RIGHT_MARGIN,
        bottom: PLOT_BOTTOM,
    };
    let mut shapes = Vec::new();
    frame(&mut shapes, width, &plot, title, &Axis::unit(y_label));
    axes(&mut shapes, &plot);
    if bars.is_empty() {
        let middle = (plot.top + plot.bottom) / 2 - LABEL_SIZE as i32 / 2;
        let at = (plot.center_x(), middle);
        shapes.push(text("no data", at, LABEL_SIZE, HPos::Center));
        return render(width, CHART_HEIGHT, &shapes);
    }
    let slot = (plot.right - plot.left) / bars.len() as i32;
    // DejaVu Sans' characters average about 0.55 of the text size in width.
    let label_chars = (f64::from(slot - 8) / (0.55 * TICK_SIZE)).max(1.0) as usize;
    for (i, bar) in (0i32..).zip(bars) {
        let center = plot.left + i * slot + slot / 2;
        match bar.value.filter(|v| v.is_finite()) {
            Some(value) => {
                let top = plot.y(value.clamp(0.0, 1.0));
                let (left, right) = (center - BAR_WIDTH / 2, center + BAR_WIDTH / 2 - 1);
                if top < plot.bottom {
                    let bottom = plot.bottom - 1;
                    shapes.push(fill(left, top, right, bottom, darken(bar.color)));
                    shapes.push(fill(left + 1, top + 1, right - 1, bottom, bar.color));
                }
                let value = format!("{value:.3}");
                let at = (center, top - TICK_SIZE as i32 - 4);
                shapes.push(text(&value, at, TICK_SIZE, HPos::Center));
            }
            None => {
                let at = (center, plot.bottom - TICK_SIZE as i32 - 6);
                shapes.push(text("n/a", at, TICK_SIZE, HPos::Center));
            }
        }
        for (line, label) in (0i32..).zip(wrap(&bar.label, label_chars, LABEL_LINES)) {
            let label = fit_px(&label, slot - 4, TICK_SIZE);
            let at = (center, plot.bottom + 8 + line * (TICK_SIZE as i32 + 3));
            shapes.push(text(&label, at, TICK_SIZE, HPos::Center));
        }
    }
    render(width, CHART_HEIGHT, &shapes)
}

/// A line chart with both axes on `0..1`, [`LINE_CHART_WIDTH`] by [`CHART_HEIGHT`] pixels,
/// with a legend (each series' colour and name) right of the plot.
///
/// Consecutive points of a series are joined by 2-pixel lines, clipped to the plot; a lone
/// point is drawn as a dot. Non-finite points are skipped and break the line. Series are
/// drawn in order, so later ones cover earlier ones where they overlap. The legend lists as
/// many series as fit (about fifteen) and counts the rest.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<ChartImage, EvalError> {
    line_chart_on(title, &Axis::unit(x_label), &Axis::unit(y_label), series)
}

/// A line chart on the axes given, otherwise as [`line_chart`]: points are in the axes'
/// units, and a line towards a point outside an axis' range is clipped at the plot's edge.
pub fn line_chart_on(
    title: &str,
    x_axis: &Axis,
    y_axis: &Axis,
    series: &[Series],
) -> Result<ChartImage, EvalError> {
    let plot = Plot {
        left: PLOT_LEFT,
        top: PLOT_TOP,
        right: PLOT_LEFT + LINE_PLOT_WIDTH,
        bottom: PLOT_BOTTOM,
    };
    let mut shapes = Vec::new();
    frame(&mut shapes, LINE_CHART_WIDTH, &plot, title, y_axis);
    for (value, label) in x_axis.ticks() {
        let x = plot.x(x_axis.position(value));
        if x > plot.left {
            shapes.push(fill(x, plot.top, x, plot.bottom - 1, GRID_COLOR));
        }
        shapes.push(fill(x, plot.bottom + 1, x, plot.bottom + 4, AXIS_COLOR));
        let at = (x, plot.bottom + 6);
        shapes.push(text(&label, at, TICK_SIZE, HPos::Center));
    }
    let x_label = fit_px(&x_axis.label, LINE_PLOT_WIDTH, LABEL_SIZE);
    let at = (plot.center_x(), plot.bottom + 26);
    shapes.push(text(&x_label, at, LABEL_SIZE, HPos::Center));
    axes(&mut shapes, &plot);
    for s in series {
        let positions = s.points.iter().map(|&(x, y)| {
            let p = (x_axis.position(x), y_axis.position(y));
            (p.0.is_finite() && p.1.is_finite()).then(|| {
                let limit = |v: f64| v.clamp(-POSITION_LIMIT, POSITION_LIMIT);
                (limit(p.0), limit(p.1))
            })
        });
        for run in clipped_runs(positions) {
            let mut pixels: Vec<(i32, i32)> =
                run.iter().map(|&(x, y)| (plot.x(x), plot.y(y))).collect();
            pixels.dedup();
            match pixels[..] {
                [] => {}
                [at] => shapes.push(Shape::Dot { at, color: s.color }),
                _ => shapes.push(Shape::Line {
                    points: pixels,
                    color: s.color,
                }),
            }
        }
    }
    legend(&mut shapes, plot.right + 16, plot.top, series);
    render(LINE_CHART_WIDTH, CHART_HEIGHT, &shapes)
}

/// The pieces of a polyline through `positions` (on `0..1` axes; `None` breaks the line)
/// inside the unit square: each segment clipped to it, consecutive segments joined.
fn clipped_runs(positions: impl Iterator<Item = Option<(f64, f64)>>) -> Vec<Vec<(f64, f64)>> {
    let inside = |(x, y): (f64, f64)| (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y);
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    let mut previous: Option<(f64, f64)> = None;
    for p in positions {
        match (previous, p) {
            (_, None) => runs.push(std::mem::take(&mut current)),
            (None, Some(p)) => {
                runs.push(std::mem::take(&mut current));
                if inside(p) {
                    current.push(p);
                }
            }
            (Some(a), Some(b)) => match clip_segment(a, b) {
                Some((s, e)) => {
                    if current.last() != Some(&s) {
                        runs.push(std::mem::replace(&mut current, vec![s]));
                    }
                    current.push(e);
                }
                None => runs.push(std::mem::take(&mut current)),
            },
        }
        previous = p;
    }
    runs.push(current);
    runs.retain(|r| !r.is_empty());
    runs
}

/// The part of the segment `a`-`b` inside the unit square (Liang-Barsky), if any.
fn clip_segment(a: (f64, f64), b: (f64, f64)) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a.0), (dx, 1.0 - a.0), (-dy, a.1), (dy, 1.0 - a.1)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            (a.0 + t * dx, a.1 + t * dy)
        }
    };
    Some((at(t0), at(t1)))
}
/// Ticks of a linear axis over `lo..hi` (see [`Axis::ticks`]).
fn linear_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let step = nice_step((hi - lo) / f64::from(TICK_INTERVALS));
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let exponent = (step.log10() + 1e-9).floor() as i32;
    let scientific = exponent < -3 || lo.abs().max(hi.abs()) >= 1e6;
    let decimals = (-exponent).max(0) as usize;
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last)
        .take(100)
        .map(|k| {
            let value = k as f64 * step;
            let text = if scientific && k == 0 {
                "0".to_string()
            } else if scientific {
                scientific_label(value, exponent)
            } else {
                format!("{value:.decimals$}")
            };
            (value, text)
        })
        .collect()
}

/// Ticks of a log axis over `lo..hi` (see [`Axis::ticks`]).
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let decades = hi.log10() - lo.log10();
    if decades < 1.0 {
        return linear_ticks(lo, hi)
            .into_iter()
            .filter(|&(v, _)| v > 0.0)
            .map(|(v, _)| (v, short_label(v)))
            .collect();
    }
    let first = (lo.log10() - 1e-9).floor() as i32;
    let last = (hi.log10() + 1e-9).ceil() as i32;
    let stride = ((decades / 8.0).ceil() as i32).max(1);
    let mantissas: &[f64] = if decades < 3.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    for e in (first..=last).filter(|e| e.rem_euclid(stride) == 0) {
        for &m in mantissas {
            let value = m * 10f64.powi(e);
            if value >= lo * (1.0 - 1e-9) && value <= hi * (1.0 + 1e-9) {
                ticks.push((value, short_label(value)));
            }
        }
    }
    ticks
}

/// The step of 1, 2 or 5 times a power of ten closest to `raw` (by the number of intervals
/// it makes; the smaller step on a tie).
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let intervals = |step: f64| (raw / step).max(step / raw);
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .fold(magnitude, |best, s| {
            if intervals(s) < intervals(best) - 1e-9 {
                s
            } else {
                best
            }
        })
}

/// `value` (a multiple of a step `10^step_exponent` or coarser) as `m.mme±x`, with as few
/// mantissa digits as the step needs (at most three decimals): `2e-4`, `1.5e-4`, `1.2e6`.
fn scientific_label(value: f64, step_exponent: i32) -> String {
    let mut exponent = value.abs().log10().floor() as i32;
    let decimals = (exponent - step_exponent).clamp(0, 3) as usize;
    let mut mantissa = value / 10f64.powi(exponent);
    let rounded: f64 = format!("{mantissa:.decimals$}").parse().unwrap_or(mantissa);
    if rounded.abs() >= 10.0 {
        exponent += 1;
        mantissa = value / 10f64.powi(exponent);
    }
    let text = format!("{mantissa:.decimals$}");
    format!("{}e{exponent}", trim_zeros(&text))
}

/// `value` with three significant digits at most, trailing zeros dropped: `0.002`, `0.5`,
/// `20`, `1000`; `1e-5`, `2e6` outside `0.001..1e6`.
fn short_label(value: f64) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let exponent = value.abs().log10().floor() as i32;
    if !(-3..6).contains(&exponent) {
        return scientific_label(value, exponent - 2);
    }
    let decimals = (2 - exponent).max(0) as usize;
    trim_zeros(&format!("{value:.decimals$}")).to_string()
}

/// `text` without trailing zeros after a decimal point, nor a trailing point.
fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// `color` if it reads on a white background, otherwise a darker shade of it (for colours
/// as light as white, yellow or lime, whose thin lines would be hard to see on white).
pub fn readable_on_white(color: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = color.0.map(u32::from);
    // ITU-R BT.601 luma, scaled by 1000.
    if 299 * r + 587 * g + 114 * b > 200 * 1000 {
        darken(color)
    } else {
        color
    }
}

/// `color` at 60% brightness.
fn darken(color: Rgb<u8>) -> Rgb<u8> {
    Rgb(color.0.map(|c| (u16::from(c) * 3 / 5) as u8))
}

/// The plot rectangle: `left`/`right` are the pixel columns of x = 0 and 1, `top`/`bottom`
/// the pixel rows of y = 1 and 0 (the axes lie on `left` and `bottom`).
#[derive(Debug, Clone, Copy)]
struct Plot {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
}

impl Plot {
    /// The pixel column of position `v` on the x axis (0 at its start, 1 at its end).
    fn x(&self, v: f64) -> i32 {
        let v = v.clamp(-POSITION_LIMIT, POSITION_LIMIT);
        self.left + (v * f64::from(self.right - self.left)).round() as i32
    }

    /// The pixel row of position `v` on the y axis.
    fn y(&self, v: f64) -> i32 {
        let v = v.clamp(-POSITION_LIMIT, POSITION_LIMIT);
        self.bottom - (v * f64::from(self.bottom - self.top)).round() as i32
    }

    fn center_x(&self) -> i32 {
        (self.left + self.right) / 2
    }
}

/// What a chart is drawn from, in pixels, painted in order by plotters onto either backend.
#[derive(Clone)]
enum Shape {
    /// A filled rectangle, both corners included.
    Fill {
        from: (i32, i32),
        to: (i32, i32),
        color: Rgb<u8>,
    },
    /// A 1-pixel rectangle outline.
    Outline { from: (i32, i32), to: (i32, i32) },
    /// A [`LINE_WIDTH`]-pixel polyline.
    Line {
        points: Vec<(i32, i32)>,
        color: Rgb<u8>,
    },
    /// A lone point.
    Dot { at: (i32, i32), color: Rgb<u8> },
    /// Text in [`AXIS_COLOR`], its top at `at.1`, aligned on `at.0` as `align` says.
    Text {
        text: String,
        at: (i32, i32),
        size: f64,
        align: HPos,
    },
}

fn fill(x0: i32, y0: i32, x1: i32, y1: i32, color: Rgb<u8>) -> Shape {
    Shape::Fill {
        from: (x0, y0),
        to: (x1, y1),
        color,
    }
}

fn text(text: &str, at: (i32, i32), size: f64, align: HPos) -> Shape {
    Shape::Text {
        text: text.to_string(),
        at,
        size,
        align,
    }
}

/// The title, the label of `y_axis`, the horizontal gridlines with its labelled ticks.
fn frame(shapes: &mut Vec<Shape>, width: u32, plot: &Plot, title: &str, y_axis: &Axis) {
    let width = i32::try_from(width).unwrap_or(i32::MAX);
    let title = fit_px(title, width - 16, TITLE_SIZE);
    shapes.push(text(
        &title,
        (width / 2, TITLE_TOP),
        TITLE_SIZE,
        HPos::Center,
    ));
    let y_label = fit_px(&y_axis.label, width - 16, LABEL_SIZE);
    shapes.push(text(&y_label, (8, Y_LABEL_TOP), LABEL_SIZE, HPos::Left));
    for (value, label) in y_axis.ticks() {
        let y = plot.y(y_axis.position(value));
        if y < plot.bottom {
            shapes.push(fill(plot.left + 1, y, plot.right, y, GRID_COLOR));
        }
        shapes.push(fill(plot.left - 4, y, plot.left - 1, y, AXIS_COLOR));
        let at = (plot.left - 6, y - TICK_SIZE as i32 / 2);
        shapes.push(text(&label, at, TICK_SIZE, HPos::Right));
    }
}

/// The x axis (row `bottom`) and the y axis (column `left`).
fn axes(shapes: &mut Vec<Shape>, plot: &Plot) {
    let (l, t, r, b) = (plot.left, plot.top, plot.right, plot.bottom);
    shapes.push(fill(l, b, r, b, AXIS_COLOR));
    shapes.push(fill(l, t, l, b, AXIS_COLOR));
}

/// The legend box with its top-left corner at `(left, top)`: a colour swatch and the name of
/// each series, as many as fit above the plot's bottom, and how many more there are.
fn legend(shapes: &mut Vec<Shape>, left: i32, top: i32, series: &[Series]) {
    if series.is_empty() {
        return;
    }
    const ROW: i32 = 18;
    const PAD: i32 = 6;
    const SWATCH: i32 = 16;
    let size = TICK_SIZE + 1.0;
    let right = LINE_CHART_WIDTH as i32 - 8;
    let name_width = right - left - 3 * PAD - SWATCH;
    let max_rows = ((PLOT_BOTTOM - top - 2 * PAD) / ROW).max(1) as usize;
    let (shown, hidden) = if series.len() > max_rows {
        (max_rows - 1, series.len() - (max_rows - 1))
    } else {
        (series.len(), 0)
    };
    let rows = (shown + usize::from(hidden > 0)) as i32;
    let bottom = top + 2 * PAD + rows * ROW - 4;
    shapes.push(Shape::Outline {
        from: (left, top),
        to: (right, bottom),
    });
    for (row, s) in (0i32..).zip(&series[..shown]) {
        let (x, y) = (left + PAD, top + PAD + row * ROW);
        shapes.push(fill(x, y + 2, x + SWATCH - 1, y + 11, s.color));
        let name = fit_px(&s.name, name_width, size);
        shapes.push(text(&name, (x + SWATCH + PAD, y), size, HPos::Left));
    }
    if hidden > 0 {
        let y = top + PAD + shown as i32 * ROW;
        shapes.push(text(
            &format!("+{hidden} more"),
            (left + PAD, y),
            size,
            HPos::Left,
        ));
    }
}

/// `text` if it is at most `max` pixels wide at `size`, else its start ending in `..`.
fn fit_px(text: &str, max: i32, size: f64) -> String {
    let fits = |t: &str| f64::from(font::text_width(t, size as f32)) <= f64::from(max);
    if fits(text) {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut keep = chars.len();
    // Halve while far too long (a thousand-character title), then step.
    while keep > 0 {
        let candidate: String = chars[..keep].iter().collect::<String>() + "..";
        if fits(&candidate) {
            return candidate;
        }
        keep = if keep > 64 { keep / 2 } else { keep - 1 };
    }
    String::new()
}

/// Draws `shapes` onto a `width` by `height` RGB buffer and into an SVG document.
fn render(width: u32, height: u32, shapes: &[Shape]) -> Result<ChartImage, EvalError> {
    font::register();
    let mut buffer = vec![0u8; width as usize * height as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        paint(&area, shapes, true)?;
        area.present().map_err(drawing_error)?;
    }
    let png = RgbImage::from_raw(width, height, buffer).expect("the buffer fits the image");
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        paint(&area, shapes, false)?;
        area.present().map_err(drawing_error)?;
    }
    Ok(ChartImage { png, svg })
}

fn drawing_error(e: impl std::fmt::Display) -> EvalError {
    EvalError::Invalid(format!("drawing a chart: {e}"))
}

fn rgb(color: Rgb<u8>) -> RGBColor {
    let [r, g, b] = color.0;
    RGBColor(r, g, b)
}

/// Paints `shapes` on `area`. `bitmap`: plotters draws bitmap text about a tenth of its size
/// higher than an SVG viewer places it; text is moved down by that much so both agree.
fn paint<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    shapes: &[Shape],
    bitmap: bool,
) -> Result<(), EvalError> {
    use plotters::style::Color as _;
    area.fill(&rgb(BACKGROUND)).map_err(drawing_error)?;
    for shape in shapes {
        match shape {
            Shape::Fill { from, to, color } => {
                // Plotters fills up to, not including, the second corner.
                let to = (to.0 + 1, to.1 + 1);
                area.draw(&Rectangle::new([*from, to], rgb(*color).filled()))
            }
            Shape::Outline { from, to } => {
                let style = ShapeStyle::from(rgb(AXIS_COLOR)).stroke_width(1);
                area.draw(&Rectangle::new([*from, *to], style))
            }
            Shape::Line { points, color } => {
                let style = rgb(*color).stroke_width(LINE_WIDTH);
                area.draw(&PathElement::new(points.clone(), style))
            }
            Shape::Dot { at, color } => area.draw(&Circle::new(*at, 2, rgb(*color).filled())),
            Shape::Text {
                text,
                at,
                size,
                align,
            } => {
                if text.is_empty() {
                    continue;
                }
                let color = rgb(AXIS_COLOR);
                let style = TextStyle::from((font::FAMILY, *size).into_font())
                    .color(&color)
                    .pos(Pos::new(*align, VPos::Top));
                let shift = if bitmap {
                    (size * 0.11).round() as i32
                } else {
                    0
                };
                area.draw(&Text::new(text.as_str(), (at.0, at.1 + shift), style))
            }
        }
        .map_err(drawing_error)?;
    }
    Ok(())
}
/// The first `max - 2` characters of `text` (all of them when fewer) followed by `..`,
/// marking that more text was cut.
fn ellipsize(text: &str, max: usize) -> String {
    let mut s: String = text.chars().take(max.saturating_sub(2)).collect();
    s.push_str(&".."[..max.min(2)]);
    s
}

/// Splits `text` at whitespace into lines of at most `width` characters (breaking longer
/// words), at most `max_lines` of them; the last line ends in `..` when text was cut.
fn wrap(text: &str, width: usize, max_lines: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        let chars: Vec<char> = word.chars().collect();
        for piece in chars.chunks(width) {
            let piece: String = piece.iter().collect();
            if current.is_empty() {
                current = piece;
            } else if current.chars().count() + 1 + piece.chars().count() <= width {
                current.push(' ');
                current.push_str(&piece);
            } else {
                lines.push(std::mem::replace(&mut current, piece));
            }
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            *last = ellipsize(last, width.min(last.chars().count() + 2));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const RED: Rgb<u8> = Rgb([230, 30, 30]);
    const BLUE: Rgb<u8> = Rgb([0, 80, 200]);

    fn bar(label: &str, value: Option<f64>, color: Rgb<u8>) -> Bar {
        Bar {
            label: label.to_string(),
            value,
            color,
        }
    }

    fn bar_plot(width: u32) -> Plot {
        Plot {
            left: PLOT_LEFT,
            top: PLOT_TOP,
            right: width as i32 - BAR_RIGHT_MARGIN,
            bottom: PLOT_BOTTOM,
        }
    }

    fn line_plot() -> Plot {
        Plot {
            left: PLOT_LEFT,
            top: PLOT_TOP,
            right: PLOT_LEFT + LINE_PLOT_WIDTH,
            bottom: PLOT_BOTTOM,
        }
    }

    /// Centre column of bar `i` of `n` in a chart of `width`.
    fn bar_center(width: u32, i: i32, n: i32) -> i32 {
        let plot = bar_plot(width);
        let slot = (plot.right - plot.left) / n;
        plot.left + i * slot + slot / 2
    }

    fn px(image: &RgbImage, x: i32, y: i32) -> Rgb<u8> {
        *image.get_pixel(x as u32, y as u32)
    }

    /// Whether a pixel within 2 of `(x, y)` has `color`.
    fn near(image: &RgbImage, x: i32, y: i32, color: Rgb<u8>) -> bool {
        (x - 2..=x + 2)
            .flat_map(|x| (y - 2..=y + 2).map(move |y| (x, y)))
            .any(|(x, y)| px(image, x, y) == color)
    }

    /// The first row from the plot's top down where column `x` is neither background nor
    /// gridline.
    fn first_painted_row(image: &RgbImage, x: i32) -> Option<i32> {
        (PLOT_TOP..PLOT_BOTTOM).find(|&y| ![BACKGROUND, GRID_COLOR].contains(&px(image, x, y)))
    }

    #[test]
    fn sizes() {
        let few = bar_chart("t", "y", &[bar("a", Some(0.5), RED)]).unwrap();
        assert_eq!(few.png.dimensions(), (BAR_CHART_MIN_WIDTH, CHART_HEIGHT));
        let ten: Vec<Bar> = (0..10).map(|_| bar("a", Some(0.5), RED)).collect();
        let ten = bar_chart("t", "y", &ten).unwrap();
        assert_eq!(
            ten.png.dimensions(),
            (PLOT_LEFT as u32 + 880 + 24, CHART_HEIGHT)
        );
        assert_eq!(bar_chart_width(10), ten.png.width());
        assert!(
            ten.svg.contains(r#"width="968" height="400""#),
            "{}",
            ten.svg
        );
        let line = line_chart("t", "x", "y", &[]).unwrap();
        assert_eq!(line.png.dimensions(), (LINE_CHART_WIDTH, CHART_HEIGHT));
    }

    #[test]
    fn half_bar_reaches_half_the_plot_height() {
        let bars = [bar("car", Some(0.5), RED), bar("bus", Some(1.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars).unwrap().png;
        let plot = bar_plot(image.width());
        let center = bar_center(image.width(), 0, 2);
        // Columns just inside the bar's edge, clear of the value printed above it.
        let edge = center - BAR_WIDTH / 2 + 2;
        let top = first_painted_row(&image, edge).expect("bar pixels");
        let half = plot.bottom - (plot.bottom - plot.top) / 2;
        assert!((top - half).abs() <= 2, "bar top {top}, half height {half}");
        assert_eq!(px(&image, center, (top + plot.bottom) / 2), RED);
        assert_eq!(px(&image, center, plot.bottom - 2), RED);
        assert_eq!(px(&image, center, plot.bottom), AXIS_COLOR);
        // The value is printed above the bar.
        let ink = (top - 20..top - 2)
            .flat_map(|y| (center - 20..center + 20).map(move |x| (x, y)))
            .filter(|&(x, y)| px(&image, x, y) != BACKGROUND)
            .count();
        assert!(ink > 20, "{ink} value pixels");
    }

    #[test]
    fn full_bar_reaches_the_top_gridline() {
        let bars = [bar("car", Some(0.5), RED), bar("bus", Some(1.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars).unwrap().png;
        let center = bar_center(image.width(), 1, 2);
        let edge = center - BAR_WIDTH / 2 + 2;
        let top = first_painted_row(&image, edge).unwrap();
        assert!((top - PLOT_TOP).abs() <= 1, "{top}");
        assert_eq!(px(&image, center, PLOT_TOP + 10), BLUE);
    }

    #[test]
    fn missing_values_draw_no_bar() {
        let bars = [
            bar("none", None, RED),
            bar("nan", Some(f64::NAN), RED),
            bar("inf", Some(f64::INFINITY), RED),
        ];
        let chart = bar_chart("AP", "AP@0.5", &bars).unwrap();
        let outline = darken(RED);
        assert!(chart.png.pixels().all(|&p| p != RED && p != outline));
        // `n/a` is printed just above the axis instead.
        assert_eq!(
            chart.svg.matches("\nn/a\n</text>").count(),
            3,
            "{}",
            chart.svg
        );
        let center = bar_center(chart.png.width(), 0, 3);
        let rows = PLOT_BOTTOM - 20..PLOT_BOTTOM - 2;
        assert!(rows
            .flat_map(|y| (center - 12..center + 12).map(move |x| (x, y)))
            .any(|(x, y)| ![BACKGROUND, GRID_COLOR].contains(&px(&chart.png, x, y))));
    }

    #[test]
    fn values_are_clamped() {
        let bars = [bar("hi", Some(3.0), RED), bar("lo", Some(-2.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars).unwrap().png;
        let edge = bar_center(image.width(), 0, 2) - BAR_WIDTH / 2 + 2;
        let top = first_painted_row(&image, edge).unwrap();
        assert!((top - PLOT_TOP).abs() <= 1, "{top}");
        // A negative value draws no bar (the axis stays as it is).
        assert!(image.pixels().all(|&p| p != BLUE && p != darken(BLUE)));
    }

    #[test]
    fn diagonal_series_paints_ends_and_middle() {
        let series = [Series {
            name: "car".to_string(),
            color: RED,
            points: vec![(0.0, 1.0), (1.0, 0.0)],
        }];
        let image = line_chart("PR", "recall", "precision", &series)
            .unwrap()
            .png;
        let plot = line_plot();
        assert!(near(&image, plot.left, plot.top, RED));
        assert!(near(&image, plot.right, plot.bottom, RED));
        let (mx, my) = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
        assert!(near(&image, mx, my, RED));
        // Nothing outside the plot but the legend swatch.
        let legend_x = plot.right + 16;
        assert!(near(&image, legend_x + 12, plot.top + 12, RED));
        for (x, y, p) in image.enumerate_pixels() {
            if *p == RED {
                let (x, y) = (x as i32, y as i32);
                let in_plot = (plot.left - 1..=plot.right + 1).contains(&x)
                    && (plot.top - 1..=plot.bottom + 1).contains(&y);
                assert!(in_plot || x >= legend_x, "({x}, {y})");
            }
        }
    }

    #[test]
    fn non_finite_points_break_the_line() {
        let series = [Series {
            name: "car".to_string(),
            color: RED,
            points: vec![(0.0, 0.0), (f64::NAN, 0.5), (1.0, 1.0)],
        }];
        let image = line_chart("PR", "recall", "precision", &series)
            .unwrap()
            .png;
        let plot = line_plot();
        // Both ends are dots, the middle stays empty.
        assert!(near(&image, plot.left, plot.bottom, RED));
        assert!(near(&image, plot.right, plot.top, RED));
        let (mx, my) = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
        assert!((mx - 3..=mx + 3)
            .flat_map(|x| (my - 3..=my + 3).map(move |y| (x, y)))
            .all(|(x, y)| px(&image, x, y) != RED));
    }

    #[test]
    fn lines_are_clipped_to_the_plot() {
        let runs = clipped_runs(
            [
                Some((0.5, 0.0)),
                Some((0.5, 2.0)),
                Some((1.0, 0.0)),
                None,
                Some((0.2, 0.2)),
            ]
            .into_iter(),
        );
        assert_eq!(
            runs,
            [
                vec![(0.5, 0.0), (0.5, 1.0)],
                vec![(0.75, 1.0), (1.0, 0.0)],
                vec![(0.2, 0.2)],
            ]
        );
        assert_eq!(clip_segment((2.0, 2.0), (3.0, -1.0)), None);
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        bar_chart("", "", &[]).unwrap();
        bar_chart(&"long title ".repeat(400), &"y".repeat(500), &[]).unwrap();
        let bars = [
            bar("", Some(f64::NEG_INFINITY), RED),
            bar(&"x".repeat(100), Some(f64::MAX), RED),
            bar("véhicule à moteur", Some(f64::MIN_POSITIVE), RED),
            bar("   ", Some(-0.0), RED),
        ];
        bar_chart("t", "y", &bars).unwrap();
        line_chart("", "", "", &[]).unwrap();
        let weird = Series {
            name: "n".repeat(100),
            color: BLUE,
            points: vec![
                (f64::NAN, f64::NAN),
                (f64::INFINITY, 0.5),
                (1e300, -1e300),
                (-5.0, 7.0),
                (0.5, f64::NEG_INFINITY),
                (0.5, 0.5),
            ],
        };
        let empty = Series {
            name: String::new(),
            color: RED,
            points: vec![],
        };
        let many: Vec<Series> = (0..50).map(|_| empty.clone()).collect();
        line_chart("t", "x", "y", &[weird, empty]).unwrap();
        let chart = line_chart("t", "x", "y", &many).unwrap();
        assert!(chart.svg.contains(" more\n</text>"), "{}", chart.svg);
    }

    #[test]
    fn title_is_drawn() {
        let ink = |image: &RgbImage| {
            (0..PLOT_TOP as u32 - 30)
                .flat_map(|y| (0..image.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| *image.get_pixel(x, y) != BACKGROUND)
                .count()
        };
        let bars = bar_chart("AP@0.5 per class", "", &[]).unwrap();
        assert!(ink(&bars.png) > 50);
        assert!(ink(&line_chart("Precision-recall", "", "", &[]).unwrap().png) > 50);
        assert_eq!(ink(&line_chart("", "", "", &[]).unwrap().png), 0);
    }

    #[test]
    fn svg_has_the_text_and_a_polyline_per_series() {
        let series: Vec<Series> = [("car", RED), ("bus & van", BLUE)]
            .into_iter()
            .map(|(name, color)| Series {
                name: name.to_string(),
                color,
                points: vec![(0.0, 0.1), (0.5, 0.7), (1.0, 0.4)],
            })
            .collect();
        let chart = line_chart("Precision-recall", "recall", "precision", &series).unwrap();
        let svg = &chart.svg;
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        for t in [
            "\nPrecision-recall\n",
            "\nrecall\n",
            "\nprecision\n",
            "\ncar\n",
            "\nbus &amp; van\n",
            "\n0.6\n",
        ] {
            assert!(svg.contains(t), "{t:?} in {svg}");
        }
        assert!(svg.contains(r#"font-family="sans-serif""#));
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(
            svg.contains(r##"stroke="#E61E1E""##) || svg.contains("rgb(230,30,30)"),
            "{svg}"
        );
    }

    #[test]
    fn saves_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let chart = bar_chart("AP", "AP@0.5", &[bar("car", Some(0.5), RED)]).unwrap();
        let (png, svg) = chart.save(dir.path(), "ap").unwrap();
        assert_eq!(
            (png.clone(), svg.clone()),
            (dir.path().join("ap.png"), dir.path().join("ap.svg"))
        );
        let decoded = image::open(&png).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (BAR_CHART_MIN_WIDTH, CHART_HEIGHT));
        assert_eq!(decoded, chart.png);
        assert_eq!(std::fs::read_to_string(&svg).unwrap(), chart.svg);
    }

    #[test]
    fn text_is_fitted_to_its_room() {
        assert_eq!(fit_px("precision", 1000, LABEL_SIZE), "precision");
        let short = fit_px("precision", 40, LABEL_SIZE);
        assert!(short.ends_with("..") && short.len() < 9, "{short}");
        assert!(font::text_width(&short, LABEL_SIZE as f32) <= 40.0);
        assert_eq!(fit_px("abc", 0, LABEL_SIZE), "");
    }

    #[test]
    fn labels_wrap_at_spaces() {
        assert_eq!(wrap("traffic light", 10, 3), ["traffic", "light"]);
        assert_eq!(wrap("motorcycle", 10, 3), ["motorcycle"]);
        assert_eq!(wrap("a b c", 10, 3), ["a b c"]);
        assert_eq!(wrap("abcdefghijkl", 5, 3), ["abcde", "fghij", "kl"]);
        assert_eq!(wrap("abcdefghijklmnop", 5, 3), ["abcde", "fghij", "klm.."]);
        assert_eq!(wrap("  ", 5, 3), Vec::<String>::new());
    }

    fn labels(axis: &Axis) -> Vec<String> {
        axis.ticks().into_iter().map(|(_, text)| text).collect()
    }

    #[test]
    fn unit_axis_ticks_are_tenths() {
        let axis = Axis::unit("");
        assert_eq!(labels(&axis), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        for (k, (value, _)) in (0u32..).zip(axis.ticks()) {
            assert!((axis.position(value) - f64::from(k) / 5.0).abs() < 1e-12);
        }
    }

    #[test]
    fn linear_ticks_are_round_numbers() {
        let l = |lo, hi| labels(&Axis::linear("", lo, hi));
        assert_eq!(
            l(0.0, 1234.0),
            ["0", "200", "400", "600", "800", "1000", "1200"]
        );
        assert_eq!(l(0.0, 120.0), ["0", "20", "40", "60", "80", "100", "120"]);
        assert_eq!(
            l(0.0, 0.0105),
            ["0.000", "0.002", "0.004", "0.006", "0.008", "0.010"]
        );
        assert_eq!(
            l(0.0, 1.05e-3),
            ["0", "2e-4", "4e-4", "6e-4", "8e-4", "1e-3"]
        );
        assert_eq!(
            l(1.2e-4, 1.8e-4),
            ["1.2e-4", "1.3e-4", "1.4e-4", "1.5e-4", "1.6e-4", "1.7e-4", "1.8e-4"]
        );
        assert_eq!(
            l(0.0, 3e6),
            ["0", "5e5", "1e6", "1.5e6", "2e6", "2.5e6", "3e6"]
        );
        assert_eq!(l(-1.0, 1.0), ["-1.0", "-0.5", "0.0", "0.5", "1.0"]);
    }

    #[test]
    fn log_ticks_are_decades_or_1_2_5() {
        let l = |lo, hi| labels(&Axis::log("", lo, hi));
        assert_eq!(l(0.01, 100.0), ["0.01", "0.1", "1", "10", "100"]);
        assert_eq!(l(0.5, 5.0), ["0.5", "1", "2", "5"]);
        assert_eq!(
            l(0.6, 0.9),
            ["0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9"]
        );
        assert_eq!(
            l(1e-12, 1e12),
            ["1e-12", "1e-9", "1e-6", "0.001", "1", "1000", "1e6", "1e9", "1e12"]
        );
        let axis = Axis::log("", 1.0, 100.0);
        assert!((axis.position(10.0) - 0.5).abs() < 1e-12);
        assert!(axis.position(0.0).is_nan() && axis.position(-1.0).is_nan());
    }

    #[test]
    fn degenerate_ranges_are_widened() {
        assert_eq!(Axis::linear("", 5.0, 5.0).bounds(), (4.5, 5.5));
        assert_eq!(Axis::linear("", 0.0, 0.0).bounds(), (-1.0, 1.0));
        assert_eq!(Axis::linear("", f64::NAN, f64::NAN).bounds(), (0.0, 1.0));
        assert_eq!(Axis::linear("", 2.0, 1.0).bounds(), (1.0, 2.0));
        assert_eq!(Axis::log("", 0.0, -1.0).bounds(), (0.1, 1.0));
        assert_eq!(Axis::log("", 0.0, 10.0).bounds(), (1.0, 10.0));
        assert_eq!(Axis::log("", 3.0, 3.0).bounds(), (1.5, 6.0));
        assert_eq!(Axis::linear("", f64::MIN, f64::MAX).position(0.0), 0.5);
        for axis in [
            Axis::linear("", f64::MIN, f64::MAX),
            Axis::log("", f64::MIN_POSITIVE, f64::MAX),
            Axis::linear("", 1e300, f64::INFINITY),
        ] {
            assert!(axis.ticks().len() <= 100, "{axis:?}");
            line_chart_on("t", &axis, &axis, &[]).unwrap();
        }
    }

    #[test]
    fn points_are_placed_on_the_axes() {
        let series = [Series {
            name: "loss".to_string(),
            color: RED,
            points: vec![(0.0, 10.0), (50.0, 1.0), (100.0, 0.1)],
        }];
        let x = Axis::linear("step", 0.0, 100.0);
        let y = Axis::log("loss", 0.1, 10.0);
        let image = line_chart_on("Loss", &x, &y, &series).unwrap().png;
        let plot = line_plot();
        assert!(near(&image, plot.left, plot.top, RED));
        assert!(near(
            &image,
            plot.center_x(),
            (plot.top + plot.bottom) / 2,
            RED
        ));
        assert!(near(&image, plot.right, plot.bottom, RED));
        // A value a log axis cannot show breaks the line.
        let series = [Series {
            name: "loss".to_string(),
            color: RED,
            points: vec![(0.0, 0.1), (50.0, 0.0), (100.0, 0.1)],
        }];
        let image = line_chart_on("Loss", &x, &y, &series).unwrap().png;
        assert!(near(&image, plot.left, plot.bottom, RED));
        assert_ne!(px(&image, plot.center_x(), plot.bottom - 1), RED);
    }

    #[test]
    fn light_colours_are_darkened_for_lines() {
        assert_eq!(readable_on_white(RED), RED);
        assert_eq!(
            readable_on_white(Rgb([255, 255, 255])),
            Rgb([153, 153, 153])
        );
    }
}
