//! Drawing of roadside objects and road users, each in its own local frame: a [`Face`] for the
//! parts facing the camera, projected quads for sides and tops. Labelled parts are drawn
//! between `Canvas::begin_object` and `Canvas::end_object` so their pixels count for the box;
//! posts, hangers and shadows are drawn outside that bracket.

use super::canvas::{hash2, mix, scale, Canvas, Col};
use super::frame::{Ctx, Glow};
use super::layout::{
    Beam, Cam, Cyclist, Facing, Lamp, Light, ObjKind, Person, Sign, SignShape, Time, Tree, Vehicle,
    LIGHT_LONG, LIGHT_SHORT,
};
use super::{AUTO_RICKSHAW, BUS, TRICYCLE, TRUCK};

const GLASS: Col = [0.07, 0.09, 0.12];
const TYRE: Col = [0.03, 0.03, 0.035];
const TRIM: Col = [0.06, 0.06, 0.065];
const RED_LAMP_OFF: Col = [0.45, 0.04, 0.04];
const RED_LAMP_ON: Col = [1.0, 0.12, 0.08];
const HEAD_OFF: Col = [0.75, 0.75, 0.72];
const HEAD_ON: Col = [1.0, 1.0, 0.92];
const PLATE: Col = [0.88, 0.88, 0.85];

/// A fronto-parallel plane at depth `z`, in object-local metres: `lx` right of the object's
/// centre, `ly` up from the road.
#[derive(Clone, Copy)]
struct Face {
    cx: f32,
    by: f32,
    s: f32,
    z: f32,
}

impl Face {
    fn new(cam: &Cam, x: f32, z: f32) -> Face {
        Face {
            cx: cam.x(x, z),
            by: cam.y(0.0, z),
            s: cam.s(z),
            z,
        }
    }
    fn p(&self, lx: f32, ly: f32) -> (f32, f32) {
        (self.cx + lx * self.s, self.by - ly * self.s)
    }
    fn rect(&self, cv: &mut Canvas, lx0: f32, ly0: f32, lx1: f32, ly1: f32, c: Col) {
        let (x0, y1) = self.p(lx0, ly0);
        let (x1, y0) = self.p(lx1, ly1);
        cv.rect(x0, y0, x1, y1, c);
    }
    fn ellipse(&self, cv: &mut Canvas, lx: f32, ly: f32, rx: f32, ry: f32, c: Col) {
        let (x, y) = self.p(lx, ly);
        cv.ellipse(x, y, rx * self.s, ry * self.s, c);
    }
    fn poly(&self, cv: &mut Canvas, pts: &[(f32, f32)], c: Col) {
        let mut buf = [(0.0f32, 0.0f32); 12];
        let n = pts.len().min(buf.len());
        for (o, &(lx, ly)) in buf.iter_mut().zip(pts) {
            *o = self.p(lx, ly);
        }
        cv.poly(&buf[..n], c);
    }
    fn line(&self, cv: &mut Canvas, a: (f32, f32), b: (f32, f32), width: f32, c: Col) {
        cv.line(self.p(a.0, a.1), self.p(b.0, b.1), width * self.s, c);
    }
}

impl Ctx<'_> {
    /// Projected quad on the vertical plane `X = xs` between depths `za..zb` and heights
    /// `ya..yb`, with optional setbacks of the top edge (for raked windscreens).
    #[allow(clippy::too_many_arguments)]
    fn side_quad(
        &mut self,
        xs: f32,
        za: f32,
        zb: f32,
        ya: f32,
        yb: f32,
        top_in: (f32, f32),
        c: Col,
    ) {
        let cam = self.cam;
        let pts = [
            (cam.x(xs, za), cam.y(ya, za)),
            (cam.x(xs, za + top_in.0), cam.y(yb, za + top_in.0)),
            (cam.x(xs, zb - top_in.1), cam.y(yb, zb - top_in.1)),
            (cam.x(xs, zb), cam.y(ya, zb)),
        ];
        self.cv.poly(&pts, c);
    }

    /// Projected horizontal quad at height `y` over `xa..xb` and `za..zb`.
    #[allow(clippy::too_many_arguments)]
    fn top_quad(&mut self, xa: f32, xb: f32, za: f32, zb: f32, y: f32, c: Col) {
        let cam = self.cam;
        let pts = [
            (cam.x(xa, za), cam.y(y, za)),
            (cam.x(xb, za), cam.y(y, za)),
            (cam.x(xb, zb), cam.y(y, zb)),
            (cam.x(xa, zb), cam.y(y, zb)),
        ];
        self.cv.poly(&pts, c);
    }

    /// A wheel on the side plane `X = xs` centred at depth `zc`.
    fn side_wheel(&mut self, xs: f32, zc: f32, r: f32) {
        let cam = self.cam;
        let x0 = cam.x(xs, zc - r);
        let x1 = cam.x(xs, zc + r);
        let (cx, cy) = ((x0 + x1) * 0.5, cam.y(r, zc));
        let (rx, ry) = ((x1 - x0).abs() * 0.5, r * cam.s(zc));
        self.cv.ellipse(cx, cy, rx, ry, TYRE);
        self.cv
            .ellipse(cx, cy, rx * 0.5, ry * 0.5, [0.45, 0.45, 0.47]);
    }

    fn glow(&mut self, x: f32, y: f32, r: f32, col: Col, strength: f32) {
        self.glows.push(Glow {
            x,
            y,
            r,
            col,
            strength,
            owner: self.cv.id,
        });
    }

    /// A lamp on a face: emissive when lit (plus a halo at dusk and night).
    #[allow(clippy::too_many_arguments)]
    fn lamp(
        &mut self,
        f: &Face,
        lx0: f32,
        ly0: f32,
        lx1: f32,
        ly1: f32,
        on: Col,
        off: Col,
        lit: bool,
        halo: f32,
    ) {
        if lit {
            self.cv.emissive(f.z);
            f.rect(&mut self.cv, lx0, ly0, lx1, ly1, on);
            self.cv.at_depth(f.z);
            if halo > 0.0 {
                let (x, y) = f.p((lx0 + lx1) * 0.5, (ly0 + ly1) * 0.5);
                let size = ((lx1 - lx0).abs().max((ly1 - ly0).abs()) * f.s).max(1.0);
                self.glow(x, y, size * 3.0, on, halo);
            }
        } else {
            f.rect(&mut self.cv, lx0, ly0, lx1, ly1, off);
        }
    }

    /// A face's pair of red tail lamps, mirrored: each from `outer` to `inner` in from its
    /// side of a face `hw` either side of the centre, over `ly`; left first.
    fn tail_lamps(
        &mut self,
        f: &Face,
        hw: f32,
        (outer, inner): (f32, f32),
        (ly0, ly1): (f32, f32),
        lit: bool,
        halo: f32,
    ) {
        self.lamp(
            f,
            -hw + outer,
            ly0,
            -hw + inner,
            ly1,
            RED_LAMP_ON,
            RED_LAMP_OFF,
            lit,
            halo,
        );
        self.lamp(
            f,
            hw - inner,
            ly0,
            hw - outer,
            ly1,
            RED_LAMP_ON,
            RED_LAMP_OFF,
            lit,
            halo,
        );
    }

    fn halo_strength(&self) -> f32 {
        match self.scene.env.time {
            Time::Night => 0.7,
            Time::Dusk => 0.35,
            Time::Day => 0.0,
        }
    }
}

