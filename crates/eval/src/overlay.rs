//! Drawing predictions onto camera frames (`percept predict`).
//!
//! Drawing order: drivable area (translucent green tint), lane lines (opaque magenta), boxes
//! (2-pixel outlines in a per-class colour), then one label per box with the class name and
//! score. Labels are drawn in DejaVu Sans (the charts' font, [`crate::font`]) with `ab_glyph`
//! directly, antialiased over the label's background; plotters is not used here, as its text
//! placement is not exact enough to fit a label tightly into its box. Everything is clipped
//! to the image, so boxes partly or wholly outside it are fine.

use ab_glyph::{point, Font, ScaleFont};
use image::{GrayImage, Rgb, RgbImage};

use crate::metrics::Detection;

/// Colour the drivable area is tinted with.
pub const DRIVABLE_COLOR: Rgb<u8> = Rgb([0, 255, 0]);
/// Opacity of the drivable-area tint.
pub const DRIVABLE_ALPHA: f32 = 0.4;
/// Colour lane-line pixels are painted with.
pub const LANE_COLOR: Rgb<u8> = Rgb([255, 0, 255]);
/// Thickness of box outlines, in pixels.
pub const BOX_THICKNESS: i64 = 2;

/// Box colours, indexed by `class % PALETTE.len()`; none is the drivable green or lane magenta.
const PALETTE: [[u8; 3]; 10] = [
    [255, 140, 0],   // orange
    [0, 160, 255],   // sky blue
    [255, 220, 0],   // yellow
    [0, 255, 255],   // cyan
    [230, 30, 30],   // red
    [140, 80, 255],  // violet
    [255, 255, 255], // white
    [0, 80, 200],    // blue
    [255, 160, 200], // pink
    [170, 255, 90],  // lime
];

/// Size of the label font, in pixels (ascent to descent).
pub const LABEL_FONT_SIZE: f32 = 13.0;
/// Height of a label's line of text, in pixels.
const LABEL_TEXT_HEIGHT: i64 = 13;
/// Padding around label text, in pixels.
const LABEL_PAD: i64 = 1;
/// Coordinates are clamped to this magnitude before conversion to integers, so arithmetic on
/// absurd (but finite) boxes cannot overflow.
const COORD_LIMIT: f32 = 1.0e9;

/// The outline colour of boxes of `class`.
pub fn class_color(class: u16) -> Rgb<u8> {
    Rgb(PALETTE[usize::from(class) % PALETTE.len()])
}

/// Draws segmentation masks and detections over a copy of `image`.
///
/// * `drivable`, `lanes`: masks where non-zero (normally `1`) marks the class. They are meant
///   to have the image's size; a mask of another size is sampled nearest-neighbour onto the
///   image (so a network-resolution mask can be passed directly), and an empty mask is
///   ignored.
/// * `detections`: boxes in image pixels. Each gets a [`BOX_THICKNESS`]-pixel outline drawn
///   just inside its extent in [`class_color`], and a filled label `"{class_name} {score:.2}"`
///   above it (inside it when there is no room above). Boxes with non-finite coordinates or
///   entirely outside the image are skipped.
/// * `class_names`: names by class index; a class without a name is labelled `#<index>`.
///   Any character DejaVu Sans has is drawn (accents included).
///
/// The result has the input's size.
pub fn draw_overlay(
    image: &RgbImage,
    drivable: Option<&GrayImage>,
    lanes: Option<&GrayImage>,
    detections: &[Detection],
    class_names: &[String],
) -> RgbImage {
    let mut out = image.clone();
    if let Some(mask) = drivable {
        for_each_mask_pixel(&mut out, mask, |px| {
            for (c, tint) in px.0.iter_mut().zip(DRIVABLE_COLOR.0) {
                let blended =
                    f32::from(*c) * (1.0 - DRIVABLE_ALPHA) + f32::from(tint) * DRIVABLE_ALPHA;
                *c = blended.round().clamp(0.0, 255.0) as u8;
            }
        });
    }
    if let Some(mask) = lanes {
        for_each_mask_pixel(&mut out, mask, |px| *px = LANE_COLOR);
    }
    // All outlines first, so no box covers another's label.
    let boxes: Vec<(PixelBox, &Detection)> = detections
        .iter()
        .filter_map(|d| PixelBox::of(d, out.width(), out.height()).map(|b| (b, d)))
        .collect();
    for (b, det) in &boxes {
        draw_outline(&mut out, b, class_color(det.class));
    }
    for (b, det) in &boxes {
        let name = class_names
            .get(usize::from(det.class))
            .cloned()
            .unwrap_or_else(|| format!("#{}", det.class));
        draw_label(
            &mut out,
            b,
            &format!("{name} {:.2}", det.score),
            class_color(det.class),
        );
    }
    out
}

