//! Renders a [`Scene`] into an image, the two masks and tight boxes.
//!
//! Painter's order: sky, backdrop and clouds; the ground row by row (road, markings, masks);
//! roadside structures; then every object far to near, so nearer objects occlude farther
//! ones; the ego bonnet; light halos; rain; sensor noise. Labelled objects claim the pixels they
//! win in an ownership buffer: their box is the extent of the pixels they drew, and their
//! visible fraction is what they still own at the end.

use image::{GrayImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::canvas::{ffloor, frac, hash2, mix, scale, Canvas, Col, NoiseTable};
use super::frame::Ctx;
use super::layout::{Backdrop, Dash, Material, ObjKind, Scene, Time, Wall, WallStyle};
use super::objects::draw_object;
use percept_data::BoxLabel;

/// Objects whose box is smaller than this (px, either side) are not labelled.
const MIN_BOX_PX: i32 = 4;
/// Objects with less than this fraction of their drawn pixels visible are not labelled.
const MIN_VISIBLE: f32 = 0.3;

const WINDOW_LIT: Col = [1.0, 0.85, 0.55];
const SHOP_LIT: Col = [0.75, 0.66, 0.5];

pub(crate) struct Rendered {
    pub image: RgbImage,
    pub drivable: GrayImage,
    pub lanes: GrayImage,
    pub boxes: Vec<BoxLabel>,
    /// For each kept box: (oncoming vehicle, world X of the object).
    pub meta: Vec<(bool, f32)>,
}

pub(crate) fn render(scene: &Scene) -> Rendered {
    let env = &scene.env;
    let mut ctx = Ctx {
        cv: Canvas::new(scene.w, scene.h, env.ambient, env.fog, env.visibility),
        cam: scene.cam,
        scene,
        glows: Vec::new(),
    };
    draw_sky(&mut ctx);
    draw_ground(&mut ctx);

    // Buildings far to near, then the nearer rails and barriers outside-in.
    let mut walls: Vec<&Wall> = scene.walls.iter().collect();
    walls.sort_by(|a, b| {
        let thin = |w: &Wall| w.depth_x < 1.0;
        thin(a).cmp(&thin(b)).then(if thin(a) {
            b.xf.abs().total_cmp(&a.xf.abs())
        } else {
            b.z0.total_cmp(&a.z0)
        })
    });
    ctx.cv.solid = true;
    for w in walls {
        draw_wall(&mut ctx, w);
    }

    // Objects, far to near (the scene keeps them sorted).
    let mut labelled: Vec<(u16, u16, usize, bool, f32)> = Vec::new();
    for obj in &scene.objs {
        let id = draw_object(&mut ctx, &obj.kind, obj.class.is_some());
        if let (Some(class), Some(id)) = (obj.class, id) {
            let drawn = ctx.cv.owned_pixels(id);
            let x = object_x(&obj.kind);
            labelled.push((id, class, drawn, obj.oncoming, x));
        }
    }
    if let Some((frac, col)) = scene.hood {
        draw_hood(&mut ctx, frac, col);
    }
    // Halos of lamps that are still visible.
    let glows = std::mem::take(&mut ctx.glows);
    for g in glows {
        let (xi, yi) = (g.x.floor() as i64, g.y.floor() as i64);
        let inside = xi >= 0 && yi >= 0 && (xi as usize) < ctx.cv.w && (yi as usize) < ctx.cv.h;
        if inside && ctx.cv.owner[yi as usize * ctx.cv.w + xi as usize] == g.owner {
            ctx.cv.glow(g.x, g.y, g.r, g.col, g.strength);
        }
    }
    let mut noise_rng = ChaCha8Rng::seed_from_u64(scene.noise_seed);
    if let Some((n, slant, len)) = scene.rain {
        draw_rain(&mut ctx.cv, &mut noise_rng, n, slant, len);
    }

    let mut boxes = Vec::new();
    let mut meta = Vec::new();
    for (id, class, drawn, oncoming, x) in labelled {
        let e = ctx.cv.extents[id as usize];
        if drawn == 0 || e[2] - e[0] + 1 < MIN_BOX_PX || e[3] - e[1] + 1 < MIN_BOX_PX {
            continue;
        }
        let visible = ctx.cv.owned_pixels(id);
        if (visible as f32) < MIN_VISIBLE * drawn as f32 {
            continue;
        }
        boxes.push(BoxLabel {
            class,
            x1: e[0] as f32,
            y1: e[1] as f32,
            x2: (e[2] + 1) as f32,
            y2: (e[3] + 1) as f32,
        });
        meta.push((oncoming, x));
    }

    let image = finish_pixels(&ctx.cv, scene, &mut noise_rng);
    let (w, h) = (scene.w as u32, scene.h as u32);
    let cv = ctx.cv;
    Rendered {
        image,
        drivable: GrayImage::from_raw(w, h, cv.drivable).unwrap_or_else(|| GrayImage::new(w, h)),
        lanes: GrayImage::from_raw(w, h, cv.lanes).unwrap_or_else(|| GrayImage::new(w, h)),
        boxes,
        meta,
    }
}

fn object_x(kind: &ObjKind) -> f32 {
    match kind {
        ObjKind::Vehicle(v) => v.x,
        ObjKind::Person(p) => p.x,
        ObjKind::Cyclist(c) => c.rider.x,
        ObjKind::Light(l) => l.x,
        ObjKind::Sign(s) => s.x,
        ObjKind::Tree(t) => t.x,
        ObjKind::Lamp(l) => l.x,
        ObjKind::Beam(b) => b.x0,
    }
}

fn draw_sky(ctx: &mut Ctx) {
    let scene = ctx.scene;
    let env = &scene.env;
    let cv = &mut ctx.cv;
    cv.solid = false;
    cv.unshaded();
    let hy = ctx.cam.hy;
    let rows = (hy.ceil().max(0.0) as usize).min(cv.h);
    for y in 0..rows {
        let t = ((y as f32 + 0.5) / hy.max(1.0)).clamp(0.0, 1.0).powf(0.8);
        let c = mix(env.sky_top, env.sky_horizon, t);
        cv.rgb[y * cv.w..(y + 1) * cv.w].fill(c);
    }
    for cl in &scene.clouds {
        let c = match env.time {
            Time::Dusk => [0.95, 0.7, 0.6],
            _ => mix([0.97, 0.97, 0.98], env.sky_horizon, 0.3),
        };
        cv.alpha = cl.alpha;
        cv.ellipse(cl.x, cl.y, cl.rx, cl.ry, c);
        cv.ellipse(
            cl.x + cl.rx * 0.4,
            cl.y - cl.ry * 0.4,
            cl.rx * 0.5,
            cl.ry * 0.8,
            c,
        );
    }
    cv.alpha = 1.0;
    cv.solid = true;
    match &scene.backdrop {
        Backdrop::Hills { col, waves, base } => {
            cv.at_depth(2500.0);
            let c = *col;
            for x in 0..cv.w {
                let xf = x as f32;
                let mut hpx = *base;
                for &(amp, wl, ph) in waves {
                    hpx += amp * (0.5 + 0.5 * (xf / wl * std::f32::consts::TAU + ph).sin());
                }
                let top = hy - hpx;
                let y0 = top.max(0.0).floor() as i32;
                let y1 = (hy.ceil() as i32).min(cv.h as i32);
                for y in y0..y1 {
                    let cov = ((y + 1) as f32 - top).clamp(0.0, 1.0);
                    cv.put(x, y as usize, c, cov);
                }
            }
        }
        Backdrop::Skyline { col, blocks } => {
            cv.at_depth(900.0);
            let night = env.time == Time::Night;
            for &(x0, x1, hf) in blocks {
                let top = hy - hf * hy * 0.6;
                cv.rect(x0, top, x1, hy.ceil(), scale(*col, 0.9 + 0.2 * hf));
                if night {
                    // A few lit windows.
                    let (xa, xb) = (x0.max(0.0) as i32, (x1.min(cv.w as f32)) as i32);
                    let (ya, yb) = (top.max(0.0) as i32, (hy.ceil() as i32).min(cv.h as i32));
                    cv.emissive(900.0);
                    for y in (ya..yb).step_by(2) {
                        for x in (xa..xb).step_by(2) {
                            if hash2(x, y, 99) > 0.9 {
                                cv.put(x as usize, y as usize, WINDOW_LIT, 0.7);
                            }
                        }
                    }
                    cv.at_depth(900.0);
                }
            }
        }
    }
}

/// Painted fraction of the depth interval `[za, zb]` for a dashed line.
fn dash_fraction(d: &Dash, za: f32, zb: f32) -> f32 {
    let painted = |z: f32| {
        let t = z + d.phase;
        let n = (t / d.period).floor();
        n * d.len + (t - n * d.period).min(d.len)
    };
    if zb - za < 1e-4 {
        let t = (za + d.phase).rem_euclid(d.period);
        return if t < d.len { 1.0 } else { 0.0 };
    }
    ((painted(zb) - painted(za)) / (zb - za)).clamp(0.0, 1.0)
}

fn draw_ground(ctx: &mut Ctx) {
    let scene = ctx.scene;
    let cam = ctx.cam;
    let road = &scene.road;
    let env = &scene.env;
    let cv = &mut ctx.cv;
    let (w, h) = (cv.w, cv.h);
    let seed = scene.tex_seed;
    let wet = env.weather == super::layout::Weather::Rainy;
    let night = env.time == Time::Night;
    let amb_mean = (env.ambient[0] + env.ambient[1] + env.ambient[2]) / 3.0;
    let y_start = (cam.hy.ceil().max(0.0) as usize).min(h);
    // Grain in -1..1 (the table is triangular with sd 0.41; scale to about a uniform's range).
    let grain_tab = NoiseTable::new(u64::from(seed) ^ 0x6a09_e667);
    cv.solid = false;
    for y in y_start..h {
        let yc = y as f32 + 0.5;
        if yc - cam.hy < 0.05 {
            continue;
        }
        let z = cam.row_z(yc);
        // Depth interval the pixel row covers (near edge, far edge).
        let z_near = cam.row_z(yc + 0.5);
        let z_far = if yc - 0.5 - cam.hy > 1e-3 {
            cam.row_z(yc - 0.5)
        } else {
            f32::INFINITY
        };
        cv.at_depth(z);
        let off = cam.k * z * z;
        let mpp = z / cam.f; // metres per pixel at this row
        let fine = (12.0 / z).min(1.0); // texture grain fades with distance
        let zi = ffloor(z * 0.5) as i32;
        // Ego headlight intensity along this row (night only), and the retroreflection of
        // paint in the beams.
        let beam = if night {
            1.3 * (-z / 25.0).exp() * (z / 4.0).min(1.0)
        } else {
            0.0
        };
        // Wet roads reflect the sky more at grazing angles (far away).
        let sheen = if wet {
            0.35 * (1.0 - (-z / 30.0).exp())
        } else {
            0.0
        };
        let row = y * w;
        let grain_off = grain_tab.row_offset(y, seed);
        let (mut last_cell, mut last_patch) = (i32::MIN, 0.0);
        for zone in &road.zones {
            let px0 = cam.x(zone.x0, z);
            let px1 = cam.x(zone.x1, z);
            let x0 = ((px0 - 0.5).ceil().max(0.0) as usize).min(w);
            let x1 = ((px1 - 0.5).ceil().max(0.0) as usize).min(w);
            if x0 >= x1 {
                continue;
            }
            let base = match zone.mat {
                Material::Asphalt => road.asphalt,
                Material::Parking => scale(road.asphalt, 0.95),
                Material::Shoulder => road.shoulder,
                Material::Gravel => road.gravel,
                Material::Kerb => road.kerb,
                Material::Sidewalk => road.sidewalk,
                Material::Grass => road.grass,
            };
            let (grain_amp, patch_amp) = match zone.mat {
                Material::Asphalt | Material::Parking => (0.07, 0.03),
                Material::Shoulder => (0.08, 0.05),
                Material::Gravel => (0.2, 0.08),
                Material::Kerb => (0.05, 0.02),
                Material::Sidewalk => (0.06, 0.04),
                Material::Grass => (0.18, 0.15),
            };
            let wet_k = if wet && zone.mat != Material::Grass {
                0.7
            } else {
                1.0
            };
            for x in x0..x1 {
                let wx = (x as f32 + 0.5 - cam.vx) * mpp - off;
                let grain = grain_tab.at(grain_off + x) * grain_amp * fine;
                // Patches are 2 m cells: hash once per cell, not per pixel.
                // The offset keeps the argument positive so truncation is floor.
                let cell = (wx * 0.5 + 65536.0) as i32;
                if cell != last_cell {
                    last_cell = cell;
                    last_patch = hash2(cell, zi, seed ^ 0x9e37);
                }
                let patch = last_patch * patch_amp;
                let mut k = (1.0 + grain + patch) * wet_k;
                match zone.mat {
                    Material::Asphalt => {
                        // Darker tyre tracks in each lane.
                        let t = (wx - road.road_l) / road.lane_w + 4096.0;
                        let u = t - t as i32 as f32;
                        if (0.18..0.34).contains(&u) || (0.66..0.82).contains(&u) {
                            k *= 0.92;
                        }
                    }
                    Material::Sidewalk if z < 35.0 => {
                        let a = frac(wx * 0.8);
                        let b = frac(z * 0.8);
                        if a < 0.05 || b < 0.05 * z.max(1.0) / 4.0 {
                            k *= 0.85;
                        }
                    }
                    Material::Kerb => {
                        // The kerb's vertical face: darker on the road side.
                        let d = (wx - road.road_l).abs().min((wx - road.road_r).abs());
                        if d < 0.08 + 2.5 * mpp {
                            k *= 0.7;
                        }
                    }
                    _ => {}
                }
                let mut c = scale(base, k);
                if sheen > 0.0 && zone.mat != Material::Grass {
                    c = mix(c, env.sky_horizon, sheen);
                }
                if beam > 0.0 {
                    // Ego headlights light the road ahead.
                    let reach = (1.0 - wx.abs() / (0.3 * z + 1.5)).max(0.0);
                    let hl = beam * reach;
                    if hl > 0.0 {
                        c = scale(c, 1.0 + hl / amb_mean.max(0.05));
                    }
                }
                let sc = cv.shaded(c);
                cv.rgb[row + x] = sc;
            }
        }
        // Drivable mask: pixel centres on the carriageway.
        let dx0 = ((cam.x(road.road_l, z) - 0.5).ceil().max(0.0) as usize).min(w);
        let dx1 = ((cam.x(road.road_r, z) - 0.5).ceil().max(0.0) as usize).min(w);
        if dx0 < dx1 {
            cv.drivable[row + dx0..row + dx1].fill(1);
        }
        // Zebra crossing: bars along the road, not lane markings.
        let in_crosswalk = road
            .crosswalk
            .is_some_and(|(c0, c1)| z_near < c1 && z_far > c0);
        if let Some((c0, c1)) = road.crosswalk {
            if in_crosswalk {
                let frac = if z_far.is_finite() {
                    ((z_far.min(c1) - z_near.max(c0)) / (z_far - z_near)).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let mut xb = road.road_l + 0.4;
                while xb + 0.5 < road.road_r {
                    let col = scale([0.9, 0.9, 0.88], 0.9);
                    cv.span(y as i32, cam.x(xb, z), cam.x(xb + 0.5, z), col, frac);
                    xb += 1.0;
                }
            }
        }
        if z > road.marking_z_max || in_crosswalk {
            continue;
        }
        for m in &road.markings {
            let frac = match &m.dash {
                Some(d) => dash_fraction(d, z_near, z_far.min(z_near + 1e3)),
                None => 1.0,
            };
            if frac <= 0.0 {
                continue;
            }
            let c = cam.x(m.x, z);
            let hw = m.hw * cam.f / z;
            // Road paint is retroreflective: in the headlight beams it lights up.
            let col = if beam > 0.0 {
                let reach = (1.0 - m.x.abs() / (0.3 * z + 4.0)).max(0.0);
                scale(m.col, 1.0 + 2.5 * beam * reach / amb_mean.max(0.05))
            } else {
                m.col
            };
            cv.span(y as i32, c - hw, c + hw, col, frac.min(1.0));
            if frac >= 0.5 {
                // The mask keeps at least 2 px so a network at this resolution can learn it.
                let half = hw.max(1.0);
                let lx0 = ((c - half - 0.5).ceil().max(0.0) as usize).min(w);
                let lx1 = ((c + half - 0.5).ceil().max(0.0) as usize).min(w);
                if lx0 < lx1 {
                    cv.lanes[row + lx0..row + lx1].fill(1);
                }
            }
        }
    }
    cv.solid = true;
}

/// What a facade looks like along one image column (constant down the column).
#[derive(Clone, Copy)]
struct FacadeColumn {
    /// Window bay index (seeds per-window variation).
    bay: i32,
    /// The column crosses an upper-floor window.
    window: bool,
    /// The column crosses a shop window.
    shop_window: bool,
    /// The column crosses a rail post or a wall seam.
    post: bool,
}

fn facade_column(wall: &Wall, along: f32) -> FacadeColumn {
    match wall.style {
        WallStyle::Facade { bay, win_w, .. } => {
            let t = along / bay;
            let bi = ffloor(t);
            let fa = t - bi;
            let m = (1.0 - win_w) * 0.5;
            FacadeColumn {
                bay: bi as i32,
                window: fa > m && fa < 1.0 - m,
                shop_window: fa > 0.08 && fa < 0.92,
                post: false,
            }
        }
        WallStyle::Rail => FacadeColumn {
            bay: 0,
            window: false,
            shop_window: false,
            post: frac(along * 0.5) < 0.075,
        },
        WallStyle::Plain => FacadeColumn {
            bay: 0,
            window: false,
            shop_window: false,
            post: frac(along * 0.25) < 0.015,
        },
    }
}

/// The colour of a wall point at height `y` in column `c`; `true` when it is a lit window
/// (emissive). `None` where the wall has nothing (between rail posts).
fn facade_colour(wall: &Wall, c: &FacadeColumn, y: f32) -> Option<(Col, bool)> {
    match wall.style {
        WallStyle::Facade {
            floor_h,
            win_h,
            glass,
            lit,
            shop,
            ..
        } => {
            let t = y / floor_h;
            let fl = ffloor(t);
            let fy = t - fl;
            let seed = wall.seed;
            if shop && fl < 1.0 {
                // Ground-floor shop front: large windows between pillars.
                if fy > 0.08 && fy < 0.8 && c.shop_window {
                    let on = lit > 0.0 && hash2(c.bay, -1, seed) < 0.2;
                    return Some(if on {
                        (SHOP_LIT, true)
                    } else {
                        (mix(glass, [0.3, 0.3, 0.32], 0.3), false)
                    });
                }
                return Some((scale(wall.col, 0.7), false));
            }
            let sill = (1.0 - win_h) * 0.45;
            if c.window && fy > sill && fy < sill + win_h && y < wall.y1 - 0.5 {
                let h = hash2(c.bay, fl as i32, seed);
                if lit > 0.0 && h * 0.5 + 0.5 < lit {
                    return Some((WINDOW_LIT, true));
                }
                // Panes reflect the sky unevenly.
                let k = 0.8 + 0.4 * (hash2(c.bay, fl as i32, seed ^ 5) * 0.5 + 0.5);
                return Some((scale(glass, k), false));
            }
            Some((wall.col, false))
        }
        WallStyle::Rail => {
            let rel = (y - wall.y0) / (wall.y1 - wall.y0);
            if rel < 0.0 {
                return c.post.then_some(([0.35, 0.36, 0.38], false));
            }
            if c.post && !(0.2..0.8).contains(&rel) {
                return Some(([0.35, 0.36, 0.38], false));
            }
            Some(if (0.35..0.65).contains(&rel) {
                (scale(wall.col, 0.8), false)
            } else {
                (wall.col, false)
            })
        }
        WallStyle::Plain => {
            let k = if c.post {
                0.85
            } else {
                1.0 - 0.08 * (y / wall.y1.max(0.1))
            };
            Some((scale(wall.col, k), false))
        }
    }
}

fn draw_wall(ctx: &mut Ctx, wall: &Wall) {
    let cam = ctx.cam;
    let cv = &mut ctx.cv;
    let (w, h) = (cv.w as i32, cv.h as i32);
    let side = wall.xf.signum();
    let z0 = wall.z0.max(0.5);
    // Rails are posts below the rail band: the column spans from the ground.
    let y_low = if matches!(wall.style, WallStyle::Rail) {
        0.0
    } else {
        wall.y0
    };
    // Road-facing side: one column at a time, with the depth that column sees.
    let xa = cam.x(wall.xf, z0);
    let xb = cam.x(wall.xf, wall.z1);
    let c0 = xa.min(xb).max(0.0) as i32;
    let c1 = xa.max(xb).ceil().min(w as f32) as i32;
    // The road-facing side gets less light than fronts facing the camera.
    let side_k = 0.82;
    for col in c0..c1 {
        let Some(z) = cam.wall_z(wall.xf, col as f32 + 0.5) else {
            continue;
        };
        if z < z0 || z > wall.z1 {
            continue;
        }
        let yt = cam.y(wall.y1, z);
        let yb = cam.y(y_low, z);
        let gable_top = match wall.style {
            WallStyle::Facade { gable, .. } if gable > 0.0 => cam.y(wall.y1 + 0.35, z),
            _ => yt,
        };
        cv.emissive(z);
        let lit_col = cv.shaded(WINDOW_LIT);
        let shop_col = cv.shaded(SHOP_LIT);
        cv.at_depth(z);
        let fc = facade_column(wall, z - wall.z0);
        let ya = gable_top.max(0.0) as i32;
        let yz = (yb.ceil() as i32).min(h);
        let mpp = z / cam.f;
        for y in ya..yz {
            let cov = (((y + 1) as f32).min(yb) - (y as f32).max(gable_top)).clamp(0.0, 1.0);
            if (y as f32 + 0.5) < yt {
                // Eaves of a pitched roof.
                cv.put(col as usize, y as usize, [0.3, 0.2, 0.18], cov);
                continue;
            }
            let wy = cam.cam_h - (y as f32 + 0.5 - cam.hy) * mpp;
            match facade_colour(wall, &fc, wy) {
                Some((c, true)) => {
                    let lc = if c == SHOP_LIT { shop_col } else { lit_col };
                    cv.put_raw(col as usize, y as usize, lc, cov)
                }
                Some((c, false)) => cv.put(col as usize, y as usize, scale(c, side_k), cov),
                None => {}
            }
        }
    }
    // Front facing the camera, at the near end.
    if matches!(wall.style, WallStyle::Rail) || wall.z0 < 1.0 {
        return;
    }
    let xo = wall.xf + side * wall.depth_x;
    let (fx0, fx1) = {
        let (a, b) = (cam.x(wall.xf, z0), cam.x(xo, z0));
        (a.min(b), a.max(b))
    };
    let (fy0, fy1) = (cam.y(wall.y1, z0), cam.y(wall.y0, z0));
    cv.emissive(z0);
    let lit_col = cv.shaded(WINDOW_LIT);
    let shop_col = cv.shaded(SHOP_LIT);
    cv.at_depth(z0);
    let mpp = z0 / cam.f;
    let off = cam.k * z0 * z0;
    let (xs, xe) = (fx0.max(0.0) as i32, fx1.min(w as f32).ceil() as i32);
    let (ys, ye) = (fy0.max(0.0) as i32, fy1.min(h as f32).ceil() as i32);
    for x in xs..xe {
        let xcov = (((x + 1) as f32).min(fx1) - (x as f32).max(fx0)).clamp(0.0, 1.0);
        let wx = (x as f32 + 0.5 - cam.vx) * mpp - off;
        // Offset so the corner does not start exactly on a window.
        let fc = facade_column(wall, (wx - wall.xf).abs() + 1.3);
        for y in ys..ye {
            let ycov = (((y + 1) as f32).min(fy1) - (y as f32).max(fy0)).clamp(0.0, 1.0);
            let wy = cam.cam_h - (y as f32 + 0.5 - cam.hy) * mpp;
            match facade_colour(wall, &fc, wy) {
                Some((c, true)) => {
                    let lc = if c == SHOP_LIT { shop_col } else { lit_col };
                    cv.put_raw(x as usize, y as usize, lc, xcov * ycov)
                }
                Some((c, false)) => cv.put(x as usize, y as usize, c, xcov * ycov),
                None => {}
            }
        }
    }
    if let WallStyle::Facade { gable, .. } = wall.style {
        if gable > 0.0 {
            let ytop = cam.y(wall.y1 + gable, z0);
            let mid = (fx0 + fx1) * 0.5;
            let over = (fx1 - fx0) * 0.04;
            cv.poly(
                &[(fx0 - over, fy0), (fx1 + over, fy0), (mid, ytop)],
                [0.32, 0.2, 0.17],
            );
            let inset = (fx1 - fx0) * 0.08;
            let ytop2 = ytop + (fy0 - ytop) * 0.16;
            cv.poly(
                &[(fx0 + inset, fy0), (fx1 - inset, fy0), (mid, ytop2)],
                scale(wall.col, 0.95),
            );
        }
    }
}

fn draw_hood(ctx: &mut Ctx, frac: f32, col: Col) {
    let cv = &mut ctx.cv;
    let (w, h) = (cv.w as f32, cv.h as f32);
    let y0 = h * (1.0 - frac);
    let depth = h * frac * 0.7;
    cv.solid = true;
    cv.end_object();
    cv.at_depth(0.0);
    let sky = ctx.scene.env.sky_horizon;
    for y in (y0.floor().max(0.0) as i32)..(h as i32) {
        let t = ((y as f32 + 0.5 - y0) / depth).max(0.0);
        let half = w * 0.5 * t.sqrt() * 1.6;
        // Reflections of the sky near the edge of the bonnet.
        let refl = (1.0 - t).clamp(0.0, 1.0) * 0.35;
        cv.span(y, w * 0.5 - half, w * 0.5 + half, mix(col, sky, refl), 1.0);
    }
}

fn draw_rain(cv: &mut Canvas, r: &mut ChaCha8Rng, n: usize, slant: f32, len: f32) {
    cv.solid = false;
    cv.unshaded();
    for _ in 0..n {
        let x = r.random::<f32>() * cv.w as f32;
        let y = r.random::<f32>() * cv.h as f32;
        let l = len * (0.6 + 0.8 * r.random::<f32>());
        cv.alpha = 0.12 + 0.2 * r.random::<f32>();
        cv.line((x, y), (x + slant * l, y + l), 1.0, [0.85, 0.87, 0.9]);
    }
    cv.alpha = 1.0;
    cv.solid = true;
}

/// Rounds to the nearest integer in 0..=255. Adding 1.5 * 2^23 puts the rounded integer in the
/// low mantissa bits: branch-free and vectorisable, unlike a saturating float-to-int cast.
#[inline]
fn to_u8(v: f32) -> u8 {
    let f = v.clamp(0.0, 255.0) + 12_582_912.0;
    (f.to_bits() & 0xff) as u8
}

/// Adds vignetting and sensor noise and quantises to 8 bits.
fn finish_pixels(cv: &Canvas, scene: &Scene, r: &mut ChaCha8Rng) -> RgbImage {
    let (w, h) = (cv.w, cv.h);
    let mut out = vec![0u8; w * h * 3];
    // Separable vignette: cheap and smooth.
    let vig = |i: usize, n: usize| {
        let t = (i as f32 + 0.5) / n as f32 * 2.0 - 1.0;
        1.0 - 0.12 * t * t
    };
    let vx: Vec<f32> = (0..w).map(|x| vig(x, w)).collect();
    // Table values have sd 0.408: scale to the scene's noise level (in 0..255 units).
    let k = scene.env.noise * 255.0 / 0.408;
    let tab = NoiseTable::new(r.random());
    let salt: u32 = r.random();
    for y in 0..h {
        let vy = vig(y, h);
        let row = &cv.rgb[y * w..(y + 1) * w];
        let orow = &mut out[y * w * 3..(y + 1) * w * 3];
        let (lo, co) = (
            tab.row_offset(y, salt),
            tab.row_offset(y, salt ^ 0x5bd1_e995),
        );
        for (x, (p, o)) in row.iter().zip(orow.chunks_exact_mut(3)).enumerate() {
            let v = vx[x] * vy * 255.0;
            // Mostly luminance noise with a little chroma.
            let l = tab.at(lo + x) * k;
            let c = tab.at(co + x) * k * 0.4;
            o[0] = to_u8(p[0] * v + l + c);
            o[1] = to_u8(p[1] * v + l);
            o[2] = to_u8(p[2] * v + l - c);
        }
    }
    RgbImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| RgbImage::new(w as u32, h as u32))
}