/// Draws one object; returns its id when it is labelled.
pub(super) fn draw_object(ctx: &mut Ctx, kind: &ObjKind, labelled: bool) -> Option<u16> {
    ctx.cv.solid = true;
    ctx.cv.end_object();
    match kind {
        ObjKind::Vehicle(v) => {
            draw_vehicle_shadow(ctx, v);
            let id = labelled.then(|| ctx.cv.begin_object());
            draw_vehicle(ctx, v);
            ctx.cv.end_object();
            id
        }
        ObjKind::Person(p) => {
            let f = Face::new(&ctx.cam, p.x, p.z);
            ground_shadow(ctx, &f, 0.35, 0.12);
            let id = labelled.then(|| ctx.cv.begin_object());
            ctx.cv.at_depth(p.z);
            draw_person(ctx, &f, p);
            ctx.cv.end_object();
            id
        }
        ObjKind::Cyclist(c) => {
            let f = Face::new(&ctx.cam, c.rider.x, c.rider.z);
            let side = matches!(c.rider.facing, Facing::Left | Facing::Right);
            ground_shadow(ctx, &f, if side { 0.9 } else { 0.35 }, 0.15);
            let id = labelled.then(|| ctx.cv.begin_object());
            ctx.cv.at_depth(c.rider.z);
            draw_cyclist(ctx, &f, c);
            ctx.cv.end_object();
            id
        }
        ObjKind::Light(l) => {
            let f = Face::new(&ctx.cam, l.x, l.z);
            ctx.cv.at_depth(l.z);
            let (_, hh) = light_half_size(l);
            if l.bottom < 4.0 {
                f.rect(
                    &mut ctx.cv,
                    -0.07,
                    0.0,
                    0.07,
                    l.bottom + hh,
                    [0.3, 0.31, 0.33],
                );
            } else {
                // Hanger from the mast arm.
                f.rect(
                    &mut ctx.cv,
                    -0.04,
                    l.bottom + 2.0 * hh,
                    0.04,
                    l.bottom + 2.0 * hh + 0.2,
                    TRIM,
                );
            }
            let id = labelled.then(|| ctx.cv.begin_object());
            draw_light(ctx, &f, l);
            ctx.cv.end_object();
            id
        }
        ObjKind::Sign(s) => {
            let f = Face::new(&ctx.cam, s.x, s.z);
            ctx.cv.at_depth(s.z);
            if s.post {
                f.rect(&mut ctx.cv, -0.04, 0.0, 0.04, s.centre, [0.55, 0.56, 0.58]);
            }
            let id = labelled.then(|| ctx.cv.begin_object());
            draw_sign(ctx, &f, s);
            ctx.cv.end_object();
            id
        }
        ObjKind::Tree(t) => {
            draw_tree(ctx, t);
            None
        }
        ObjKind::Lamp(l) => {
            draw_lamp(ctx, l);
            None
        }
        ObjKind::Beam(b) => {
            draw_beam(ctx, b);
            None
        }
    }
}

fn ground_shadow(ctx: &mut Ctx, f: &Face, rx: f32, ry: f32) {
    if ctx.scene.env.time == Time::Night {
        return;
    }
    ctx.cv.solid = false;
    ctx.cv.alpha = 0.35;
    ctx.cv.at_depth(f.z);
    let (x, y) = f.p(0.0, 0.0);
    // Flattened by perspective: vertical radius shrinks with the viewing angle.
    let flat = (ctx.cam.cam_h / f.z).min(1.0);
    ctx.cv
        .ellipse(x, y, rx * f.s, ry * f.s * flat * 4.0, [0.02, 0.02, 0.02]);
    ctx.cv.alpha = 1.0;
    ctx.cv.solid = true;
}

fn draw_vehicle_shadow(ctx: &mut Ctx, v: &Vehicle) {
    let cam = ctx.cam;
    let cv = &mut ctx.cv;
    cv.solid = false;
    cv.alpha = if ctx.scene.env.time == Time::Night {
        0.4
    } else {
        0.6
    };
    cv.at_depth(v.z);
    let (xl, xr) = (v.x - v.w * 0.5 - 0.1, v.x + v.w * 0.5 + 0.1);
    let (za, zb) = (v.z - 0.15, v.z + v.len);
    let pts = [
        (cam.x(xl, za), cam.y(0.0, za)),
        (cam.x(xr, za), cam.y(0.0, za)),
        (cam.x(xr, zb), cam.y(0.0, zb)),
        (cam.x(xl, zb), cam.y(0.0, zb)),
    ];
    cv.poly(&pts, [0.01, 0.01, 0.012]);
    cv.alpha = 1.0;
    cv.solid = true;
}

fn draw_vehicle(ctx: &mut Ctx, v: &Vehicle) {
    match v.class {
        TRUCK => draw_truck(ctx, v),
        BUS => draw_bus(ctx, v),
        AUTO_RICKSHAW => draw_auto_rickshaw(ctx, v),
        TRICYCLE => draw_tricycle(ctx, v),
        _ => draw_car(ctx, v),
    }
}

/// The lateral plane of the vehicle side the camera sees, if any.
fn visible_side(v: &Vehicle) -> Option<f32> {
    let (l, r) = (v.x - v.w * 0.5, v.x + v.w * 0.5);
    if l > 0.05 {
        Some(l)
    } else if r < -0.05 {
        Some(r)
    } else {
        None
    }
}