/// Calls `f` on every pixel of `image` whose (nearest-neighbour sampled) mask value is non-zero.
fn for_each_mask_pixel(image: &mut RgbImage, mask: &GrayImage, mut f: impl FnMut(&mut Rgb<u8>)) {
    let (w, h) = image.dimensions();
    let (mw, mh) = mask.dimensions();
    if mw == 0 || mh == 0 {
        return;
    }
    let same_size = (mw, mh) == (w, h);
    for (x, y, px) in image.enumerate_pixels_mut() {
        let (mx, my) = if same_size {
            (x, y)
        } else {
            // Pixel centres: (x + 0.5) * mw / w, rounded down; always < mw.
            (
                ((2 * u64::from(x) + 1) * u64::from(mw) / (2 * u64::from(w))) as u32,
                ((2 * u64::from(y) + 1) * u64::from(mh) / (2 * u64::from(h))) as u32,
            )
        };
        if mask.get_pixel(mx, my).0[0] != 0 {
            f(px);
        }
    }
}

/// A box in whole pixels: inclusive column and row ranges, possibly beyond the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelBox {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl PixelBox {
    /// The pixels a detection covers (at least one), or `None` when its coordinates are not
    /// finite or it lies entirely outside a `width x height` image.
    fn of(det: &Detection, width: u32, height: u32) -> Option<Self> {
        let coords = [det.x1, det.y1, det.x2, det.y2];
        if coords.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let [x1, y1, x2, y2] = coords.map(|v| v.clamp(-COORD_LIMIT, COORD_LIMIT));
        // Continuous [x1, x2) covers columns floor(x1) ..= ceil(x2) - 1.
        let left = x1.min(x2).floor() as i64;
        let top = y1.min(y2).floor() as i64;
        let right = (x1.max(x2).ceil() as i64 - 1).max(left);
        let bottom = (y1.max(y2).ceil() as i64 - 1).max(top);
        let visible =
            right >= 0 && bottom >= 0 && left < i64::from(width) && top < i64::from(height);
        visible.then_some(Self {
            left,
            top,
            right,
            bottom,
        })
    }
}

/// Fills the inclusive rectangle `[x0, x1] x [y0, y1]`, clipped to the image.
fn fill_rect(image: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb<u8>) {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let (x0, x1) = (x0.max(0), x1.min(w - 1));
    let (y0, y1) = (y0.max(0), y1.min(h - 1));
    if x0 > x1 || y0 > y1 {
        return;
    }
    // In range: 0 <= x0 <= x1 < w <= u32::MAX, likewise for y.
    for y in y0..=y1 {
        for x in x0..=x1 {
            image.put_pixel(x as u32, y as u32, color);
        }
    }
}

/// Draws a [`BOX_THICKNESS`]-pixel outline along the inside of `b`.
fn draw_outline(image: &mut RgbImage, b: &PixelBox, color: Rgb<u8>) {
    let t = BOX_THICKNESS - 1;
    let PixelBox {
        left,
        top,
        right,
        bottom,
    } = *b;
    fill_rect(image, left, top, right, (top + t).min(bottom), color);
    fill_rect(image, left, (bottom - t).max(top), right, bottom, color);
    fill_rect(image, left, top, (left + t).min(right), bottom, color);
    fill_rect(image, (right - t).max(left), top, right, bottom, color);
}

