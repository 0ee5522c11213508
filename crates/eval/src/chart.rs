//! PNG charts for evaluation reports and training curves: bar charts (AP per class) and line
//! charts (precision-recall curves, losses and metrics against the step).
//!
//! Bar charts and [`line_chart`] plot values on a fixed `0..1` scale, with ticks labelled at
//! `0.0, 0.2, ..., 1.0`; [`line_chart_on`] takes an [`Axis`] per direction instead: any range,
//! linear or logarithmic, with "nice" ticks (1, 2 or 5 times a power of ten; decades on a log
//! axis). All are drawn on a white background with dark axes and light grey gridlines. Text
//! uses the 8x8 bitmap font of [`crate::overlay`], so no font files or system libraries are
//! needed. Charts are [`CHART_HEIGHT`] pixels high; line charts are [`LINE_CHART_WIDTH`] wide
//! and bar charts widen with their number of bars (see [`bar_chart_width`]).

use image::{Rgb, RgbImage};

use crate::overlay::{draw_text, fill_rect, GLYPH};

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

/// Width of a bar, in pixels.
const BAR_WIDTH: i64 = 48;
/// Lines a bar's label may wrap onto.
const LABEL_LINES: usize = 3;
/// Vertical distance between text lines, in pixels.
const LINE_HEIGHT: i64 = GLYPH + 2;
/// The plot's edges: left and right margins leave room for tick labels, the top for the title
/// and the y-axis label, the bottom for tick and axis labels.
const PLOT_LEFT: i64 = 56;
const PLOT_TOP: i64 = 60;
const PLOT_BOTTOM: i64 = 360;
/// Margin right of a bar chart's plot.
const BAR_RIGHT_MARGIN: i64 = 24;
/// Width of a line chart's plot.
const LINE_PLOT_WIDTH: i64 = 480;
/// Top row of the y-axis label.
const Y_LABEL_TOP: i64 = 36;
/// Rows below the title band's top where the title starts.
const TITLE_TOP: i64 = 8;
/// Intervals between ticks an axis aims at (`0.0, 0.2, ..., 1.0` on the unit axis).
const TICK_INTERVALS: u32 = 5;
/// Coordinates are clamped to this range before mapping to pixels, so absurd (but finite)
/// values cannot overflow or make line drawing slow.
const VALUE_LIMIT: (f64, f64) = (-1.0, 2.0);

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
pub fn bar_chart(title: &str, y_label: &str, bars: &[Bar]) -> RgbImage {
    let width = bar_chart_width(bars.len());
    let mut image = RgbImage::from_pixel(width, CHART_HEIGHT, BACKGROUND);
    let plot = Plot {
        left: PLOT_LEFT,
        top: PLOT_TOP,
        right: i64::from(width) - BAR_RIGHT_MARGIN,
        bottom: PLOT_BOTTOM,
    };
    draw_frame(&mut image, &plot, title, &Axis::unit(y_label));
    if bars.is_empty() {
        let middle = (plot.top + plot.bottom) / 2 - GLYPH / 2;
        draw_centered(&mut image, plot.center_x(), middle, "no data", AXIS_COLOR);
        return image;
    }
    let slot = (plot.right - plot.left) / bars.len() as i64;
    let label_chars = ((slot - GLYPH) / GLYPH).max(1) as usize;
    for (i, bar) in (0i64..).zip(bars) {
        let center = plot.left + i * slot + slot / 2;
        match bar.value.filter(|v| v.is_finite()) {
            Some(value) => {
                let top = plot.y(value.clamp(0.0, 1.0));
                let (left, right) = (center - BAR_WIDTH / 2, center + BAR_WIDTH / 2 - 1);
                if top < plot.bottom {
                    let outline = darken(bar.color);
                    fill_rect(&mut image, left, top, right, plot.bottom - 1, outline);
                    fill_rect(
                        &mut image,
                        left + 1,
                        top + 1,
                        right - 1,
                        plot.bottom - 1,
                        bar.color,
                    );
                }
                let text = format!("{value:.3}");
                draw_centered(&mut image, center, top - GLYPH - 3, &text, AXIS_COLOR);
            }
            None => {
                let top = plot.bottom - GLYPH - 4;
                draw_centered(&mut image, center, top, "n/a", AXIS_COLOR);
            }
        }
        for (line, text) in (0i64..).zip(wrap(&bar.label, label_chars, LABEL_LINES)) {
            let top = plot.bottom + 8 + line * LINE_HEIGHT;
            draw_centered(&mut image, center, top, &text, AXIS_COLOR);
        }
    }
    image
}

