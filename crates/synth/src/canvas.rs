//! Raster primitives of the scene renderer: a float RGB buffer with per-pixel object ownership
//! (for occlusion accounting and tight boxes) and the two label masks.
//!
//! Every primitive writes pixels directly into the buffers: no allocation per pixel or per
//! primitive. Colours are sRGB-ish in 0..1; each write goes through the current *shade*
//! (`colour * mul + add`), which folds in ambient light and depth fog, so lighting costs
//! nothing per pixel.

/// An RGB colour, components in 0..1.
pub(crate) type Col = [f32; 3];

/// Scales a colour.
pub(crate) fn scale(c: Col, k: f32) -> Col {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Linear blend `a + (b - a) * t`.
pub(crate) fn mix(a: Col, b: Col, t: f32) -> Col {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// `floor` without a libm call (the baseline x86-64 target has no rounding instruction);
/// exact for |x| < 2^31.
#[inline]
pub(crate) fn ffloor(x: f32) -> f32 {
    let t = x as i32 as f32;
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// Fractional part in 0..1 (like `rem_euclid(1.0)`, without a libm call).
#[inline]
pub(crate) fn frac(x: f32) -> f32 {
    x - ffloor(x)
}

/// A table of 4096 triangular noise values in -1..1 (standard deviation 0.408).
///
/// Per-pixel noise reads the table at a random offset per row: as good as a hash per pixel to
/// the eye, and a plain load instead of a hash in the hottest loops.
pub(crate) struct NoiseTable {
    vals: Vec<f32>,
}

impl NoiseTable {
    pub const MASK: usize = 4095;

    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let vals = (0..=Self::MASK)
            .map(|_| {
                state = state.wrapping_add(0xa076_1d64_78bd_642f);
                let t = (state as u128).wrapping_mul((state ^ 0xe703_7ed1_a0b4_28db) as u128);
                let bits = ((t >> 64) as u64) ^ (t as u64);
                let a = (bits & 0xffff) as f32 / 65535.0;
                let b = ((bits >> 16) & 0xffff) as f32 / 65535.0;
                a + b - 1.0
            })
            .collect();
        NoiseTable { vals }
    }

    /// Start offset for row `y` (a different, scattered offset per row).
    #[inline]
    pub fn row_offset(&self, y: usize, salt: u32) -> usize {
        ((hash2(y as i32, 0x51ed, salt) * 0.5 + 0.5) * Self::MASK as f32) as usize
    }

    #[inline]
    pub fn at(&self, i: usize) -> f32 {
        self.vals[i & Self::MASK]
    }
}

/// Cheap integer hash to a float in -1..1 (texture grain; deterministic per position).
#[inline]
pub(crate) fn hash2(x: i32, y: i32, seed: u32) -> f32 {
    let mut h = (x as u32).wrapping_mul(0x27d4_eb2d) ^ (y as u32).wrapping_mul(0x1656_67b1) ^ seed;
    h ^= h >> 15;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    (h as f32 / u32::MAX as f32) * 2.0 - 1.0
}

/// Inclusive pixel extent of a labelled object: `[min_x, min_y, max_x, max_y]`.
pub(crate) type Extent = [i32; 4];
const EMPTY_EXTENT: Extent = [i32::MAX, i32::MAX, i32::MIN, i32::MIN];

pub(crate) struct Canvas {
    pub w: usize,
    pub h: usize,
    /// `[h, w]` colours.
    pub rgb: Vec<Col>,
    /// `[h, w]` id of the object drawn last at each pixel (0: background or unlabelled).
    pub owner: Vec<u16>,
    /// `[h, w]` drivable mask, 0/1.
    pub drivable: Vec<u8>,
    /// `[h, w]` lane-marking mask, 0/1.
    pub lanes: Vec<u8>,
    /// Per object id, the extent of the pixels it won (index 0 unused).
    pub extents: Vec<Extent>,
    /// Current shade: written colour = `c * mul + add`.
    mul: Col,
    add: Col,
    /// Current opacity multiplier (soft shadows, clouds, rain).
    pub alpha: f32,
    /// Solid paint occludes: it claims pixels for `id` and clears both masks there.
    /// Decals (markings, shadows, glows) leave ownership and masks alone.
    pub solid: bool,
    /// Object id claimed by solid paint.
    pub id: u16,
    /// Ambient light multiplier (time of day and weather).
    pub ambient: Col,
    /// Fog/haze colour and visibility (metres at which fog covers 63%).
    pub fog: Col,
    pub visibility: f32,
}

impl Canvas {
    pub fn new(w: usize, h: usize, ambient: Col, fog: Col, visibility: f32) -> Self {
        Canvas {
            w,
            h,
            rgb: vec![[0.0; 3]; w * h],
            owner: vec![0; w * h],
            drivable: vec![0; w * h],
            lanes: vec![0; w * h],
            extents: vec![EMPTY_EXTENT],
            mul: [1.0; 3],
            add: [0.0; 3],
            alpha: 1.0,
            solid: true,
            id: 0,
            ambient,
            fog,
            visibility,
        }
    }

    /// Registers a new labelled object and makes solid paint claim pixels for it.
    pub fn begin_object(&mut self) -> u16 {
        self.extents.push(EMPTY_EXTENT);
        // More than 65535 objects never happens (a scene has a few dozen); saturate anyway.
        self.id = (self.extents.len() - 1).min(u16::MAX as usize) as u16;
        self.id
    }

    /// Ends labelled drawing: further solid paint is unlabelled (id 0).
    pub fn end_object(&mut self) {
        self.id = 0;
    }

    /// Fraction of fog at depth `z`.
    pub fn fog_alpha(&self, z: f32) -> f32 {
        1.0 - (-z.max(0.0) / self.visibility).exp()
    }

    /// Shade for a lit surface at depth `z` (ambient light, then fog).
    pub fn at_depth(&mut self, z: f32) {
        let a = self.fog_alpha(z);
        for c in 0..3 {
            self.mul[c] = self.ambient[c] * (1.0 - a);
            self.add[c] = self.fog[c] * a;
        }
    }

    /// Shade for a light source at depth `z`: not darkened by ambient light, and it shines
    /// through fog better than a lit surface does.
    pub fn emissive(&mut self, z: f32) {
        let a = self.fog_alpha(z) * 0.6;
        self.mul = [1.0 - a; 3];
        self.add = scale(self.fog, a);
    }

    /// Shade that writes colours unchanged.
    pub fn unshaded(&mut self) {
        self.mul = [1.0; 3];
        self.add = [0.0; 3];
    }

    #[inline]
    pub fn shaded(&self, c: Col) -> Col {
        [
            c[0] * self.mul[0] + self.add[0],
            c[1] * self.mul[1] + self.add[1],
            c[2] * self.mul[2] + self.add[2],
        ]
    }

    /// Writes a shaded colour with coverage `cov` at in-bounds pixel (x, y).
    #[inline]
    pub fn put(&mut self, x: usize, y: usize, c: Col, cov: f32) {
        let sc = self.shaded(c);
        self.put_raw(x, y, sc, cov);
    }

    /// Writes an already shaded colour with coverage `cov` at in-bounds pixel (x, y).
    #[inline]
    pub fn put_raw(&mut self, x: usize, y: usize, sc: Col, cov: f32) {
        let i = y * self.w + x;
        let a = cov * self.alpha;
        let p = &mut self.rgb[i];
        if a >= 0.999 {
            *p = sc;
        } else if a > 0.0 {
            *p = mix(*p, sc, a);
        }
        if self.solid && a >= 0.5 {
            self.owner[i] = self.id;
            self.drivable[i] = 0;
            self.lanes[i] = 0;
            if self.id > 0 {
                let e = &mut self.extents[self.id as usize];
                let (x, y) = (x as i32, y as i32);
                e[0] = e[0].min(x);
                e[1] = e[1].min(y);
                e[2] = e[2].max(x);
                e[3] = e[3].max(y);
            }
        }
    }

    /// Fills row `y` over the continuous interval `[xl, xr)` with exact horizontal coverage
    /// at the ends, times `row_cov`.
    pub fn span(&mut self, y: i32, xl: f32, xr: f32, c: Col, row_cov: f32) {
        // `partial_cmp` so NaN coordinates draw nothing.
        if y < 0
            || y as usize >= self.h
            || xr.partial_cmp(&xl) != Some(std::cmp::Ordering::Greater)
            || row_cov <= 0.0
        {
            return;
        }
        let xl = xl.max(0.0);
        let xr = xr.min(self.w as f32);
        if xr <= xl {
            return;
        }
        let sc = self.shaded(c);
        let (i0, i1) = (xl.floor() as usize, (xr.ceil() as usize).min(self.w));
        for x in i0..i1 {
            let cov = ((x + 1) as f32).min(xr) - (x as f32).max(xl);
            self.put_raw(x, y as usize, sc, cov.clamp(0.0, 1.0) * row_cov);
        }
    }

    /// Axis-aligned rectangle `[x0, x1) x [y0, y1)` with coverage on all four edges.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Col) {
        let (x0, x1) = (x0.min(x1), x0.max(x1));
        let (y0, y1) = (y0.min(y1), y0.max(y1));
        // Keep sub-pixel rectangles visible as faint single pixels rather than vanishing.
        let ys = (
            y0.max(0.0).floor() as i32,
            (y1.min(self.h as f32).ceil() as i32),
        );
        for y in ys.0..ys.1 {
            let cov = ((y + 1) as f32).min(y1) - (y as f32).max(y0);
            self.span(y, x0, x1, c, cov.clamp(0.0, 1.0));
        }
    }

    /// Convex polygon (any winding), sampled at pixel-row centres.
    pub fn poly(&mut self, pts: &[(f32, f32)], c: Col) {
        if pts.len() < 3 {
            return;
        }
        let (mut ymin, mut ymax) = (f32::MAX, f32::MIN);
        for p in pts {
            ymin = ymin.min(p.1);
            ymax = ymax.max(p.1);
        }
        if !(ymin.is_finite() && ymax.is_finite()) {
            return;
        }
        let y0 = ymin.max(0.0).floor() as i32;
        let y1 = (ymax.min(self.h as f32).ceil() as i32).min(self.h as i32);
        for y in y0..y1 {
            let yc = y as f32 + 0.5;
            let (mut xl, mut xr) = (f32::MAX, f32::MIN);
            for k in 0..pts.len() {
                let (a, b) = (pts[k], pts[(k + 1) % pts.len()]);
                if (a.1 <= yc && b.1 > yc) || (b.1 <= yc && a.1 > yc) {
                    let x = a.0 + (yc - a.1) / (b.1 - a.1) * (b.0 - a.0);
                    xl = xl.min(x);
                    xr = xr.max(x);
                }
            }
            if xl < xr {
                self.span(y, xl, xr, c, 1.0);
            }
        }
    }

    /// Filled ellipse; radii below half a pixel are raised so small lamps stay visible.
    pub fn ellipse(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, c: Col) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let y0 = (cy - ry).max(0.0).floor() as i32;
        let y1 = ((cy + ry).min(self.h as f32).ceil() as i32).min(self.h as i32);
        for y in y0..y1 {
            let t = (y as f32 + 0.5 - cy) / ry;
            if t.abs() < 1.0 {
                let hw = rx * (1.0 - t * t).sqrt();
                self.span(y, cx - hw, cx + hw, c, 1.0);
            }
        }
    }

    /// Elliptical ring of thickness `t` pixels (a wheel seen from the side).
    pub fn ring(&mut self, cx: f32, cy: f32, rx: f32, ry: f32, t: f32, c: Col) {
        let (rx, ry) = (rx.max(0.5), ry.max(0.5));
        let (irx, iry) = ((rx - t).max(0.0), (ry - t).max(0.0));
        let y0 = (cy - ry).max(0.0).floor() as i32;
        let y1 = ((cy + ry).min(self.h as f32).ceil() as i32).min(self.h as i32);
        for y in y0..y1 {
            let dy = y as f32 + 0.5 - cy;
            let t_out = dy / ry;
            if t_out.abs() >= 1.0 {
                continue;
            }
            let ho = rx * (1.0 - t_out * t_out).sqrt();
            let t_in = if iry > 0.0 { dy / iry } else { 2.0 };
            if t_in.abs() < 1.0 {
                let hi = irx * (1.0 - t_in * t_in).sqrt();
                self.span(y, cx - ho, cx - hi, c, 1.0);
                self.span(y, cx + hi, cx + ho, c, 1.0);
            } else {
                self.span(y, cx - ho, cx + ho, c, 1.0);
            }
        }
    }

    /// Thick line segment as a quad.
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, c: Col) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-4 {
            return;
        }
        let hw = width.max(0.7) * 0.5;
        let (nx, ny) = (-dy / len * hw, dx / len * hw);
        self.poly(
            &[
                (a.0 + nx, a.1 + ny),
                (b.0 + nx, b.1 + ny),
                (b.0 - nx, b.1 - ny),
                (a.0 - nx, a.1 - ny),
            ],
            c,
        );
    }

    /// Additive light halo (headlights, lamps at night); never occludes.
    pub fn glow(&mut self, cx: f32, cy: f32, r: f32, c: Col, strength: f32) {
        if r < 0.5 || strength <= 0.0 {
            return;
        }
        let x0 = (cx - r).max(0.0).floor() as i32;
        let x1 = ((cx + r).min(self.w as f32).ceil() as i32).min(self.w as i32);
        let y0 = (cy - r).max(0.0).floor() as i32;
        let y1 = ((cy + r).min(self.h as f32).ceil() as i32).min(self.h as i32);
        let inv = 1.0 / r;
        for y in y0..y1 {
            let dy = (y as f32 + 0.5 - cy) * inv;
            let row = y as usize * self.w;
            for x in x0..x1 {
                let dx = (x as f32 + 0.5 - cx) * inv;
                let d2 = dx * dx + dy * dy;
                if d2 < 1.0 {
                    let k = (1.0 - d2.sqrt()).powi(2) * strength;
                    let p = &mut self.rgb[row + x as usize];
                    for ch in 0..3 {
                        p[ch] += c[ch] * k;
                    }
                }
            }
        }
    }

    /// Number of pixels currently owned by `id` (scans its extent only).
    pub fn owned_pixels(&self, id: u16) -> usize {
        let e = self.extents[id as usize];
        if e[0] > e[2] {
            return 0;
        }
        let mut n = 0;
        for y in e[1]..=e[3] {
            let row = &self.owner[y as usize * self.w..][..self.w];
            n += row[e[0] as usize..=e[2] as usize]
                .iter()
                .filter(|&&o| o == id)
                .count();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_claims_pixels_and_tracks_extent() {
        let mut c = Canvas::new(10, 8, [1.0; 3], [0.5; 3], 1e9);
        c.unshaded();
        let id = c.begin_object();
        c.rect(2.0, 1.0, 5.0, 4.0, [1.0, 0.0, 0.0]);
        c.end_object();
        assert_eq!(c.extents[id as usize], [2, 1, 4, 3]);
        assert_eq!(c.owned_pixels(id), 9);
        assert_eq!(c.rgb[10 + 2], [1.0, 0.0, 0.0]);
        // Half-covered pixels blend but do not claim ownership below 50%.
        c.rect(6.0, 0.0, 6.4, 1.0, [0.0, 1.0, 0.0]);
        assert_eq!(c.owner[6], 0);
        assert!((c.rgb[6][1] - 0.4).abs() < 1e-6);
    }

    #[test]
    fn primitives_clip_at_the_borders() {
        let mut c = Canvas::new(6, 6, [1.0; 3], [0.0; 3], 1e9);
        c.ellipse(-3.0, 3.0, 5.0, 9.0, [1.0; 3]);
        c.poly(&[(-10.0, -10.0), (20.0, -5.0), (3.0, 30.0)], [1.0; 3]);
        c.ring(3.0, 3.0, 10.0, 10.0, 2.0, [1.0; 3]);
        c.line((-5.0, -5.0), (50.0, 50.0), 3.0, [1.0; 3]);
        c.glow(5.0, 5.0, 30.0, [1.0; 3], 1.0);
        c.rect(f32::NAN, 0.0, 3.0, 3.0, [1.0; 3]);
        c.span(100, 0.0, 3.0, [1.0; 3], 1.0);
    }
}