fn draw_car(ctx: &mut Ctx, v: &Vehicle) {
    let (w, h, len, z) = (v.w, v.h, v.len, v.z);
    let zf = z + len;
    let belt = match v.style {
        2 => h * 0.58,
        3 => h * 0.5,
        _ => h * 0.6,
    };
    // Lengths along the car from the near face: boot (or bonnet when oncoming), cabin, far end.
    let (near_end, far_end) = match (v.style, v.oncoming) {
        (3, _) => (0.25, 0.1),
        (1, false) | (2, false) => (0.12, len * 0.25),
        (_, false) => (len * 0.2, len * 0.25),
        (_, true) => (len * 0.28, if v.style == 0 { len * 0.2 } else { 0.15 }),
    };
    let rake = (h - belt) * if v.oncoming { 1.1 } else { 0.6 };
    let inset = 0.12 * w;
    ctx.cv.at_depth(z + len * 0.5);
    let body = v.body;
    let dark_body = scale(body, 0.78);
    if let Some(xs) = visible_side(v) {
        ctx.side_quad(xs, z, zf, 0.2, belt, (0.0, 0.0), dark_body);
        let (ca, cb) = (z + near_end, zf - far_end);
        if cb > ca + 0.5 {
            ctx.side_quad(xs, ca, cb, belt, h, (rake * 0.7, rake * 0.5), dark_body);
            ctx.side_quad(
                xs,
                ca + 0.12,
                cb - 0.12,
                belt + 0.06,
                h - 0.06,
                (rake * 0.7, rake * 0.5),
                GLASS,
            );
            let pillar = (ca + cb) * 0.5;
            ctx.side_quad(
                xs,
                pillar - 0.06,
                pillar + 0.06,
                belt,
                h,
                (0.0, 0.0),
                dark_body,
            );
        }
        ctx.side_wheel(xs, z + 0.85, 0.32);
        ctx.side_wheel(xs, zf - 0.85, 0.32);
    }
    let cam_h = ctx.cam.cam_h;
    if belt < cam_h {
        // Boot or bonnet top seen from above.
        ctx.top_quad(
            v.x - w * 0.5,
            v.x + w * 0.5,
            z,
            z + near_end,
            belt,
            scale(body, 1.08),
        );
    }
    if h < cam_h {
        let (ra, rb) = (z + near_end + rake, zf - far_end - rake * 0.5);
        if rb > ra {
            ctx.top_quad(
                v.x - w * 0.5 + inset,
                v.x + w * 0.5 - inset,
                ra,
                rb,
                h,
                scale(body, 1.05),
            );
        }
    }
    // Near face: the rear, or the front when oncoming.
    let f = Face::new(&ctx.cam, v.x, z);
    let hw = w * 0.5;
    ctx.cv.at_depth(z);
    let cv = &mut ctx.cv;
    f.rect(cv, -hw + 0.06, 0.0, -hw + 0.32, 0.36, TYRE);
    f.rect(cv, hw - 0.32, 0.0, hw - 0.06, 0.36, TYRE);
    f.rect(cv, -hw, 0.2, hw, belt, body);
    // Cabin with its window.
    f.poly(
        cv,
        &[
            (-hw + 0.04, belt),
            (hw - 0.04, belt),
            (hw - inset, h),
            (-hw + inset, h),
        ],
        body,
    );
    let glass = if v.oncoming {
        mix(GLASS, ctx.scene.env.sky_horizon, 0.25)
    } else {
        GLASS
    };
    let wb = belt + 0.05;
    let wt = h - 0.07;
    let t = (wb - belt) / (h - belt);
    let t2 = (wt - belt) / (h - belt);
    let side_at = |t: f32| hw - 0.04 - (inset - 0.04) * t - 0.07;
    f.poly(
        cv,
        &[
            (-side_at(t), wb),
            (side_at(t), wb),
            (side_at(t2), wt),
            (-side_at(t2), wt),
        ],
        glass,
    );
    // Bumper and plate.
    f.rect(cv, -hw, 0.2, hw, 0.42, scale(body, 0.55));
    f.rect(cv, -0.26, 0.27, 0.26, 0.39, PLATE);
    let halo = ctx.halo_strength();
    if v.oncoming {
        f.rect(&mut ctx.cv, -hw * 0.55, 0.45, hw * 0.55, belt - 0.12, TRIM);
        let lit = v.lights_on;
        let (a, b) = (belt - 0.3, belt - 0.12);
        ctx.lamp(
            &f,
            -hw + 0.05,
            a,
            -hw + 0.38,
            b,
            HEAD_ON,
            HEAD_OFF,
            lit,
            halo * 1.3,
        );
        ctx.lamp(
            &f,
            hw - 0.38,
            a,
            hw - 0.05,
            b,
            HEAD_ON,
            HEAD_OFF,
            lit,
            halo * 1.3,
        );
    } else {
        let lit = v.lights_on || v.brake;
        let (a, b) = (belt - 0.26, belt - 0.06);
        let h2 = if v.brake { halo.max(0.15) } else { halo * 0.6 };
        ctx.tail_lamps(&f, hw, (0.04, 0.3), (a, b), lit, h2);
        if v.brake && v.style != 3 {
            ctx.lamp(
                &f,
                -0.2,
                h - 0.06,
                0.2,
                h - 0.02,
                RED_LAMP_ON,
                RED_LAMP_OFF,
                true,
                0.0,
            );
        }
    }
}

fn draw_truck(ctx: &mut Ctx, v: &Vehicle) {
    let (w, h, len, z) = (v.w, v.h, v.len, v.z);
    let zf = z + len;
    let cab_len = 2.3;
    let cab_h = (h - 0.2).min(3.1);
    let hw = w * 0.5;
    ctx.cv.at_depth(z + len * 0.5);
    let (cargo_a, cargo_b, cab_a, cab_b) = if v.oncoming {
        (z + cab_len + 0.2, zf, z, z + cab_len)
    } else {
        (z, zf - cab_len - 0.2, zf - cab_len, zf)
    };
    if let Some(xs) = visible_side(v) {
        ctx.side_quad(xs, z, zf, 0.5, 1.05, (0.0, 0.0), TRIM);
        ctx.side_quad(xs, cab_a, cab_b, 0.5, cab_h, (0.0, 0.0), scale(v.body, 0.8));
        let (wa, wb) = if v.oncoming {
            (cab_a + 0.1, cab_a + 1.2)
        } else {
            (cab_b - 1.2, cab_b - 0.1)
        };
        ctx.side_quad(xs, wa, wb, 1.8, cab_h - 0.2, (0.0, 0.0), GLASS);
        ctx.side_quad(
            xs,
            cargo_a,
            cargo_b,
            1.05,
            h,
            (0.0, 0.0),
            scale(v.cargo, 0.82),
        );
        let (w1, w2, w3) = if v.oncoming {
            (z + 1.2, zf - 2.4, zf - 1.2)
        } else {
            (z + 1.2, z + 2.4, zf - 1.3)
        };
        for zc in [w1, w2, w3] {
            ctx.side_wheel(xs, zc, 0.5);
        }
    }
    if v.oncoming {
        // Cargo box rises behind the cab.
        if h > cab_h + 0.05 {
            let fb = Face::new(&ctx.cam, v.x, cargo_a);
            ctx.cv.at_depth(cargo_a);
            fb.rect(&mut ctx.cv, -hw, cab_h - 0.2, hw, h, v.cargo);
        }
        let f = Face::new(&ctx.cam, v.x, z);
        ctx.cv.at_depth(z);
        let cv = &mut ctx.cv;
        f.rect(cv, -hw + 0.1, 0.0, -hw + 0.45, 0.55, TYRE);
        f.rect(cv, hw - 0.45, 0.0, hw - 0.1, 0.55, TYRE);
        f.rect(cv, -hw, 0.45, hw, cab_h, v.body);
        let glass = mix(GLASS, ctx.scene.env.sky_horizon, 0.25);
        f.rect(cv, -hw + 0.12, cab_h - 1.05, hw - 0.12, cab_h - 0.15, glass);
        f.rect(cv, -0.75, 0.7, 0.75, 1.55, TRIM);
        f.rect(cv, -hw, 0.45, hw, 0.68, scale(v.body, 0.5));
        let halo = ctx.halo_strength();
        ctx.lamp(
            &f,
            -hw + 0.08,
            0.75,
            -hw + 0.45,
            0.95,
            HEAD_ON,
            HEAD_OFF,
            v.lights_on,
            halo * 1.3,
        );
        ctx.lamp(
            &f,
            hw - 0.45,
            0.75,
            hw - 0.08,
            0.95,
            HEAD_ON,
            HEAD_OFF,
            v.lights_on,
            halo * 1.3,
        );
    } else {
        let f = Face::new(&ctx.cam, v.x, z);
        ctx.cv.at_depth(z);
        let cv = &mut ctx.cv;
        f.rect(cv, -hw + 0.05, 0.0, -hw + 0.65, 1.0, TYRE);
        f.rect(cv, hw - 0.65, 0.0, hw - 0.05, 1.0, TYRE);
        f.rect(cv, -hw + 0.3, 0.45, hw - 0.3, 1.05, TRIM);
        f.rect(cv, -hw, 1.05, hw, h, v.cargo);
        // Door seam and lock rods.
        f.rect(cv, -0.015, 1.1, 0.015, h - 0.05, scale(v.cargo, 0.6));
        for lx in [-hw * 0.5, hw * 0.5] {
            f.rect(
                cv,
                lx - 0.02,
                1.15,
                lx + 0.02,
                h - 0.15,
                scale(v.cargo, 0.7),
            );
        }
        f.rect(cv, -hw + 0.1, 0.45, hw - 0.1, 0.58, [0.8, 0.15, 0.1]);
        f.rect(cv, -0.26, 0.62, 0.26, 0.76, PLATE);
        let halo = ctx.halo_strength();
        let lit = v.lights_on || v.brake;
        ctx.tail_lamps(&f, hw, (0.05, 0.35), (0.78, 0.98), lit, halo * 0.6);
    }
}