/// Draws `text` on a filled `background` rectangle above `b` (inside it when the box touches
/// the top of the image), shifted left if needed to stay within the image.
fn draw_label(image: &mut RgbImage, b: &PixelBox, text: &str, background: Rgb<u8>) {
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let label_w = text_width(text) + 2 * LABEL_PAD;
    let label_h = LABEL_TEXT_HEIGHT + 2 * LABEL_PAD;
    let x0 = b.left.min(w - label_w).max(0);
    let y0 = if b.top - label_h >= 0 {
        b.top - label_h
    } else {
        b.top.clamp(0, (h - label_h).max(0))
    };
    fill_rect(
        image,
        x0,
        y0,
        x0 + label_w - 1,
        y0 + label_h - 1,
        background,
    );
    draw_text(
        image,
        x0 + LABEL_PAD,
        y0 + LABEL_PAD,
        text,
        text_color(background),
    );
}

/// The width of `text` in the label font, in whole pixels.
fn text_width(text: &str) -> i64 {
    crate::font::text_width(text, LABEL_FONT_SIZE).ceil() as i64
}

/// Draws `text` in DejaVu Sans at [`LABEL_FONT_SIZE`] with the top of its line at row `y`
/// and its start at column `x`, antialiased (each pixel blended towards `color` by the
/// glyph's coverage), clipped to the image.
fn draw_text(image: &mut RgbImage, x: i64, y: i64, text: &str, color: Rgb<u8>) {
    let font = crate::font::font().as_scaled(LABEL_FONT_SIZE);
    let (w, h) = (i64::from(image.width()), i64::from(image.height()));
    let mut caret = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(p) = previous {
            caret += font.kern(p, id);
        }
        previous = Some(id);
        let glyph = id.with_scale_and_position(LABEL_FONT_SIZE, point(caret, font.ascent()));
        caret += font.h_advance(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        let (left, top) = (x + bounds.min.x as i64, y + bounds.min.y as i64);
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (left + i64::from(gx), top + i64::from(gy));
            if (0..w).contains(&px) && (0..h).contains(&py) {
                let pixel = image.get_pixel_mut(px as u32, py as u32);
                let a = coverage.clamp(0.0, 1.0);
                for (c, ink) in pixel.0.iter_mut().zip(color.0) {
                    *c = (f32::from(*c) * (1.0 - a) + f32::from(ink) * a).round() as u8;
                }
            }
        });
    }
}