/// A line chart with both axes on `0..1`, [`LINE_CHART_WIDTH`] by [`CHART_HEIGHT`] pixels,
/// with a legend (each series' colour and name) right of the plot.
///
/// Consecutive points of a series are joined by 2-pixel lines, clipped to the plot; a lone
/// point is drawn as a dot. Non-finite points are skipped and break the line. Series are
/// drawn in order, so later ones cover earlier ones where they overlap. The legend lists as
/// many series as fit (about twenty) and counts the rest.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> RgbImage {
    line_chart_on(title, &Axis::unit(x_label), &Axis::unit(y_label), series)
}

/// A line chart on the axes given, otherwise as [`line_chart`]: points are in the axes'
/// units, and a point outside an axis' range is clipped at the plot's edge (the line towards
/// it leaves the plot there).
pub fn line_chart_on(title: &str, x_axis: &Axis, y_axis: &Axis, series: &[Series]) -> RgbImage {
    let mut image = RgbImage::from_pixel(LINE_CHART_WIDTH, CHART_HEIGHT, BACKGROUND);
    let plot = Plot {
        left: PLOT_LEFT,
        top: PLOT_TOP,
        right: PLOT_LEFT + LINE_PLOT_WIDTH,
        bottom: PLOT_BOTTOM,
    };
    draw_frame(&mut image, &plot, title, y_axis);
    for (value, text) in x_axis.ticks() {
        let x = plot.x(x_axis.position(value));
        if x > plot.left {
            fill_rect(&mut image, x, plot.top, x, plot.bottom - 1, GRID_COLOR);
        }
        fill_rect(
            &mut image,
            x,
            plot.bottom + 1,
            x,
            plot.bottom + 4,
            AXIS_COLOR,
        );
        draw_centered(&mut image, x, plot.bottom + 7, &text, AXIS_COLOR);
    }
    let x_label = fit(&x_axis.label, (LINE_PLOT_WIDTH / GLYPH) as usize);
    draw_centered(
        &mut image,
        plot.center_x(),
        plot.bottom + 7 + 2 * LINE_HEIGHT,
        &x_label,
        AXIS_COLOR,
    );
    // Axes again, so gridlines never cover them.
    draw_axes(&mut image, &plot);
    for s in series {
        let mut previous: Option<(i64, i64)> = None;
        for &(x, y) in &s.points {
            let (x, y) = (x_axis.position(x), y_axis.position(y));
            if !(x.is_finite() && y.is_finite()) {
                previous = None;
                continue;
            }
            let point = (plot.x(x), plot.y(y));
            draw_line(&mut image, &plot, previous.unwrap_or(point), point, s.color);
            previous = Some(point);
        }
    }
    draw_legend(&mut image, plot.right + 16, plot.top, series);
    image
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
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Plot {
    /// The pixel column of `v` on the `0..1` x scale.
    fn x(&self, v: f64) -> i64 {
        let v = v.clamp(VALUE_LIMIT.0, VALUE_LIMIT.1);
        self.left + (v * (self.right - self.left) as f64).round() as i64
    }

    /// The pixel row of `v` on the `0..1` y scale.
    fn y(&self, v: f64) -> i64 {
        let v = v.clamp(VALUE_LIMIT.0, VALUE_LIMIT.1);
        self.bottom - (v * (self.bottom - self.top) as f64).round() as i64
    }

    fn center_x(&self) -> i64 {
        (self.left + self.right) / 2
    }

    fn contains(&self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }
}

/// Draws the title, the label of `y_axis`, the horizontal gridlines with its labelled ticks,
/// and the axes.
fn draw_frame(image: &mut RgbImage, plot: &Plot, title: &str, y_axis: &Axis) {
    let width = i64::from(image.width());
    // The title at double size when it fits, else at normal size, shortened if need be.
    let room = (width - 16).max(0);
    let chars = title.chars().count() as i64;
    let (scale, top) = if chars * GLYPH * 2 <= room {
        (2, TITLE_TOP)
    } else {
        (1, TITLE_TOP + GLYPH / 2)
    };
    let title = fit(title, (room / GLYPH) as usize);
    let title_width = text_width(&title) * scale;
    draw_text(
        image,
        (width - title_width) / 2,
        top,
        &title,
        AXIS_COLOR,
        scale,
    );
    let y_label = fit(&y_axis.label, ((width - 16) / GLYPH).max(0) as usize);
    draw_text(image, 8, Y_LABEL_TOP, &y_label, AXIS_COLOR, 1);
    for (value, text) in y_axis.ticks() {
        let y = plot.y(y_axis.position(value));
        if y < plot.bottom {
            fill_rect(image, plot.left + 1, y, plot.right, y, GRID_COLOR);
        }
        fill_rect(image, plot.left - 4, y, plot.left - 1, y, AXIS_COLOR);
        let x = plot.left - 6 - text_width(&text);
        draw_text(image, x, y - GLYPH / 2, &text, AXIS_COLOR, 1);
    }
    draw_axes(image, plot);
}

/// Draws the x axis (row `bottom`) and the y axis (column `left`).
fn draw_axes(image: &mut RgbImage, plot: &Plot) {
    fill_rect(
        image,
        plot.left,
        plot.bottom,
        plot.right,
        plot.bottom,
        AXIS_COLOR,
    );
    fill_rect(
        image,
        plot.left,
        plot.top,
        plot.left,
        plot.bottom,
        AXIS_COLOR,
    );
}

/// Draws a 2-pixel line from `a` to `b` (Bresenham, each point widened right and up),
/// painting only pixels inside the plot.
fn draw_line(image: &mut RgbImage, plot: &Plot, a: (i64, i64), b: (i64, i64), color: Rgb<u8>) {
    let (mut x, mut y) = a;
    let (dx, dy) = ((b.0 - x).abs(), -(b.1 - y).abs());
    let (sx, sy) = (if x < b.0 { 1 } else { -1 }, if y < b.1 { 1 } else { -1 });
    let mut err = dx + dy;
    loop {
        for (px, py) in [(x, y), (x + 1, y), (x, y - 1), (x + 1, y - 1)] {
            if plot.contains(px, py) {
                fill_rect(image, px, py, px, py, color);
            }
        }
        if (x, y) == b {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Draws the legend box with its top-left corner at `(left, top)`: a colour swatch and the
/// name of each series, as many as fit above the plot's bottom.
fn draw_legend(image: &mut RgbImage, left: i64, top: i64, series: &[Series]) {
    if series.is_empty() {
        return;
    }
    const ROW: i64 = 14;
    const PAD: i64 = 6;
    const SWATCH: i64 = 16;
    let name_chars = ((i64::from(image.width()) - left - 3 * PAD - SWATCH - 2) / GLYPH).max(1);
    let max_rows = ((PLOT_BOTTOM - top - 2 * PAD) / ROW).max(1) as usize;
    let (shown, hidden) = if series.len() > max_rows {
        (max_rows - 1, series.len() - (max_rows - 1))
    } else {
        (series.len(), 0)
    };
    let rows = (shown + usize::from(hidden > 0)) as i64;
    let right = left + 3 * PAD + SWATCH + name_chars * GLYPH;
    let bottom = top + 2 * PAD + rows * ROW - (ROW - GLYPH);
    // Outline.
    fill_rect(image, left, top, right, top, AXIS_COLOR);
    fill_rect(image, left, bottom, right, bottom, AXIS_COLOR);
    fill_rect(image, left, top, left, bottom, AXIS_COLOR);
    fill_rect(image, right, top, right, bottom, AXIS_COLOR);
    for (row, s) in (0i64..).zip(&series[..shown]) {
        let y = top + PAD + row * ROW;
        let x = left + PAD;
        fill_rect(image, x, y, x + SWATCH - 1, y + GLYPH - 1, s.color);
        let name = fit(&s.name, name_chars as usize);
        draw_text(image, x + SWATCH + PAD, y, &name, AXIS_COLOR, 1);
    }
    if hidden > 0 {
        let y = top + PAD + shown as i64 * ROW;
        let text = format!("+{hidden} more");
        draw_text(image, left + PAD, y, &text, AXIS_COLOR, 1);
    }
}

/// Width of `text` in the 8x8 font, in pixels.
fn text_width(text: &str) -> i64 {
    text.chars().count() as i64 * GLYPH
}

/// Draws `text` horizontally centred on column `center`, its top at row `top`.
fn draw_centered(image: &mut RgbImage, center: i64, top: i64, text: &str, color: Rgb<u8>) {
    draw_text(image, center - text_width(text) / 2, top, text, color, 1);
}

/// `text` if it has at most `max` characters, else its start ending in `..` (`max` in all).
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        ellipsize(text, max)
    }
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
            right: i64::from(width) - BAR_RIGHT_MARGIN,
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
    fn bar_center(width: u32, i: i64, n: i64) -> i64 {
        let plot = bar_plot(width);
        let slot = (plot.right - plot.left) / n;
        plot.left + i * slot + slot / 2
    }

    fn px(image: &RgbImage, x: i64, y: i64) -> Rgb<u8> {
        *image.get_pixel(x as u32, y as u32)
    }

    /// The first row from the plot's top down where column `x` is neither background nor
    /// gridline.
    fn first_painted_row(image: &RgbImage, x: i64) -> Option<i64> {
        (PLOT_TOP..PLOT_BOTTOM).find(|&y| ![BACKGROUND, GRID_COLOR].contains(&px(image, x, y)))
    }

    #[test]
    fn sizes() {
        let few = bar_chart("t", "y", &[bar("a", Some(0.5), RED)]);
        assert_eq!(few.dimensions(), (BAR_CHART_MIN_WIDTH, CHART_HEIGHT));
        let ten: Vec<Bar> = (0..10).map(|_| bar("a", Some(0.5), RED)).collect();
        let ten = bar_chart("t", "y", &ten);
        assert_eq!(
            ten.dimensions(),
            (PLOT_LEFT as u32 + 880 + 24, CHART_HEIGHT)
        );
        assert_eq!(bar_chart_width(10), ten.width());
        let line = line_chart("t", "x", "y", &[]);
        assert_eq!(line.dimensions(), (LINE_CHART_WIDTH, CHART_HEIGHT));
    }

    #[test]
    fn half_bar_reaches_half_the_plot_height() {
        let bars = [bar("car", Some(0.5), RED), bar("bus", Some(1.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars);
        let plot = bar_plot(image.width());
        let center = bar_center(image.width(), 0, 2);
        // Columns just inside the bar's edge, clear of the value printed above it.
        let edge = center - BAR_WIDTH / 2 + 2;
        let top = first_painted_row(&image, edge).expect("bar pixels");
        let half = plot.bottom - (plot.bottom - plot.top) / 2;
        assert!((top - half).abs() <= 1, "bar top {top}, half height {half}");
        assert_eq!(px(&image, center, (top + plot.bottom) / 2), RED);
        assert_eq!(px(&image, center, plot.bottom - 1), RED);
        assert_eq!(px(&image, center, plot.bottom), AXIS_COLOR);
        // The value is printed above the bar.
        let value_rows = top - GLYPH - 3..top - 3;
        let ink = value_rows
            .flat_map(|y| (center - 20..center + 20).map(move |x| (x, y)))
            .filter(|&(x, y)| px(&image, x, y) == AXIS_COLOR)
            .count();
        assert!(ink > 20, "{ink} value pixels");
    }

    #[test]
    fn full_bar_reaches_the_top_gridline() {
        let bars = [bar("car", Some(0.5), RED), bar("bus", Some(1.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars);
        let center = bar_center(image.width(), 1, 2);
        let edge = center - BAR_WIDTH / 2 + 2;
        assert_eq!(first_painted_row(&image, edge), Some(PLOT_TOP));
        assert_eq!(px(&image, edge, PLOT_TOP - 1), BACKGROUND);
        assert_eq!(px(&image, center, PLOT_TOP + 10), BLUE);
    }

    #[test]
    fn missing_values_draw_no_bar() {
        let bars = [
            bar("none", None, RED),
            bar("nan", Some(f64::NAN), RED),
            bar("inf", Some(f64::INFINITY), RED),
        ];
        let image = bar_chart("AP", "AP@0.5", &bars);
        let outline = darken(RED);
        assert!(image.pixels().all(|&p| p != RED && p != outline));
        // `n/a` is printed just above the axis instead.
        let center = bar_center(image.width(), 0, 3);
        let rows = PLOT_BOTTOM - GLYPH - 4..PLOT_BOTTOM - 4;
        assert!(rows
            .flat_map(|y| (center - 12..center + 12).map(move |x| (x, y)))
            .any(|(x, y)| px(&image, x, y) == AXIS_COLOR));
    }

    #[test]
    fn values_are_clamped() {
        let bars = [bar("hi", Some(3.0), RED), bar("lo", Some(-2.0), BLUE)];
        let image = bar_chart("AP", "AP@0.5", &bars);
        let edge = bar_center(image.width(), 0, 2) - BAR_WIDTH / 2 + 2;
        assert_eq!(first_painted_row(&image, edge), Some(PLOT_TOP));
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
        let image = line_chart("PR", "recall", "precision", &series);
        let plot = line_plot();
        assert_eq!(px(&image, plot.left, plot.top), RED);
        assert_eq!(px(&image, plot.right, plot.bottom), RED);
        let (mx, my) = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
        let near_middle = (mx - 1..=mx + 1)
            .flat_map(|x| (my - 1..=my + 1).map(move |y| (x, y)))
            .any(|(x, y)| px(&image, x, y) == RED);
        assert!(near_middle);
        // Nothing outside the plot but the legend swatch.
        let legend_x = plot.right + 16 + 6;
        assert_eq!(px(&image, legend_x + 4, plot.top + 6 + 4), RED);
        for (x, y, p) in image.enumerate_pixels() {
            if *p == RED {
                let (x, y) = (i64::from(x), i64::from(y));
                assert!(plot.contains(x, y) || x >= legend_x, "({x}, {y})");
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
        let image = line_chart("PR", "recall", "precision", &series);
        let plot = line_plot();
        // Both ends are dots, the middle stays empty.
        assert_eq!(px(&image, plot.left, plot.bottom), RED);
        assert_eq!(px(&image, plot.right, plot.top), RED);
        let (mx, my) = ((plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
        assert!((mx - 3..=mx + 3)
            .flat_map(|x| (my - 3..=my + 3).map(move |y| (x, y)))
            .all(|(x, y)| px(&image, x, y) != RED));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        bar_chart("", "", &[]);
        bar_chart(&"long title ".repeat(40), &"y".repeat(500), &[]);
        let bars = [
            bar("", Some(f64::NEG_INFINITY), RED),
            bar(&"x".repeat(100), Some(f64::MAX), RED),
            bar("véhicule à moteur", Some(f64::MIN_POSITIVE), RED),
            bar("   ", Some(-0.0), RED),
        ];
        bar_chart("t", "y", &bars);
        line_chart("", "", "", &[]);
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
        line_chart("t", "x", "y", &[weird, empty]);
        line_chart("t", "x", "y", &many);
    }

    #[test]
    fn title_is_drawn() {
        let is_ink = |image: &RgbImage| {
            (0..PLOT_TOP as u32 - 30)
                .flat_map(|y| (0..image.width()).map(move |x| (x, y)))
                .filter(|&(x, y)| *image.get_pixel(x, y) != BACKGROUND)
                .count()
        };
        assert!(is_ink(&bar_chart("AP@0.5 per class", "", &[])) > 50);
        assert!(is_ink(&line_chart("Precision-recall", "", "", &[])) > 50);
        assert_eq!(is_ink(&line_chart("", "", "", &[])), 0);
    }

    #[test]
    fn labels_wrap_at_spaces() {
        assert_eq!(wrap("traffic light", 10, 3), ["traffic", "light"]);
        assert_eq!(wrap("motorcycle", 10, 3), ["motorcycle"]);
        assert_eq!(wrap("a b c", 10, 3), ["a b c"]);
        assert_eq!(wrap("abcdefghijkl", 5, 3), ["abcde", "fghij", "kl"]);
        assert_eq!(wrap("abcdefghijklmnop", 5, 3), ["abcde", "fghij", "klm.."]);
        assert_eq!(wrap("  ", 5, 3), Vec::<String>::new());
        assert_eq!(fit("precision", 6), "prec..");
        assert_eq!(fit("ab", 6), "ab");
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
            line_chart_on("t", &axis, &axis, &[]);
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
        let image = line_chart_on("Loss", &x, &y, &series);
        let plot = line_plot();
        assert_eq!(px(&image, plot.left, plot.top), RED);
        assert_eq!(
            px(&image, plot.center_x(), (plot.top + plot.bottom) / 2),
            RED
        );
        assert_eq!(px(&image, plot.right, plot.bottom), RED);
        // A value a log axis cannot show breaks the line.
        let series = [Series {
            name: "loss".to_string(),
            color: RED,
            points: vec![(0.0, 0.1), (50.0, 0.0), (100.0, 0.1)],
        }];
        let image = line_chart_on("Loss", &x, &y, &series);
        assert_eq!(px(&image, plot.left, plot.bottom), RED);
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