fn draw_bus(ctx: &mut Ctx, v: &Vehicle) {
    let (w, h, len, z) = (v.w, v.h, v.len, v.z);
    let zf = z + len;
    let hw = w * 0.5;
    let double = v.style == 1;
    ctx.cv.at_depth(z + len * 0.5);
    if let Some(xs) = visible_side(v) {
        let body = scale(v.body, 0.82);
        ctx.side_quad(xs, z, zf, 0.3, h, (0.0, 0.0), body);
        let bands: &[(f32, f32)] = if double {
            &[(1.1, 2.1), (2.6, h - 0.35)]
        } else {
            &[(1.1, h - 0.35)]
        };
        for &(ya, yb) in bands {
            ctx.side_quad(xs, z + 0.3, zf - 0.3, ya, yb, (0.0, 0.0), GLASS);
            let mut zp = z + 1.4;
            while zp < zf - 0.5 {
                ctx.side_quad(xs, zp - 0.05, zp + 0.05, ya, yb, (0.0, 0.0), body);
                zp += 1.3;
            }
        }
        ctx.side_wheel(xs, z + 2.4, 0.5);
        ctx.side_wheel(xs, zf - 2.8, 0.5);
    }
    let f = Face::new(&ctx.cam, v.x, z);
    ctx.cv.at_depth(z);
    let halo = ctx.halo_strength();
    {
        let cv = &mut ctx.cv;
        f.rect(cv, -hw + 0.1, 0.0, -hw + 0.45, 0.4, TYRE);
        f.rect(cv, hw - 0.45, 0.0, hw - 0.1, 0.4, TYRE);
        f.rect(cv, -hw, 0.3, hw, h, v.body);
        f.rect(cv, -hw, 0.3, hw, 0.55, TRIM);
    }
    if v.oncoming {
        let glass = mix(GLASS, ctx.scene.env.sky_horizon, 0.3);
        let cv = &mut ctx.cv;
        if double {
            f.rect(cv, -hw + 0.1, 1.0, hw - 0.1, 2.2, glass);
            f.rect(cv, -hw + 0.1, 2.6, hw - 0.1, h - 0.25, glass);
        } else {
            f.rect(cv, -hw + 0.08, 1.0, hw - 0.08, h - 0.45, glass);
            f.rect(cv, -0.025, 1.0, 0.025, h - 0.45, TRIM);
        }
        let (da, db) = if double {
            (2.25, 2.5)
        } else {
            (h - 0.4, h - 0.12)
        };
        f.rect(cv, -hw + 0.3, da, hw - 0.3, db, [0.03, 0.03, 0.03]);
        ctx.cv.emissive(z);
        f.rect(
            &mut ctx.cv,
            -hw * 0.5,
            da + 0.07,
            hw * 0.3,
            db - 0.07,
            [1.0, 0.65, 0.1],
        );
        ctx.cv.at_depth(z);
        ctx.lamp(
            &f,
            -hw + 0.08,
            0.55,
            -hw + 0.45,
            0.72,
            HEAD_ON,
            HEAD_OFF,
            v.lights_on,
            halo * 1.3,
        );
        ctx.lamp(
            &f,
            hw - 0.45,
            0.55,
            hw - 0.08,
            0.72,
            HEAD_ON,
            HEAD_OFF,
            v.lights_on,
            halo * 1.3,
        );
    } else {
        let cv = &mut ctx.cv;
        f.rect(cv, -hw + 0.2, h - 1.1, hw - 0.2, h - 0.3, GLASS);
        if double {
            f.rect(cv, -hw + 0.2, 1.6, hw - 0.2, 2.3, GLASS);
        }
        for k in 0..4 {
            let ly = 0.65 + k as f32 * 0.1;
            f.rect(cv, -0.6, ly, 0.6, ly + 0.04, TRIM);
        }
        f.rect(cv, -0.26, 0.58, 0.26, 0.7, PLATE);
        let lit = v.lights_on || v.brake;
        ctx.tail_lamps(&f, hw, (0.05, 0.25), (0.6, 1.3), lit, halo * 0.6);
    }
}

/// Auto-rickshaw: a three-wheeler narrower than a car, its lower body yellow or green, a black
/// canopy with open sides over the driver and the rear bench; one wheel in front, two behind.
fn draw_auto_rickshaw(ctx: &mut Ctx, v: &Vehicle) {
    let (w, h, len, z) = (v.w, v.h, v.len, v.z);
    let zf = z + len;
    let hw = w * 0.5;
    let belt = 0.85;
    let canopy = v.cargo;
    let body = v.body;
    // The rear axle is at the near end seen from behind, at the far end when oncoming.
    let rear_axle = if v.oncoming { zf - 0.45 } else { z + 0.45 };
    ctx.cv.at_depth(z + len * 0.5);
    if let Some(xs) = visible_side(v) {
        ctx.side_quad(xs, z, zf, 0.25, belt, (0.0, 0.0), scale(body, 0.8));
        let (lean_near, lean_far) = if v.oncoming { (0.35, 0.1) } else { (0.1, 0.35) };
        ctx.side_quad(
            xs,
            z + 0.05,
            zf - 0.05,
            belt,
            h,
            (lean_near, lean_far),
            scale(canopy, 0.9),
        );
        // Open sides: the dark interior through the doorways.
        ctx.side_quad(
            xs,
            z + 0.45,
            zf - 0.45,
            belt + 0.05,
            h - 0.2,
            (0.0, 0.0),
            [0.025, 0.025, 0.03],
        );
        ctx.side_wheel(xs, rear_axle, 0.22);
    }
    if h < ctx.cam.cam_h {
        ctx.top_quad(
            v.x - hw + 0.08,
            v.x + hw - 0.08,
            z + 0.15,
            zf - 0.15,
            h,
            scale(canopy, 1.2),
        );
    }
    let f = Face::new(&ctx.cam, v.x, z);
    let halo = ctx.halo_strength();
    let roof = [
        (-hw, belt),
        (hw, belt),
        (hw - 0.03, h - 0.16),
        (hw - 0.2, h),
        (-hw + 0.2, h),
        (-hw + 0.03, h - 0.16),
    ];
    if v.oncoming {
        // The rear wheels show at the far end, outside the narrow nose.
        let fr = Face::new(&ctx.cam, v.x, rear_axle);
        ctx.cv.at_depth(rear_axle);
        fr.rect(&mut ctx.cv, -hw + 0.02, 0.0, -hw + 0.2, 0.44, TYRE);
        fr.rect(&mut ctx.cv, hw - 0.2, 0.0, hw - 0.02, 0.44, TYRE);
        ctx.cv.at_depth(z);
        let cv = &mut ctx.cv;
        f.poly(cv, &roof, canopy);
        let glass = mix(GLASS, ctx.scene.env.sky_horizon, 0.25);
        f.rect(cv, -hw + 0.12, belt + 0.08, hw - 0.12, h - 0.26, glass);
        // Front apron, narrowing down to the single front wheel.
        f.rect(cv, -0.09, 0.0, 0.09, 0.4, TYRE);
        f.poly(
            cv,
            &[
                (-0.2, 0.3),
                (0.2, 0.3),
                (hw - 0.06, belt + 0.02),
                (-hw + 0.06, belt + 0.02),
            ],
            body,
        );
        f.rect(cv, -0.13, 0.3, 0.13, 0.38, TRIM);
        ctx.lamp(
            &f,
            -0.09,
            belt - 0.28,
            0.09,
            belt - 0.12,
            HEAD_ON,
            HEAD_OFF,
            v.lights_on,
            halo * 1.3,
        );
    } else {
        ctx.cv.at_depth(z);
        let cv = &mut ctx.cv;
        f.rect(cv, -hw + 0.04, 0.0, -hw + 0.24, 0.44, TYRE);
        f.rect(cv, hw - 0.24, 0.0, hw - 0.04, 0.44, TYRE);
        f.rect(cv, -hw + 0.02, 0.24, hw - 0.02, belt, body);
        f.rect(cv, -hw + 0.02, 0.24, hw - 0.02, 0.34, TRIM);
        f.poly(cv, &roof, canopy);
        // Small rear window in the canopy.
        f.rect(cv, -hw * 0.45, belt + 0.35, hw * 0.45, h - 0.25, GLASS);
        f.rect(cv, -0.17, 0.42, 0.17, 0.55, PLATE);
        let lit = v.lights_on || v.brake;
        let h2 = if v.brake { halo.max(0.15) } else { halo * 0.6 };
        ctx.tail_lamps(&f, hw, (0.06, 0.2), (0.6, 0.74), lit, h2);
    }
}