/// Black or white, whichever reads better on `background`.
fn text_color(background: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = background.0.map(u32::from);
    // ITU-R BT.601 luma, scaled by 1000.
    if 299 * r + 587 * g + 114 * b > 128 * 1000 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: Rgb<u8> = Rgb([100, 100, 100]);

    fn grey(w: u32, h: u32) -> RgbImage {
        RgbImage::from_pixel(w, h, GREY)
    }

    fn det(class: u16, score: f32, b: [f32; 4]) -> Detection {
        Detection::new(class as usize, score, b)
    }

    fn names() -> Vec<String> {
        vec!["car".to_string(), "person".to_string()]
    }

    #[test]
    fn size_is_preserved_and_nothing_changes_without_predictions() {
        let img = grey(37, 21);
        let out = draw_overlay(&img, None, None, &[], &names());
        assert_eq!(out.dimensions(), (37, 21));
        assert_eq!(out, img);
        let empty = RgbImage::new(0, 0);
        let out = draw_overlay(
            &empty,
            None,
            None,
            &[det(0, 0.5, [0.0, 0.0, 5.0, 5.0])],
            &[],
        );
        assert_eq!(out.dimensions(), (0, 0));
    }

    #[test]
    fn drivable_is_tinted_and_lanes_painted() {
        let img = grey(8, 4);
        let mut drivable = GrayImage::new(8, 4);
        drivable.put_pixel(2, 1, image::Luma([1]));
        drivable.put_pixel(3, 1, image::Luma([1]));
        let mut lanes = GrayImage::new(8, 4);
        lanes.put_pixel(3, 1, image::Luma([1]));
        let out = draw_overlay(&img, Some(&drivable), Some(&lanes), &[], &[]);
        // 100 * 0.6 + 255 * 0.4 = 162 in green; 100 * 0.6 = 60 in red and blue.
        assert_eq!(*out.get_pixel(2, 1), Rgb([60, 162, 60]));
        assert!(out.get_pixel(2, 1).0[1] > img.get_pixel(2, 1).0[1]);
        // Lanes are drawn over the drivable area.
        assert_eq!(*out.get_pixel(3, 1), LANE_COLOR);
        assert_eq!(*out.get_pixel(0, 0), GREY);
    }

    #[test]
    fn masks_of_another_size_are_resampled() {
        let img = grey(8, 4);
        // 2x1 mask: left half drivable.
        let drivable = GrayImage::from_raw(2, 1, vec![1, 0]).unwrap();
        let out = draw_overlay(&img, Some(&drivable), Some(&GrayImage::new(0, 0)), &[], &[]);
        for y in 0..4 {
            for x in 0..8 {
                let tinted = *out.get_pixel(x, y) != GREY;
                assert_eq!(tinted, x < 4, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn box_edges_have_class_color() {
        let img = grey(100, 80);
        // Covers columns 20..=39 and rows 30..=49.
        let out = draw_overlay(
            &img,
            None,
            None,
            &[det(1, 0.87, [20.0, 30.0, 40.0, 50.0])],
            &names(),
        );
        let color = class_color(1);
        for (x, y) in [(20, 40), (21, 40), (39, 40), (38, 40), (30, 48), (30, 49)] {
            assert_eq!(*out.get_pixel(x, y), color, "edge pixel ({x}, {y})");
        }
        // Inside and just outside the outline are untouched.
        for (x, y) in [(22, 40), (37, 40), (30, 47), (19, 40), (40, 40), (30, 50)] {
            assert_eq!(*out.get_pixel(x, y), GREY, "pixel ({x}, {y})");
        }
        // The top edge (rows 30, 31) is under no label: the label sits above, rows 20..=29.
        assert_eq!(*out.get_pixel(30, 31), color);
    }

    #[test]
    fn label_is_drawn_with_text() {
        let img = grey(100, 80);
        let out = draw_overlay(
            &img,
            None,
            None,
            &[det(0, 0.5, [20.0, 30.0, 40.0, 50.0])],
            &names(),
        );
        // "car 0.50": a label of its text's width plus padding, 15 rows high, ending just
        // above the box (rows 15..=29).
        let right = 20 + text_width("car 0.50") + 2 * LABEL_PAD - 1;
        assert!((45..=75).contains(&right), "{right}");
        let (top, bottom) = (30 - LABEL_TEXT_HEIGHT - 2 * LABEL_PAD, 29);
        let bg = class_color(0);
        let ink = text_color(bg);
        let (mut bg_count, mut ink_count) = (0, 0);
        for y in top..=bottom {
            for x in 20..=right {
                let p = *out.get_pixel(x as u32, y as u32);
                if p == bg {
                    bg_count += 1;
                } else {
                    // Ink, or antialiased edges between background and ink.
                    for ((c, b), i) in p.0.iter().zip(bg.0).zip(ink.0) {
                        assert!(b.min(i) <= *c && *c <= b.max(i), "{p:?} at ({x}, {y})");
                    }
                    ink_count += 1;
                }
            }
        }
        assert!(ink_count > 20, "{ink_count} text pixels");
        assert!(bg_count > ink_count);
        assert_eq!(*out.get_pixel(20, top as u32 - 1), GREY);
        assert_eq!(*out.get_pixel(right as u32 + 1, 25), GREY);
        // The padding ring is background only.
        assert_eq!(*out.get_pixel(20, top as u32), bg);
        assert_eq!(*out.get_pixel(right as u32, 29), bg);
    }

    #[test]
    fn label_goes_inside_at_top_edge_and_stays_in_image() {
        let img = grey(40, 40);
        // Box at the top-right corner: label inside, starting at row 0, shifted left to fit.
        let out = draw_overlay(
            &img,
            None,
            None,
            &[det(0, 0.5, [30.0, 0.0, 40.0, 20.0])],
            &names(),
        );
        // "car 0.50" is wider than the room right of the box: it ends at the image's edge.
        // It is wider than the image, so it starts at column 0.
        assert!(text_width("car 0.50") + 2 * LABEL_PAD > 40);
        let bg = class_color(0);
        let label_h = (LABEL_TEXT_HEIGHT + 2 * LABEL_PAD) as u32;
        assert_eq!(*out.get_pixel(0, 0), bg);
        assert_eq!(*out.get_pixel(0, label_h - 1), bg);
        assert_eq!(*out.get_pixel(0, label_h), GREY);
    }

    #[test]
    fn boxes_outside_the_image_do_not_panic() {
        let img = grey(30, 20);
        let dets = [
            det(0, 0.9, [-10.0, -10.0, 5.0, 5.0]),
            det(1, 0.9, [25.0, 15.0, 60.0, 60.0]),
            det(0, 0.9, [100.0, 100.0, 200.0, 200.0]),
            det(0, 0.9, [-50.0, -50.0, -10.0, -10.0]),
            det(1, 0.9, [-1e30, -1e30, 1e30, 1e30]),
            det(0, 0.9, [f32::MAX, f32::MIN, f32::MIN, f32::MAX]),
            det(0, 0.9, [f32::NAN, 0.0, 10.0, 10.0]),
            det(0, 0.9, [0.0, f32::INFINITY, 10.0, 10.0]),
            det(0, 0.9, [5.0, 5.0, 5.0, 5.0]),
            det(0, 0.9, [12.0, 8.0, 4.0, 2.0]),
            det(999, f32::NAN, [1.0, 1.0, 3.0, 3.0]),
        ];
        let out = draw_overlay(&img, None, None, &dets, &names());
        assert_eq!(out.dimensions(), (30, 20));

        // A box reaching in from the top-left (columns and rows -10..=14) outlines its visible
        // part; its label sits inside, at rows 0..=14.
        let out = draw_overlay(
            &img,
            None,
            None,
            &[det(0, 0.9, [-10.0, -10.0, 15.0, 15.0])],
            &names(),
        );
        assert_eq!(*out.get_pixel(0, 0), class_color(0));
        assert_eq!(*out.get_pixel(0, 14), class_color(0));
        assert_eq!(*out.get_pixel(0, 15), GREY);
        assert_eq!(*out.get_pixel(16, 16), GREY);

        // A box wholly outside draws nothing, not even its label.
        let out = draw_overlay(
            &img,
            None,
            None,
            &[det(0, 0.9, [100.0, 5.0, 120.0, 15.0])],
            &names(),
        );
        assert_eq!(out, img);
    }

    #[test]
    fn unknown_class_and_non_ascii_names_are_labelled() {
        let img = grey(100, 40);
        let out = draw_overlay(
            &img,
            None,
            None,
            &[
                det(5, 0.5, [10.0, 20.0, 20.0, 30.0]),
                det(0, 0.5, [60.0, 20.0, 70.0, 30.0]),
            ],
            &["véhicule".to_string()],
        );
        assert_ne!(out, img);
        // DejaVu Sans has accented letters: "é" is not drawn as "?".
        assert_ne!(text_width("é"), 0);
        let (mut a, mut b) = (grey(20, 20), grey(20, 20));
        draw_text(&mut a, 2, 2, "é", Rgb([0, 0, 0]));
        draw_text(&mut b, 2, 2, "?", Rgb([0, 0, 0]));
        assert_ne!(a, b);
    }
}