/// Cargo tricycle: a rider on a motorcycle-like front over one wheel, an open bed (empty or
/// loaded) over two wheels behind, painted blue or red.
fn draw_tricycle(ctx: &mut Ctx, v: &Vehicle) {
    let (w, len, z) = (v.w, v.len, v.z);
    let zf = z + len;
    let hw = w * 0.5;
    let (bed_lo, bed_hi) = (0.5, 0.88);
    let bed_len = len * 0.55;
    let body = v.body;
    let halo = ctx.halo_strength();
    // The bed spans the rear: near end seen from behind, far end when oncoming.
    let (bed_a, bed_b) = if v.oncoming {
        (zf - bed_len, zf)
    } else {
        (z, z + bed_len)
    };
    let rider_z = if v.oncoming { z + 0.75 } else { zf - 0.75 };
    let front_z = if v.oncoming { z } else { zf - 0.3 };
    let rear_axle = if v.oncoming { zf - 0.5 } else { z + 0.5 };
    let rider = Face::new(&ctx.cam, v.x, rider_z);
    let front = Face::new(&ctx.cam, v.x, front_z);

    let draw_bed = |ctx: &mut Ctx| {
        ctx.cv.at_depth(bed_a);
        let fr = Face::new(&ctx.cam, v.x, rear_axle);
        fr.rect(&mut ctx.cv, -hw + 0.08, 0.0, -hw + 0.26, 0.5, TYRE);
        fr.rect(&mut ctx.cv, hw - 0.26, 0.0, hw - 0.08, 0.5, TYRE);
        if let Some(xs) = visible_side(v) {
            ctx.side_quad(
                xs,
                bed_a,
                bed_b,
                bed_lo,
                bed_hi,
                (0.0, 0.0),
                scale(body, 0.8),
            );
            ctx.side_wheel(xs, rear_axle, 0.25);
        }
        // The open bed seen from above: its floor in shadow, then the load.
        let (xa, xb) = (v.x - hw, v.x + hw);
        ctx.top_quad(xa, xb, bed_a, bed_b, bed_hi, scale(body, 0.45));
        if v.style == 1 {
            let load = bed_hi + 0.45;
            let (la, lb) = (bed_a + 0.15, bed_b - 0.15);
            if let Some(xs) = visible_side(v) {
                let xs = xs + if xs > v.x { -0.1 } else { 0.1 };
                ctx.side_quad(xs, la, lb, bed_hi, load, (0.0, 0.0), scale(v.cargo, 0.8));
            }
            ctx.top_quad(xa + 0.1, xb - 0.1, la, lb, load, scale(v.cargo, 1.1));
            let near = if v.oncoming { lb } else { la };
            let fl = Face::new(&ctx.cam, v.x, near);
            fl.rect(&mut ctx.cv, -hw + 0.1, bed_hi, hw - 0.1, load, v.cargo);
        }
        // The bed's end wall facing the camera (the tailgate seen from behind).
        let fb = Face::new(&ctx.cam, v.x, bed_a);
        ctx.cv.at_depth(bed_a);
        let cv = &mut ctx.cv;
        fb.rect(cv, -hw, bed_lo, hw, bed_hi, body);
        fb.rect(cv, -hw, 0.66, hw, 0.69, scale(body, 0.7));
        fb.rect(cv, -hw + 0.2, 0.3, hw - 0.2, bed_lo, TRIM);
        if !v.oncoming {
            fb.rect(cv, -0.15, 0.53, 0.15, 0.63, PLATE);
            let lit = v.lights_on || v.brake;
            ctx.tail_lamps(&fb, hw, (0.02, 0.13), (0.74, 0.84), lit, halo * 0.6);
        }
    };
    let draw_rider = |ctx: &mut Ctx| {
        // Legs hidden by the front and the bed; torso, arms to the handlebar, head.
        ctx.cv.at_depth(rider_z);
        let shirt = [0.2, 0.22, 0.26];
        let cv = &mut ctx.cv;
        rider.poly(
            cv,
            &[(-0.2, 0.85), (0.2, 0.85), (0.22, 1.38), (-0.22, 1.38)],
            shirt,
        );
        rider.line(cv, (-0.2, 1.32), (-0.33, 1.02), 0.08, scale(shirt, 0.9));
        rider.line(cv, (0.2, 1.32), (0.33, 1.02), 0.08, scale(shirt, 0.9));
        let head = v.h - 0.12;
        let face = if v.oncoming {
            [0.8, 0.6, 0.45]
        } else {
            [0.06, 0.05, 0.04]
        };
        rider.ellipse(cv, 0.0, head, 0.1, 0.12, face);
    };
    let draw_fork = |ctx: &mut Ctx| {
        // Front wheel, fork, handlebar and leg shield; the headlamp when oncoming.
        ctx.cv.at_depth(front_z);
        let cv = &mut ctx.cv;
        front.rect(cv, -0.06, 0.0, 0.06, 0.48, TYRE);
        front.rect(cv, -0.12, 0.42, 0.12, 0.52, body);
        front.line(cv, (-0.36, 1.02), (0.36, 1.02), 0.035, TRIM);
        if v.oncoming {
            front.poly(
                cv,
                &[(-0.14, 0.5), (0.14, 0.5), (0.2, 0.95), (-0.2, 0.95)],
                body,
            );
            ctx.lamp(
                &front,
                -0.07,
                0.76,
                0.07,
                0.88,
                HEAD_ON,
                HEAD_OFF,
                v.lights_on,
                halo * 1.3,
            );
        }
    };
    // Far to near.
    if v.oncoming {
        draw_bed(ctx);
        draw_rider(ctx);
        draw_fork(ctx);
    } else {
        draw_fork(ctx);
        draw_rider(ctx);
        draw_bed(ctx);
    }
}

fn draw_person(ctx: &mut Ctx, f: &Face, p: &Person) {
    let cv = &mut ctx.cv;
    let hgt = p.height;
    let head_r = 0.062 * hgt;
    let hip = 0.5 * hgt;
    let shoulder = 0.81 * hgt;
    let side = matches!(p.facing, Facing::Left | Facing::Right);
    let dir = if p.facing == Facing::Left { -1.0 } else { 1.0 };
    if side {
        let stride = 0.17 * hgt * p.phase;
        let leg_w = 0.075 * hgt;
        // Far leg and arm darker, drawn first.
        f.line(
            cv,
            (0.0, hip),
            (-stride * dir, 0.04),
            leg_w,
            scale(p.trousers, 0.8),
        );
        f.line(
            cv,
            (0.0, shoulder - 0.03),
            (stride * 0.6 * dir, hip + 0.02),
            0.05 * hgt,
            scale(p.shirt, 0.75),
        );
        f.poly(
            cv,
            &[
                (-0.065 * hgt, hip),
                (0.065 * hgt, hip),
                (0.07 * hgt, shoulder),
                (-0.07 * hgt, shoulder),
            ],
            p.shirt,
        );
        f.line(cv, (0.0, hip), (stride * dir, 0.04), leg_w, p.trousers);
        f.line(
            cv,
            (0.0, shoulder - 0.03),
            (-stride * 0.6 * dir, hip + 0.02),
            0.05 * hgt,
            p.shirt,
        );
        let foot = stride * dir;
        f.rect(cv, foot - 0.04 * dir, 0.0, foot + 0.12 * dir, 0.05, TRIM);
    } else {
        let lw = 0.075 * hgt;
        let spread = 0.02 * hgt * (1.0 + p.phase.abs());
        f.rect(cv, -spread - lw, 0.0, -spread, hip + 0.02, p.trousers);
        f.rect(cv, spread, 0.0, spread + lw, hip + 0.02, p.trousers);
        f.rect(cv, -spread - lw, 0.0, -spread, 0.05, TRIM);
        f.rect(cv, spread, 0.0, spread + lw, 0.05, TRIM);
        f.poly(
            cv,
            &[
                (-0.1 * hgt, hip - 0.02),
                (0.1 * hgt, hip - 0.02),
                (0.13 * hgt, shoulder),
                (-0.13 * hgt, shoulder),
            ],
            p.shirt,
        );
        let aw = 0.05 * hgt;
        f.rect(
            cv,
            -0.13 * hgt - aw,
            hip - 0.02,
            -0.13 * hgt + 0.005,
            shoulder - 0.01,
            scale(p.shirt, 0.9),
        );
        f.rect(
            cv,
            0.13 * hgt - 0.005,
            hip - 0.02,
            0.13 * hgt + aw,
            shoulder - 0.01,
            scale(p.shirt, 0.9),
        );
        f.ellipse(
            cv,
            -0.13 * hgt - aw * 0.5,
            hip - 0.05,
            aw * 0.5,
            aw * 0.6,
            p.skin,
        );
        f.ellipse(
            cv,
            0.13 * hgt + aw * 0.5,
            hip - 0.05,
            aw * 0.5,
            aw * 0.6,
            p.skin,
        );
    }
    // Neck and head.
    f.rect(
        cv,
        -0.025 * hgt,
        shoulder - 0.01,
        0.025 * hgt,
        shoulder + 0.05,
        p.skin,
    );
    let hy = hgt - head_r;
    if p.facing == Facing::Back {
        f.ellipse(cv, 0.0, hy, head_r * 0.9, head_r, p.hair);
    } else {
        f.ellipse(cv, 0.0, hy, head_r * 0.85, head_r, p.skin);
        f.poly(
            cv,
            &[
                (-head_r * 0.9, hy + head_r * 0.2),
                (head_r * 0.9, hy + head_r * 0.2),
                (head_r * 0.6, hy + head_r * 1.05),
                (-head_r * 0.6, hy + head_r * 1.05),
            ],
            p.hair,
        );
    }
    if let Some(uc) = p.umbrella {
        let r = 0.5;
        let top = hgt + 0.25;
        f.line(cv, (0.0, shoulder), (0.0, top), 0.025, TRIM);
        let mut pts = [(0.0f32, 0.0f32); 9];
        for (k, pt) in pts.iter_mut().enumerate() {
            let a = std::f32::consts::PI * k as f32 / 8.0;
            *pt = (r * a.cos(), top - 0.25 + 0.32 * a.sin());
        }
        f.poly(cv, &pts, uc);
    }
}

fn draw_cyclist(ctx: &mut Ctx, f: &Face, c: &Cyclist) {
    let p = &c.rider;
    let cv = &mut ctx.cv;
    let side = matches!(p.facing, Facing::Left | Facing::Right);
    if side {
        let d = if p.facing == Facing::Left { -1.0 } else { 1.0 };
        let r = 0.34;
        let rear = (-0.55 * d, r);
        let front = (0.55 * d, r);
        let crank = (0.0, 0.3);
        let seat = (-0.15 * d, 0.88);
        let stem = (0.42 * d, 0.98);
        let (rx, ry) = f.p(rear.0, rear.1);
        let (fx, fy) = f.p(front.0, front.1);
        let t = (0.05 * f.s).max(1.0);
        cv.ring(rx, ry, r * f.s, r * f.s, t, TYRE);
        cv.ring(fx, fy, r * f.s, r * f.s, t, TYRE);
        let fw = 0.045;
        f.line(cv, rear, seat, fw, c.bike);
        f.line(cv, rear, crank, fw, c.bike);
        f.line(cv, seat, crank, fw, c.bike);
        f.line(cv, crank, stem, fw, c.bike);
        f.line(cv, stem, front, fw, c.bike);
        f.line(
            cv,
            (stem.0 - 0.08 * d, stem.1 + 0.06),
            (stem.0 + 0.06 * d, stem.1 + 0.06),
            0.04,
            TRIM,
        );
        // Rider.
        let hip = (seat.0, seat.1 + 0.05);
        let shoulder = (0.18 * d, 1.42);
        for k in 0..2 {
            let a = p.phase * std::f32::consts::PI + k as f32 * std::f32::consts::PI;
            let pedal = (crank.0 + 0.17 * a.cos() * d, crank.1 + 0.17 * a.sin());
            let knee = (
                (hip.0 + pedal.0) * 0.5 + 0.2 * d,
                (hip.1 + pedal.1) * 0.5 + 0.12,
            );
            let col = if k == 0 {
                scale(p.trousers, 0.8)
            } else {
                p.trousers
            };
            f.line(cv, hip, knee, 0.12, col);
            f.line(cv, knee, pedal, 0.1, col);
        }
        f.line(cv, hip, shoulder, 0.3, p.shirt);
        f.line(
            cv,
            shoulder,
            (stem.0, stem.1 + 0.06),
            0.08,
            scale(p.shirt, 0.9),
        );
        let head = (shoulder.0 + 0.1 * d, shoulder.1 + 0.2);
        f.ellipse(cv, head.0, head.1, 0.1, 0.11, p.skin);
        f.poly(
            cv,
            &[
                (head.0 - 0.13, head.1 + 0.02),
                (head.0 + 0.13, head.1 + 0.02),
                (head.0 + 0.08, head.1 + 0.14),
                (head.0 - 0.08, head.1 + 0.14),
            ],
            c.helmet,
        );
    } else {
        // Seen from behind or ahead: narrow bicycle, rider's back or front.
        f.rect(cv, -0.03, 0.0, 0.03, 0.7, TYRE);
        f.line(cv, (-0.3, 1.0), (0.3, 1.0), 0.035, TRIM);
        f.rect(cv, -0.025, 0.6, 0.025, 1.0, c.bike);
        let up = p.phase.abs() * 0.15;
        f.rect(cv, -0.17, 0.25 + up, -0.04, 0.95, p.trousers);
        f.rect(cv, 0.04, 0.4 - up, 0.17, 0.95, scale(p.trousers, 0.9));
        f.poly(
            cv,
            &[(-0.16, 0.92), (0.16, 0.92), (0.2, 1.45), (-0.2, 1.45)],
            p.shirt,
        );
        f.line(cv, (-0.19, 1.4), (-0.29, 1.0), 0.07, scale(p.shirt, 0.9));
        f.line(cv, (0.19, 1.4), (0.29, 1.0), 0.07, scale(p.shirt, 0.9));
        f.ellipse(
            cv,
            0.0,
            1.57,
            0.095,
            0.11,
            if p.facing == Facing::Back {
                p.hair
            } else {
                p.skin
            },
        );
        f.poly(
            cv,
            &[(-0.12, 1.6), (0.12, 1.6), (0.08, 1.72), (-0.08, 1.72)],
            c.helmet,
        );
        let halo = ctx.halo_strength();
        if p.facing == Facing::Back {
            ctx.lamp(
                f,
                -0.04,
                0.72,
                0.04,
                0.8,
                RED_LAMP_ON,
                RED_LAMP_OFF,
                halo > 0.0,
                halo * 0.5,
            );
        } else {
            ctx.lamp(
                f,
                -0.05,
                0.9,
                0.05,
                0.97,
                HEAD_ON,
                HEAD_OFF,
                halo > 0.0,
                halo * 0.7,
            );
        }
    }
}

fn light_half_size(l: &Light) -> (f32, f32) {
    if l.horizontal {
        (LIGHT_LONG * 0.5, LIGHT_SHORT * 0.5)
    } else {
        (LIGHT_SHORT * 0.5, LIGHT_LONG * 0.5)
    }
}

fn draw_light(ctx: &mut Ctx, f: &Face, l: &Light) {
    let (hw, hh) = light_half_size(l);
    let cy = l.bottom + hh;
    if l.backboard {
        f.rect(
            &mut ctx.cv,
            -hw - 0.14,
            cy - hh - 0.14,
            hw + 0.14,
            cy + hh + 0.14,
            [0.9, 0.85, 0.2],
        );
        f.rect(
            &mut ctx.cv,
            -hw - 0.11,
            cy - hh - 0.11,
            hw + 0.11,
            cy + hh + 0.11,
            [0.03, 0.03, 0.03],
        );
    }
    f.rect(&mut ctx.cv, -hw, cy - hh, hw, cy + hh, l.housing);
    let colours: [(Col, Col); 3] = [
        ([1.0, 0.12, 0.06], [0.2, 0.05, 0.04]),
        ([1.0, 0.7, 0.05], [0.2, 0.15, 0.04]),
        ([0.2, 1.0, 0.55], [0.04, 0.15, 0.1]),
    ];
    let halo = ctx.halo_strength().max(0.12);
    for (k, (on, off)) in colours.iter().enumerate() {
        let off_c = (k as f32 - 1.0) * 0.32;
        let (lx, ly) = if l.horizontal {
            (off_c, cy)
        } else {
            (0.0, cy - off_c)
        };
        let lit = k as u8 == l.state;
        let r = 0.12;
        if lit {
            ctx.cv.emissive(f.z);
            f.ellipse(&mut ctx.cv, lx, ly, r, r, *on);
            ctx.cv.at_depth(f.z);
            let (x, y) = f.p(lx, ly);
            ctx.glow(x, y, (r * f.s * 4.0).max(2.0), *on, halo);
        } else {
            f.ellipse(&mut ctx.cv, lx, ly, r, r, *off);
        }
    }
}

/// Side and height of a triangular sign's equilateral outline.
fn sign_triangle_size(s: &Sign) -> (f32, f32) {
    let side = s.size * 1.15;
    (side, side * 0.866)
}

/// A triangular sign's outline centred on `cy`, scaled by `k`; `up` is 1.0 for point up and
/// -1.0 for point down.
fn sign_triangle(cy: f32, side: f32, up: f32, k: f32) -> [(f32, f32); 3] {
    let ht = side * 0.866;
    [
        (0.0, cy + up * ht * 2.0 / 3.0 * k),
        (-side * 0.5 * k, cy - up * ht / 3.0 * k),
        (side * 0.5 * k, cy - up * ht / 3.0 * k),
    ]
}

/// The exclamation mark of a point-up warning triangle.
fn draw_exclamation(f: &Face, cv: &mut Canvas, cy: f32, side: f32, ht: f32, c: Col) {
    f.rect(
        cv,
        -side * 0.035,
        cy - ht * 0.08,
        side * 0.035,
        cy + ht * 0.3,
        c,
    );
    f.rect(
        cv,
        -side * 0.035,
        cy - ht * 0.2,
        side * 0.035,
        cy - ht * 0.13,
        c,
    );
}

fn draw_sign(ctx: &mut Ctx, f: &Face, s: &Sign) {
    let cv = &mut ctx.cv;
    let r = s.size * 0.5;
    let cy = s.centre;
    let red = [0.78, 0.07, 0.07];
    let white = [0.93, 0.93, 0.92];
    let black = [0.05, 0.05, 0.05];
    match s.shape {
        SignShape::Prohibitory => {
            f.ellipse(cv, 0.0, cy, r, r, red);
            f.ellipse(cv, 0.0, cy, r * 0.78, r * 0.78, white);
            f.rect(cv, -r * 0.34, cy - r * 0.3, -r * 0.06, cy + r * 0.3, black);
            f.rect(cv, -r * 0.26, cy - r * 0.2, -r * 0.14, cy + r * 0.2, white);
            f.rect(cv, r * 0.06, cy - r * 0.3, r * 0.34, cy + r * 0.3, black);
            f.rect(cv, r * 0.14, cy - r * 0.2, r * 0.26, cy + r * 0.2, white);
        }
        SignShape::Mandatory(d) => {
            f.ellipse(cv, 0.0, cy, r, r, [0.08, 0.3, 0.72]);
            let d = d as f32;
            if d == 0.0 {
                f.rect(cv, -r * 0.12, cy - r * 0.6, r * 0.12, cy + r * 0.15, white);
                f.poly(
                    cv,
                    &[
                        (-r * 0.4, cy + r * 0.1),
                        (r * 0.4, cy + r * 0.1),
                        (0.0, cy + r * 0.65),
                    ],
                    white,
                );
            } else {
                f.rect(
                    cv,
                    -r * 0.6 * d,
                    cy - r * 0.12,
                    r * 0.15 * d,
                    cy + r * 0.12,
                    white,
                );
                f.poly(
                    cv,
                    &[
                        (r * 0.1 * d, cy - r * 0.4),
                        (r * 0.1 * d, cy + r * 0.4),
                        (r * 0.65 * d, cy),
                    ],
                    white,
                );
            }
        }
        SignShape::Warning | SignShape::Yield => {
            let up = if s.shape == SignShape::Warning {
                1.0
            } else {
                -1.0
            };
            let (side, ht) = sign_triangle_size(s);
            f.poly(cv, &sign_triangle(cy, side, up, 1.0), red);
            f.poly(cv, &sign_triangle(cy, side, up, 0.68), white);
            if up > 0.0 {
                draw_exclamation(f, cv, cy, side, ht, black);
            }
        }
        SignShape::Stop => {
            let mut pts = [(0.0f32, 0.0f32); 8];
            let mut inner = [(0.0f32, 0.0f32); 8];
            for k in 0..8 {
                let a = std::f32::consts::PI / 8.0 + k as f32 * std::f32::consts::PI / 4.0;
                pts[k] = (r * a.cos(), cy + r * a.sin());
                inner[k] = (r * 0.88 * a.cos(), cy + r * 0.88 * a.sin());
            }
            f.poly(cv, &pts, white);
            f.poly(cv, &inner, red);
            f.rect(cv, -r * 0.62, cy - r * 0.14, r * 0.62, cy + r * 0.14, white);
        }
        SignShape::Diamond => {
            f.poly(
                cv,
                &[(0.0, cy + r), (r, cy), (0.0, cy - r), (-r, cy)],
                black,
            );
            let k = r * 0.92;
            f.poly(
                cv,
                &[(0.0, cy + k), (k, cy), (0.0, cy - k), (-k, cy)],
                [0.97, 0.78, 0.08],
            );
            f.rect(cv, -r * 0.08, cy - r * 0.45, r * 0.08, cy + r * 0.2, black);
            f.poly(
                cv,
                &[
                    (-r * 0.28, cy + r * 0.15),
                    (r * 0.28, cy + r * 0.15),
                    (0.0, cy + r * 0.5),
                ],
                black,
            );
        }
        SignShape::YellowTriangle => {
            let (side, ht) = sign_triangle_size(s);
            f.poly(cv, &sign_triangle(cy, side, 1.0, 1.0), black);
            f.poly(cv, &sign_triangle(cy, side, 1.0, 0.86), [0.97, 0.78, 0.08]);
            draw_exclamation(f, cv, cy, side, ht, black);
        }
        SignShape::StopTriangle => {
            // Point down; the legend (止まれ) as white strokes in the wide upper half.
            let (side, ht) = sign_triangle_size(s);
            f.poly(cv, &sign_triangle(cy, side, -1.0, 1.0), white);
            f.poly(cv, &sign_triangle(cy, side, -1.0, 0.88), red);
            f.rect(
                cv,
                -side * 0.24,
                cy + ht * 0.12,
                side * 0.24,
                cy + ht * 0.17,
                white,
            );
            f.rect(
                cv,
                -side * 0.17,
                cy + ht * 0.01,
                side * 0.17,
                cy + ht * 0.06,
                white,
            );
            f.rect(
                cv,
                -side * 0.025,
                cy - ht * 0.02,
                side * 0.025,
                cy + ht * 0.2,
                white,
            );
        }
        SignShape::Info { aspect, bg, fg } => {
            let hw = r * aspect;
            f.rect(cv, -hw, cy - r, hw, cy + r, fg);
            let b = 0.05 * r.max(0.3);
            f.rect(cv, -hw + b, cy - r + b, hw - b, cy + r - b, bg);
            let lines = if s.size > 1.5 { 3 } else { 2 };
            for k in 0..lines {
                let t = (k as f32 + 0.5) / lines as f32;
                let ly = cy + r * 0.6 - t * r * 1.2;
                let len = 0.45 + 0.4 * (0.5 + 0.5 * hash2(k, (s.z * 10.0) as i32, 17));
                f.rect(
                    cv,
                    -hw * len * 0.85,
                    ly - r * 0.09,
                    hw * len * 0.85,
                    ly + r * 0.09,
                    fg,
                );
            }
        }
    }
}

fn draw_tree(ctx: &mut Ctx, t: &Tree) {
    let f = Face::new(&ctx.cam, t.x, t.z);
    ctx.cv.at_depth(t.z);
    let cv = &mut ctx.cv;
    let cr = t.crown_r;
    let top = t.trunk_h + cr;
    f.rect(
        cv,
        -t.trunk_w * 0.5,
        0.0,
        t.trunk_w * 0.5,
        t.trunk_h + cr * 0.5,
        [0.3, 0.22, 0.15],
    );
    for k in 0..5 {
        let a = hash2(k, 1, t.seed);
        let b = hash2(k, 2, t.seed);
        let rk = cr * (0.55 + 0.25 * (hash2(k, 3, t.seed) * 0.5 + 0.5));
        let shade = 0.8 + 0.3 * (hash2(k, 4, t.seed) * 0.5 + 0.5);
        f.ellipse(
            cv,
            a * cr * 0.5,
            top + b * cr * 0.4,
            rk,
            rk * 0.9,
            scale(t.crown, shade),
        );
    }
}

fn draw_lamp(ctx: &mut Ctx, l: &Lamp) {
    let f = Face::new(&ctx.cam, l.x, l.z);
    ctx.cv.at_depth(l.z);
    let pole = [0.42, 0.43, 0.45];
    f.rect(&mut ctx.cv, -0.08, 0.0, 0.08, l.height, pole);
    f.line(
        &mut ctx.cv,
        (0.0, l.height - 0.05),
        (l.arm, l.height + 0.25),
        0.09,
        pole,
    );
    let (a, b) = (l.arm - 0.35 * l.arm.signum(), l.arm + 0.15 * l.arm.signum());
    f.rect(
        &mut ctx.cv,
        a.min(b),
        l.height + 0.1,
        a.max(b),
        l.height + 0.32,
        [0.3, 0.3, 0.32],
    );
    let lit = ctx.scene.env.lights_on;
    let halo = ctx.halo_strength();
    ctx.lamp(
        &f,
        a.min(b) + 0.03,
        l.height + 0.04,
        a.max(b) - 0.03,
        l.height + 0.12,
        [1.0, 0.88, 0.65],
        [0.6, 0.6, 0.58],
        lit,
        halo * 1.4,
    );
}

fn draw_beam(ctx: &mut Ctx, b: &Beam) {
    let f = Face::new(&ctx.cam, 0.0, b.z);
    ctx.cv.at_depth(b.z);
    let cv = &mut ctx.cv;
    let pw = if b.posts == 2 { 0.2 } else { 0.13 };
    f.rect(cv, b.x0 - pw, 0.0, b.x0 + pw, b.y + b.thick * 0.5, b.col);
    if b.posts == 2 {
        f.rect(cv, b.x1 - pw, 0.0, b.x1 + pw, b.y + b.thick * 0.5, b.col);
        f.rect(
            cv,
            b.x0.min(b.x1),
            b.y - b.thick * 0.5,
            b.x0.max(b.x1),
            b.y - b.thick * 0.35,
            scale(b.col, 0.8),
        );
    }
    f.rect(
        cv,
        b.x0.min(b.x1),
        b.y - b.thick * 0.5,
        b.x0.max(b.x1),
        b.y + b.thick * 0.5,
        b.col,
    );
}
