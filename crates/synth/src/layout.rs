//! The random description of one scene: camera, conditions, road cross-section, roadside
//! structures and objects. Everything random is drawn here, from the scene's RNG; the renderer
//! is deterministic given a [`Scene`].
//!
//! World frame (metres): `X` lateral (positive right of the camera), `Y` up from the road,
//! `Z` forward. The road centre line bends as `X_offset = k * Z^2` (a gentle curve), applied
//! in the projection so every object placed "in lane i" follows the curve.
//!
//! Scenes are laid out for right-hand traffic (ego on the right of the centre line, oncoming
//! lanes on the left); left-hand traffic is the exact mirror image and is produced by flipping
//! the rendered frame (see `super::generate`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use percept_data::{EdgeLines, StopSign, WarningSign};

use super::canvas::{mix, scale, Col};
use super::{
    CentreLine, AUTO_RICKSHAW, BUS, CAR, CYCLIST, PEDESTRIAN, SIGN, TRAFFIC_LIGHT, TRICYCLE, TRUCK,
};

/// Long side of a traffic-light housing, metres.
pub(crate) const LIGHT_LONG: f32 = 1.0;
/// Short side of a traffic-light housing, metres.
pub(crate) const LIGHT_SHORT: f32 = 0.36;

pub(crate) type R = ChaCha8Rng;

pub(crate) fn uni(r: &mut R, a: f32, b: f32) -> f32 {
    a + (b - a) * r.random::<f32>()
}

pub(crate) fn chance(r: &mut R, p: f32) -> bool {
    r.random::<f32>() < p
}

fn irange(r: &mut R, lo: usize, hi_incl: usize) -> usize {
    r.random_range(lo..=hi_incl)
}

/// Weighted choice; weights need not sum to 1.
fn pick<T: Copy>(r: &mut R, items: &[(T, f32)]) -> T {
    let total: f32 = items.iter().map(|i| i.1).sum();
    let mut u = r.random::<f32>() * total;
    for &(item, w) in items {
        if u < w {
            return item;
        }
        u -= w;
    }
    items[items.len() - 1].0
}

fn jitter(c: Col, r: &mut R, amount: f32) -> Col {
    [
        (c[0] + uni(r, -amount, amount)).clamp(0.0, 1.0),
        (c[1] + uni(r, -amount, amount)).clamp(0.0, 1.0),
        (c[2] + uni(r, -amount, amount)).clamp(0.0, 1.0),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Time {
    Day,
    Dusk,
    Night,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Weather {
    Clear,
    Overcast,
    Rainy,
    Foggy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Highway,
    City,
    Residential,
}

impl Time {
    pub fn name(self) -> &'static str {
        match self {
            Time::Day => "daytime",
            Time::Dusk => "dawn/dusk",
            Time::Night => "night",
        }
    }
}

impl Weather {
    pub fn name(self) -> &'static str {
        match self {
            Weather::Clear => "clear",
            Weather::Overcast => "overcast",
            Weather::Rainy => "rainy",
            Weather::Foggy => "foggy",
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Highway => "highway",
            Kind::City => "city street",
            Kind::Residential => "residential",
        }
    }
}

/// Pinhole camera over a flat road with a curving centre line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cam {
    /// Focal length, pixels.
    pub f: f32,
    /// Vanishing point column and horizon row, pixels.
    pub vx: f32,
    pub hy: f32,
    /// Camera height above the road, metres.
    pub cam_h: f32,
    /// Curvature: the road centre is at `X = k * Z^2`.
    pub k: f32,
}

impl Cam {
    /// Image column of world point (x, z).
    #[inline]
    pub fn x(&self, x: f32, z: f32) -> f32 {
        self.vx + self.f * (x + self.k * z * z) / z
    }
    /// Image row of height `y` at depth `z`.
    #[inline]
    pub fn y(&self, y: f32, z: f32) -> f32 {
        self.hy + self.f * (self.cam_h - y) / z
    }
    /// Pixels per metre at depth `z`.
    #[inline]
    pub fn s(&self, z: f32) -> f32 {
        self.f / z
    }
    /// Depth of the road seen at image row `yc` (below the horizon).
    #[inline]
    pub fn row_z(&self, yc: f32) -> f32 {
        self.f * self.cam_h / (yc - self.hy)
    }
    /// Depth at which image column `px` meets the vertical plane at lateral `xf`: the nearer
    /// root of `f*k*Z^2 - (px - vx)*Z + f*xf = 0`; `None` when the column misses it.
    pub fn wall_z(&self, xf: f32, px: f32) -> Option<f32> {
        let u = px - self.vx;
        let disc = u * u - 4.0 * self.f * self.f * self.k * xf;
        if disc < 0.0 {
            return None;
        }
        let den = u + u.signum() * disc.sqrt();
        if den.abs() < 1e-6 {
            return None;
        }
        let z = 2.0 * self.f * xf / den;
        (z > 0.0).then_some(z)
    }
}

/// Lighting and atmosphere.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub time: Time,
    pub weather: Weather,
    pub kind: Kind,
    pub ambient: Col,
    pub fog: Col,
    pub visibility: f32,
    pub sky_top: Col,
    pub sky_horizon: Col,
    /// Pixel noise standard deviation (0..1 units).
    pub noise: f32,
    /// Vehicle lights and street lamps are on.
    pub lights_on: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Material {
    Asphalt,
    Parking,
    Shoulder,
    Gravel,
    Kerb,
    Sidewalk,
    Grass,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Zone {
    pub x0: f32,
    pub x1: f32,
    pub mat: Material,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Dash {
    pub len: f32,
    pub period: f32,
    pub phase: f32,
}

/// A painted longitudinal line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marking {
    /// Centre, lateral metres.
    pub x: f32,
    /// Half width, metres.
    pub hw: f32,
    pub col: Col,
    pub dash: Option<Dash>,
}

#[derive(Debug, Clone)]
pub(crate) struct Road {
    pub lane_w: f32,
    /// Drivable carriageway: all lanes of both directions.
    pub road_l: f32,
    pub road_r: f32,
    /// Boundary between oncoming (left) and same-direction (right) lanes; `road_l` on a
    /// one-way carriageway.
    pub centre: f32,
    /// Lateral position of a median concrete barrier (one-way carriageways).
    pub barrier: Option<f32>,
    /// Ground cross-section from far left to far right (sorted, contiguous).
    pub zones: Vec<Zone>,
    pub markings: Vec<Marking>,
    /// Zebra crossing as a depth range.
    pub crosswalk: Option<(f32, f32)>,
    pub asphalt: Col,
    pub shoulder: Col,
    pub sidewalk: Col,
    pub kerb: Col,
    pub grass: Col,
    pub gravel: Col,
    /// Lanes painted markings stop beyond this depth (they would merge into a smear).
    pub marking_z_max: f32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum WallStyle {
    /// Building: window grid; `shop` adds a dark ground floor; `gable` a roof triangle (m).
    Facade {
        bay: f32,
        floor_h: f32,
        win_w: f32,
        win_h: f32,
        glass: Col,
        lit: f32,
        shop: bool,
        gable: f32,
    },
    /// Steel guard rail on posts.
    Rail,
    /// Concrete barrier or noise wall.
    Plain,
}

/// A box-shaped roadside structure whose road-facing side lies in the plane `X = xf`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wall {
    pub xf: f32,
    /// Extent away from the road (towards larger |X|), metres.
    pub depth_x: f32,
    pub z0: f32,
    pub z1: f32,
    pub y0: f32,
    pub y1: f32,
    pub col: Col,
    pub style: WallStyle,
    pub seed: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Facing {
    Front,
    Back,
    Left,
    Right,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Vehicle {
    pub class: u16,
    pub x: f32,
    pub z: f32,
    pub w: f32,
    pub h: f32,
    pub len: f32,
    pub oncoming: bool,
    pub body: Col,
    /// Car variant (0 sedan, 1 hatchback, 2 SUV, 3 van) or bus variant (1 double decker).
    pub style: u8,
    pub cargo: Col,
    pub lights_on: bool,
    pub brake: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Person {
    pub x: f32,
    pub z: f32,
    pub height: f32,
    pub facing: Facing,
    pub phase: f32,
    pub shirt: Col,
    pub trousers: Col,
    pub skin: Col,
    pub hair: Col,
    pub umbrella: Option<Col>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Cyclist {
    pub rider: Person,
    pub bike: Col,
    pub helmet: Col,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Light {
    pub x: f32,
    pub z: f32,
    /// Height of the housing's bottom edge, metres.
    pub bottom: f32,
    pub horizontal: bool,
    /// 0 red, 1 amber, 2 green.
    pub state: u8,
    pub housing: Col,
    pub backboard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SignShape {
    /// Red ring, white disc, black legend.
    Prohibitory,
    /// Blue disc, white arrow (direction -1 left, 0 up, 1 right).
    Mandatory(i8),
    /// Red-bordered triangle, point up.
    Warning,
    /// Red-bordered triangle, point down.
    Yield,
    /// Red octagon.
    Stop,
    /// Yellow diamond.
    Diamond,
    /// Rectangle with text-like stripes; width/height ratio.
    Info { aspect: f32, bg: Col, fg: Col },
    /// Yellow triangle, black border, point up (China's warning signs).
    YellowTriangle,
    /// Red triangle, point down, white rim and legend (Japan's stop sign, 止まれ).
    StopTriangle,
}

/// What a country profile changes in a scene: the edge lines, the sign families and the
/// vehicles new to the country. The traffic side is applied by mirroring the rendered frame
/// and the centre-line colour is passed to [`Scene::random`] as for a region.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Style {
    pub edge_lines: EdgeLines,
    pub warning: WarningSign,
    pub stop: StopSign,
    /// Internal classes of the vehicles new to the country (`AUTO_RICKSHAW`, `TRICYCLE`).
    pub new_vehicles: Vec<u16>,
}

impl Style {
    /// The country's version of a generic sign shape: warning signs (triangles and diamonds)
    /// in the country's warning family, stop signs in its stop shape. Where the stop sign is a
    /// red inverted triangle (Japan) the white give-way triangle becomes one as well (Japan's
    /// 徐行 sign has the same shape).
    fn sign(&self, shape: SignShape) -> SignShape {
        match shape {
            SignShape::Warning | SignShape::Diamond => match self.warning {
                WarningSign::RedTriangle => SignShape::Warning,
                WarningSign::YellowTriangle => SignShape::YellowTriangle,
                WarningSign::YellowDiamond => SignShape::Diamond,
            },
            SignShape::Stop => match self.stop {
                StopSign::Octagon => SignShape::Stop,
                StopSign::InvertedTriangle => SignShape::StopTriangle,
            },
            SignShape::Yield if self.stop == StopSign::InvertedTriangle => SignShape::StopTriangle,
            s => s,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sign {
    pub x: f32,
    pub z: f32,
    /// Height of the sign centre, metres.
    pub centre: f32,
    /// Height of the sign face, metres.
    pub size: f32,
    pub shape: SignShape,
    /// Drawn on its own post (otherwise it hangs on a gantry).
    pub post: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tree {
    pub x: f32,
    pub z: f32,
    pub trunk_h: f32,
    pub trunk_w: f32,
    pub crown_r: f32,
    pub crown: Col,
    pub seed: u32,
}

/// Street lamp: post, arm reaching over the road (signed lateral length) and lamp head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lamp {
    pub x: f32,
    pub z: f32,
    pub height: f32,
    pub arm: f32,
}

/// Horizontal beam (signal mast arm or sign gantry) with its posts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beam {
    pub x0: f32,
    pub x1: f32,
    pub z: f32,
    pub y: f32,
    pub thick: f32,
    /// Post under `x0` (mast arm) or under both ends (gantry).
    pub posts: u8,
    pub col: Col,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ObjKind {
    Vehicle(Vehicle),
    Person(Person),
    Cyclist(Cyclist),
    Light(Light),
    Sign(Sign),
    Tree(Tree),
    Lamp(Lamp),
    Beam(Beam),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Obj {
    /// Depth of the nearest part: objects are drawn far to near.
    pub z: f32,
    /// Class index when the object is labelled.
    pub class: Option<u16>,
    pub kind: ObjKind,
    /// Meta for tests: the vehicle drives towards the camera.
    pub oncoming: bool,
}

/// Distant backdrop above the horizon.
#[derive(Debug, Clone)]
pub(crate) enum Backdrop {
    /// Rolling hills: sum of sines (amplitude px, wavelength px, phase).
    Hills {
        col: Col,
        waves: [(f32, f32, f32); 3],
        base: f32,
    },
    /// City skyline: distant blocks (x0, x1, height as a fraction of the horizon row).
    Skyline {
        col: Col,
        blocks: Vec<(f32, f32, f32)>,
    },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Cloud {
    pub x: f32,
    pub y: f32,
    pub rx: f32,
    pub ry: f32,
    pub alpha: f32,
}

#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub w: usize,
    pub h: usize,
    pub cam: Cam,
    pub env: Env,
    pub road: Road,
    pub walls: Vec<Wall>,
    pub objs: Vec<Obj>,
    pub backdrop: Backdrop,
    pub clouds: Vec<Cloud>,
    /// Ego bonnet visible at the bottom: (height as a fraction of the image, colour).
    pub hood: Option<(f32, Col)>,
    /// Rain streaks: count, slant (dx per dy), length px.
    pub rain: Option<(usize, f32, f32)>,
    pub tex_seed: u32,
    pub noise_seed: u64,
    /// The country's conventions, when the scene is drawn for a country profile.
    pub style: Option<Style>,
}

const WHITE_PAINT: Col = [0.93, 0.93, 0.9];
const YELLOW_PAINT: Col = [0.96, 0.74, 0.12];

const CAR_COLOURS: &[(Col, f32)] = &[
    ([0.92, 0.92, 0.92], 0.22),
    ([0.06, 0.06, 0.07], 0.18),
    ([0.62, 0.63, 0.65], 0.16),
    ([0.38, 0.39, 0.41], 0.12),
    ([0.62, 0.07, 0.06], 0.09),
    ([0.08, 0.18, 0.45], 0.09),
    ([0.12, 0.3, 0.2], 0.04),
    ([0.7, 0.62, 0.45], 0.04),
    ([0.95, 0.78, 0.1], 0.03),
    ([0.85, 0.4, 0.1], 0.03),
];

const CLOTHES: &[Col] = &[
    [0.08, 0.08, 0.1],
    [0.15, 0.18, 0.35],
    [0.6, 0.1, 0.1],
    [0.85, 0.85, 0.82],
    [0.25, 0.4, 0.2],
    [0.5, 0.45, 0.35],
    [0.9, 0.6, 0.1],
    [0.3, 0.3, 0.32],
    [0.55, 0.3, 0.55],
    [0.2, 0.5, 0.7],
];

const SKIN: &[Col] = &[
    [0.95, 0.78, 0.65],
    [0.85, 0.65, 0.5],
    [0.65, 0.45, 0.32],
    [0.42, 0.28, 0.2],
];

fn any<T: Copy>(r: &mut R, items: &[T]) -> T {
    items[r.random_range(0..items.len())]
}

impl Scene {
    /// Draws a random scene for a `w x h` frame.
    /// `style` (a country's conventions) only changes what it names; without it the scene is
    /// the generic one, drawn from the same random numbers.
    pub fn random(
        r: &mut R,
        w: usize,
        h: usize,
        centre: Option<CentreLine>,
        style: Option<&Style>,
    ) -> Scene {
        let (wf, hf) = (w as f32, h as f32);
        let kind = pick(
            r,
            &[
                (Kind::Highway, 0.33),
                (Kind::City, 0.37),
                (Kind::Residential, 0.3),
            ],
        );
        let time = pick(
            r,
            &[(Time::Day, 0.6), (Time::Dusk, 0.17), (Time::Night, 0.23)],
        );
        let weather = pick(
            r,
            &[
                (Weather::Clear, 0.5),
                (Weather::Overcast, 0.2),
                (Weather::Rainy, 0.15),
                (Weather::Foggy, 0.15),
            ],
        );
        // Drawn even when a fixed convention is given, so the rest of the scene does not
        // depend on it.
        let random_yellow = chance(r, 0.5);
        let yellow_centre = match centre {
            Some(CentreLine::Yellow) => true,
            Some(CentreLine::White) => false,
            None => random_yellow,
        };

        let cam = Cam {
            f: wf * uni(r, 0.7, 0.9),
            vx: wf * uni(r, 0.44, 0.56),
            hy: hf * uni(r, 0.38, 0.5),
            cam_h: uni(r, 1.25, 1.6),
            k: if chance(r, 0.45) {
                0.0
            } else {
                uni(r, -1.0, 1.0) * 0.0022
            },
        };
        let env = make_env(r, time, weather, kind);
        let road = make_road(r, kind, yellow_centre, &cam, style.map(|s| s.edge_lines));
        let mut scene = Scene {
            w,
            h,
            cam,
            env,
            road,
            walls: Vec::new(),
            objs: Vec::new(),
            backdrop: make_backdrop(r, kind, wf, &cam),
            clouds: Vec::new(),
            hood: None,
            rain: None,
            tex_seed: r.random(),
            noise_seed: r.random(),
            style: style.cloned(),
        };
        scene.add_roadside(r);
        scene.add_traffic(r);
        scene.add_people(r);
        scene.add_signals_and_signs(r);
        if matches!(weather, Weather::Clear | Weather::Overcast) && time != Time::Night {
            let n = irange(r, 0, 6);
            for _ in 0..n {
                scene.clouds.push(Cloud {
                    x: uni(r, -0.1, 1.1) * wf,
                    y: uni(r, 0.05, 0.8) * cam.hy,
                    rx: uni(r, 0.06, 0.25) * wf,
                    ry: uni(r, 0.02, 0.06) * hf,
                    alpha: uni(r, 0.15, 0.5),
                });
            }
        }
        if chance(r, 0.3) {
            let c = any(
                r,
                &[[0.05, 0.05, 0.06], [0.55, 0.56, 0.58], [0.1, 0.15, 0.35]],
            );
            scene.hood = Some((uni(r, 0.04, 0.1), c));
        }
        if weather == Weather::Rainy {
            let n = (wf * hf / uni(r, 500.0, 1500.0)) as usize;
            scene.rain = Some((n, uni(r, -0.25, 0.25), uni(r, 0.02, 0.06) * hf));
        }
        scene.objs.sort_by(|a, b| b.z.total_cmp(&a.z));
        scene
    }

    /// Lateral extents of the sidewalk (or shoulder) on each side: (left, right).
    fn walkways(&self) -> Vec<(f32, f32)> {
        self.road
            .zones
            .iter()
            .filter(|z| {
                z.x1 - z.x0 < 50.0 && matches!(z.mat, Material::Sidewalk | Material::Shoulder)
            })
            .map(|z| (z.x0, z.x1))
            .collect()
    }

    /// X just outside the kerb on the right (positive) or left (negative) side, where posts
    /// stand.
    fn post_x(&self, side: f32) -> f32 {
        let road = &self.road;
        let mut x = if side > 0.0 { road.road_r } else { road.road_l };
        for z in &road.zones {
            let outside = if side > 0.0 {
                z.x0 >= road.road_r
            } else {
                z.x1 <= road.road_l
            };
            if outside
                && matches!(
                    z.mat,
                    Material::Parking | Material::Kerb | Material::Shoulder
                )
            {
                x = if side > 0.0 { x.max(z.x1) } else { x.min(z.x0) };
            }
        }
        x + side * 0.5
    }

    fn push(&mut self, z: f32, class: Option<u16>, kind: ObjKind) {
        let oncoming = matches!(kind, ObjKind::Vehicle(v) if v.oncoming);
        self.objs.push(Obj {
            z,
            class,
            kind,
            oncoming,
        });
    }

    fn add_roadside(&mut self, r: &mut R) {
        let kind = self.env.kind;
        let lit = self.env.time == Time::Night;
        for side in [-1.0f32, 1.0] {
            // Outermost boundary of the ground zones on this side before open land.
            let edge = if side > 0.0 {
                self.road.zones[self.road.zones.len() - 1].x0
            } else {
                self.road.zones[0].x1
            };
            match kind {
                Kind::City => {
                    let mut z = uni(r, 1.0, 12.0);
                    while z < 260.0 {
                        let len = uni(r, 8.0, 32.0);
                        if chance(r, 0.85) {
                            let floors = irange(r, 2, 12) as f32;
                            let floor_h = uni(r, 3.0, 3.7);
                            let col = any(
                                r,
                                &[
                                    [0.72, 0.7, 0.66],
                                    [0.55, 0.55, 0.56],
                                    [0.62, 0.35, 0.28],
                                    [0.8, 0.76, 0.65],
                                    [0.45, 0.5, 0.55],
                                    [0.88, 0.86, 0.82],
                                    [0.35, 0.33, 0.32],
                                ],
                            );
                            let glass =
                                any(r, &[[0.12, 0.15, 0.2], [0.25, 0.32, 0.4], [0.1, 0.1, 0.1]]);
                            self.walls.push(Wall {
                                xf: side * (edge.abs() + uni(r, 0.0, 1.5)),
                                depth_x: uni(r, 10.0, 20.0),
                                z0: z,
                                z1: z + len,
                                y0: 0.0,
                                y1: floors * floor_h + uni(r, 0.0, 2.0),
                                col: jitter(col, r, 0.04),
                                style: WallStyle::Facade {
                                    bay: uni(r, 2.2, 4.0),
                                    floor_h,
                                    win_w: uni(r, 0.45, 0.8),
                                    win_h: uni(r, 0.45, 0.7),
                                    glass,
                                    lit: if lit { uni(r, 0.15, 0.5) } else { 0.0 },
                                    shop: chance(r, 0.6),
                                    gable: 0.0,
                                },
                                seed: r.random(),
                            });
                        }
                        z += len
                            + if chance(r, 0.25) {
                                uni(r, 3.0, 12.0)
                            } else {
                                0.0
                            };
                    }
                }
                Kind::Residential => {
                    let mut z = uni(r, 2.0, 15.0);
                    while z < 160.0 {
                        let len = uni(r, 7.0, 13.0);
                        let col = any(
                            r,
                            &[
                                [0.9, 0.88, 0.82],
                                [0.75, 0.6, 0.45],
                                [0.6, 0.3, 0.25],
                                [0.8, 0.82, 0.7],
                                [0.65, 0.72, 0.78],
                                [0.92, 0.85, 0.6],
                            ],
                        );
                        self.walls.push(Wall {
                            xf: side * (edge.abs() + uni(r, 3.0, 9.0)),
                            depth_x: uni(r, 7.0, 11.0),
                            z0: z,
                            z1: z + len,
                            y0: 0.0,
                            y1: uni(r, 4.5, 7.5),
                            col: jitter(col, r, 0.04),
                            style: WallStyle::Facade {
                                bay: uni(r, 2.5, 3.5),
                                floor_h: uni(r, 2.6, 3.0),
                                win_w: uni(r, 0.35, 0.5),
                                win_h: uni(r, 0.4, 0.55),
                                glass: [0.15, 0.17, 0.2],
                                lit: if lit { uni(r, 0.2, 0.6) } else { 0.0 },
                                shop: false,
                                gable: uni(r, 1.5, 3.0),
                            },
                            seed: r.random(),
                        });
                        z += len + uni(r, 4.0, 12.0);
                    }
                    // Street trees on the verge and in the gardens.
                    let mut z = uni(r, 6.0, 15.0);
                    while z < 120.0 {
                        let x = side * (edge.abs() + uni(r, -1.0, 2.5));
                        self.add_tree(r, x, z);
                        z += uni(r, 7.0, 18.0);
                    }
                }
                Kind::Highway => {
                    if chance(r, 0.55) {
                        self.walls.push(Wall {
                            xf: side * (edge.abs() - uni(r, 0.6, 1.2)),
                            depth_x: 0.1,
                            z0: 1.0,
                            z1: 400.0,
                            y0: 0.35,
                            y1: 0.75,
                            col: [0.72, 0.74, 0.76],
                            style: WallStyle::Rail,
                            seed: r.random(),
                        });
                    }
                    if chance(r, 0.2) {
                        self.walls.push(Wall {
                            xf: side * (edge.abs() + uni(r, 2.0, 6.0)),
                            depth_x: 0.3,
                            z0: uni(r, 1.0, 40.0),
                            z1: uni(r, 120.0, 400.0),
                            y0: 0.0,
                            y1: uni(r, 2.5, 4.5),
                            col: any(
                                r,
                                &[[0.55, 0.52, 0.48], [0.35, 0.45, 0.4], [0.6, 0.6, 0.62]],
                            ),
                            style: WallStyle::Plain,
                            seed: r.random(),
                        });
                    } else if chance(r, 0.6) {
                        let mut z = uni(r, 5.0, 30.0);
                        let spacing = uni(r, 6.0, 20.0);
                        while z < 200.0 {
                            let x = side * (edge.abs() + uni(r, 3.0, 15.0));
                            self.add_tree(r, x, z);
                            z += spacing * uni(r, 0.6, 1.4);
                        }
                    }
                    if chance(r, 0.3) {
                        // Distant industrial buildings.
                        let z = uni(r, 60.0, 200.0);
                        self.walls.push(Wall {
                            xf: side * (edge.abs() + uni(r, 15.0, 50.0)),
                            depth_x: uni(r, 20.0, 40.0),
                            z0: z,
                            z1: z + uni(r, 30.0, 80.0),
                            y0: 0.0,
                            y1: uni(r, 6.0, 15.0),
                            col: any(r, &[[0.7, 0.7, 0.72], [0.5, 0.55, 0.6], [0.75, 0.7, 0.6]]),
                            style: WallStyle::Plain,
                            seed: r.random(),
                        });
                    }
                }
            }
        }
        if let Some(xf) = self.road.barrier {
            self.walls.push(Wall {
                xf,
                depth_x: 0.6,
                z0: 1.0,
                z1: 400.0,
                y0: 0.0,
                y1: uni(r, 0.8, 1.1),
                col: [0.7, 0.69, 0.66],
                style: WallStyle::Plain,
                seed: r.random(),
            });
        }
        // Street lamps.
        if matches!(kind, Kind::City | Kind::Highway) && chance(r, 0.6) {
            let both = chance(r, 0.5);
            let spacing = uni(r, 25.0, 45.0);
            let mut z = uni(r, 6.0, 30.0);
            while z < 200.0 {
                for side in [1.0f32, -1.0] {
                    if side < 0.0 && !both {
                        continue;
                    }
                    let x = self.post_x(side);
                    let lamp = Lamp {
                        x,
                        z,
                        height: uni(r, 7.0, 10.0),
                        arm: -side * uni(r, 1.0, 2.5),
                    };
                    self.push(z, None, ObjKind::Lamp(lamp));
                }
                z += spacing;
            }
        }
    }

    fn add_tree(&mut self, r: &mut R, x: f32, z: f32) {
        let crown = any(
            r,
            &[
                [0.18, 0.35, 0.12],
                [0.25, 0.42, 0.15],
                [0.12, 0.28, 0.1],
                [0.35, 0.45, 0.2],
            ],
        );
        let t = Tree {
            x,
            z,
            trunk_h: uni(r, 1.5, 3.5),
            trunk_w: uni(r, 0.2, 0.45),
            crown_r: uni(r, 1.2, 3.2),
            crown: jitter(crown, r, 0.04),
            seed: r.random(),
        };
        self.push(z, None, ObjKind::Tree(t));
    }

    fn add_traffic(&mut self, r: &mut R) {
        let kind = self.env.kind;
        let road = self.road.clone();
        let lanes = lanes_of(&road);
        let n = match kind {
            Kind::Highway => irange(r, 2, 11),
            Kind::City => irange(r, 2, 12),
            Kind::Residential => irange(r, 0, 4),
        };
        let z_max = match kind {
            Kind::Highway => 110.0,
            Kind::City => 80.0,
            Kind::Residential => 60.0,
        };
        let z_bottom = self.cam.f * self.cam.cam_h / (self.h as f32 - self.cam.hy);
        // Occupied depth ranges per lane (plus parking strips at the end).
        let mut occupied: Vec<Vec<(f32, f32)>> = vec![Vec::new(); lanes.len()];
        for _ in 0..n * 3 {
            if occupied.iter().map(Vec::len).sum::<usize>() >= n {
                break;
            }
            let li = irange(r, 0, lanes.len() - 1);
            let (x0, x1, oncoming) = lanes[li];
            let ego = x0 <= 0.0 && x1 > 0.0;
            let class = match kind {
                Kind::Highway => pick(r, &[(CAR, 0.68), (TRUCK, 0.24), (BUS, 0.08)]),
                Kind::City => pick(r, &[(CAR, 0.76), (TRUCK, 0.1), (BUS, 0.14)]),
                Kind::Residential => pick(r, &[(CAR, 0.92), (TRUCK, 0.08), (BUS, 0.0)]),
            };
            let class = self.country_vehicle(r, class);
            let mut v = self.random_vehicle(r, class, oncoming);
            let z_min = (z_bottom * 1.2).max(if ego { 7.0 } else { 4.0 });
            v.z = z_min + (z_max - z_min) * r.random::<f32>().powf(1.3);
            let slack = ((x1 - x0) - v.w) * 0.5 - 0.15;
            v.x = (x0 + x1) * 0.5
                + if slack > 0.0 {
                    uni(r, -slack, slack) * 0.6
                } else {
                    0.0
                };
            let span = (v.z - 2.5, v.z + v.len + 2.5);
            if occupied[li].iter().any(|&(a, b)| span.0 < b && a < span.1) {
                continue;
            }
            occupied[li].push(span);
            self.push(v.z, Some(v.class), ObjKind::Vehicle(v));
        }
        // Parked cars along the parking strips.
        for zone in road.zones.iter().filter(|z| z.mat == Material::Parking) {
            let mut z = uni(r, 3.0, 15.0);
            while z < 70.0 {
                if chance(r, 0.6) {
                    let class = self.country_vehicle(r, CAR);
                    let mut v = self.random_vehicle(r, class, zone.x1 <= road.road_l);
                    v.lights_on = false;
                    v.brake = false;
                    v.x = (zone.x0 + zone.x1) * 0.5 + uni(r, -0.1, 0.1);
                    v.z = z;
                    z += v.len;
                    self.push(v.z, Some(class), ObjKind::Vehicle(v));
                }
                z += uni(r, 1.0, 8.0);
            }
        }
    }

    /// A car becomes one of the country's new vehicles (auto-rickshaw, tricycle) three times
    /// in ten; other classes and scenes without new vehicles draw nothing.
    fn country_vehicle(&self, r: &mut R, class: u16) -> u16 {
        match &self.style {
            Some(s) if class == CAR && !s.new_vehicles.is_empty() && chance(r, 0.3) => {
                any(r, &s.new_vehicles)
            }
            _ => class,
        }
    }

    fn random_vehicle(&self, r: &mut R, class: u16, oncoming: bool) -> Vehicle {
        let lights_on =
            self.env.lights_on || (self.env.weather != Weather::Clear && chance(r, 0.5));
        let body = jitter(pick(r, CAR_COLOURS), r, 0.03);
        let mut v = Vehicle {
            class,
            x: 0.0,
            z: 0.0,
            w: 1.8,
            h: 1.45,
            len: 4.5,
            oncoming,
            body,
            style: 0,
            cargo: [0.9, 0.9, 0.9],
            lights_on,
            brake: !oncoming && chance(r, 0.25),
        };
        match class {
            TRUCK => {
                v.w = uni(r, 2.3, 2.55);
                v.h = uni(r, 2.9, 4.0);
                v.len = uni(r, 6.5, 12.0);
                v.body = jitter(
                    any(
                        r,
                        &[
                            [0.85, 0.85, 0.85],
                            [0.7, 0.1, 0.08],
                            [0.1, 0.2, 0.5],
                            [0.2, 0.2, 0.22],
                            [0.9, 0.75, 0.1],
                        ],
                    ),
                    r,
                    0.03,
                );
                v.cargo = jitter(
                    any(
                        r,
                        &[
                            [0.92, 0.92, 0.9],
                            [0.75, 0.75, 0.78],
                            [0.25, 0.35, 0.55],
                            [0.6, 0.15, 0.1],
                            [0.85, 0.8, 0.6],
                        ],
                    ),
                    r,
                    0.03,
                );
            }
            BUS => {
                v.w = uni(r, 2.45, 2.55);
                v.style = u8::from(chance(r, 0.15));
                v.h = if v.style == 1 {
                    uni(r, 4.1, 4.4)
                } else {
                    uni(r, 2.9, 3.3)
                };
                v.len = uni(r, 10.0, 13.0);
                v.body = jitter(
                    any(
                        r,
                        &[
                            [0.9, 0.75, 0.1],
                            [0.75, 0.1, 0.1],
                            [0.15, 0.3, 0.65],
                            [0.9, 0.9, 0.88],
                            [0.2, 0.55, 0.3],
                            [0.9, 0.45, 0.1],
                        ],
                    ),
                    r,
                    0.03,
                );
            }
            AUTO_RICKSHAW => {
                // Bajaj RE-like: about 2.6-2.9 m long, 1.3-1.4 m wide, 1.7-1.8 m high. The
                // lower body is yellow or green, the canopy (in `cargo`) black.
                v.w = uni(r, 1.28, 1.42);
                v.h = uni(r, 1.7, 1.82);
                v.len = uni(r, 2.55, 2.9);
                v.body = jitter(
                    any(
                        r,
                        &[[0.95, 0.76, 0.08], [0.13, 0.52, 0.2], [0.2, 0.6, 0.25]],
                    ),
                    r,
                    0.03,
                );
                v.cargo = jitter([0.06, 0.06, 0.065], r, 0.02);
            }
            TRICYCLE => {
                // Motor cargo tricycle: rider in front, open bed behind (loaded in `style` 1,
                // with goods of colour `cargo`).
                v.w = uni(r, 1.1, 1.35);
                v.h = uni(r, 1.55, 1.75);
                v.len = uni(r, 2.7, 3.3);
                v.body = jitter(
                    any(r, &[[0.12, 0.3, 0.68], [0.2, 0.42, 0.75], [0.7, 0.1, 0.08]]),
                    r,
                    0.03,
                );
                v.style = u8::from(chance(r, 0.5));
                v.cargo = jitter(
                    any(r, &[[0.75, 0.6, 0.4], [0.85, 0.85, 0.82], [0.3, 0.5, 0.3]]),
                    r,
                    0.04,
                );
            }
            _ => {
                v.style = pick(r, &[(0u8, 0.45), (1, 0.25), (2, 0.22), (3, 0.08)]);
                let (w, h, len) = match v.style {
                    0 => (uni(r, 1.72, 1.85), uni(r, 1.38, 1.5), uni(r, 4.3, 4.9)),
                    1 => (uni(r, 1.65, 1.78), uni(r, 1.42, 1.55), uni(r, 3.8, 4.3)),
                    2 => (uni(r, 1.8, 1.95), uni(r, 1.65, 1.8), uni(r, 4.5, 4.9)),
                    _ => (uni(r, 1.9, 2.05), uni(r, 1.9, 2.3), uni(r, 4.8, 5.6)),
                };
                v.w = w;
                v.h = h;
                v.len = len;
            }
        }
        v
    }

    fn random_person(&self, r: &mut R, x: f32, z: f32, facing: Facing) -> Person {
        let umbrella = (self.env.weather == Weather::Rainy && chance(r, 0.6)).then(|| {
            any(
                r,
                &[
                    [0.05, 0.05, 0.06],
                    [0.6, 0.1, 0.1],
                    [0.1, 0.2, 0.6],
                    [0.9, 0.8, 0.1],
                ],
            )
        });
        Person {
            x,
            z,
            height: uni(r, 1.5, 1.92),
            facing,
            phase: uni(r, -1.0, 1.0),
            shirt: jitter(any(r, CLOTHES), r, 0.05),
            trousers: jitter(any(r, &CLOTHES[..6]), r, 0.04),
            skin: any(r, SKIN),
            hair: any(
                r,
                &[
                    [0.05, 0.04, 0.03],
                    [0.3, 0.2, 0.1],
                    [0.6, 0.5, 0.3],
                    [0.55, 0.55, 0.55],
                ],
            ),
            umbrella,
        }
    }

    fn add_people(&mut self, r: &mut R) {
        let kind = self.env.kind;
        let walkways = self.walkways();
        let (n_ped, n_cyc) = match kind {
            Kind::Highway => (usize::from(chance(r, 0.1)), 0),
            Kind::City => (irange(r, 1, 10), irange(r, 0, 3)),
            Kind::Residential => (irange(r, 0, 5), irange(r, 0, 2)),
        };
        let z_bottom = self.cam.f * self.cam.cam_h / (self.h as f32 - self.cam.hy);
        for _ in 0..n_ped {
            let crossing = self.road.crosswalk.filter(|_| chance(r, 0.35));
            let (x, z, facing) = if let Some((z0, z1)) = crossing {
                let x = uni(r, self.road.road_l, self.road.road_r);
                (
                    x,
                    uni(r, z0, z1),
                    if chance(r, 0.5) {
                        Facing::Left
                    } else {
                        Facing::Right
                    },
                )
            } else if !walkways.is_empty() {
                let (a, b) = any(r, &walkways);
                let facing = pick(
                    r,
                    &[
                        (Facing::Front, 0.3),
                        (Facing::Back, 0.3),
                        (Facing::Left, 0.2),
                        (Facing::Right, 0.2),
                    ],
                );
                let z = (z_bottom * 1.1).max(3.0) + 55.0 * r.random::<f32>().powf(1.4);
                (uni(r, a + 0.3, (b - 0.3).max(a + 0.3)), z, facing)
            } else {
                continue;
            };
            let p = self.random_person(r, x, z, facing);
            self.push(z, Some(PEDESTRIAN), ObjKind::Person(p));
        }
        for _ in 0..n_cyc {
            let on_road = chance(r, 0.75);
            let crossing = self.road.crosswalk.filter(|_| chance(r, 0.2));
            let (x, z, facing) = if let Some((z0, z1)) = crossing {
                let x = uni(r, self.road.road_l, self.road.road_r);
                (
                    x,
                    uni(r, z0, z1),
                    if chance(r, 0.5) {
                        Facing::Left
                    } else {
                        Facing::Right
                    },
                )
            } else if on_road {
                let z = (z_bottom * 1.2).max(5.0) + 45.0 * r.random::<f32>();
                if chance(r, 0.7) {
                    (self.road.road_r - uni(r, 0.6, 1.0), z, Facing::Back)
                } else {
                    (self.road.road_l + uni(r, 0.6, 1.0), z, Facing::Front)
                }
            } else if !walkways.is_empty() {
                let (a, b) = any(r, &walkways);
                let z = (z_bottom * 1.2).max(4.0) + 45.0 * r.random::<f32>();
                let f = pick(
                    r,
                    &[
                        (Facing::Front, 0.3),
                        (Facing::Back, 0.3),
                        (Facing::Left, 0.2),
                        (Facing::Right, 0.2),
                    ],
                );
                (uni(r, a + 0.4, (b - 0.4).max(a + 0.4)), z, f)
            } else {
                continue;
            };
            let rider = self.random_person(r, x, z, facing);
            let c = Cyclist {
                rider: Person {
                    umbrella: None,
                    ..rider
                },
                bike: any(
                    r,
                    &[
                        [0.1, 0.1, 0.1],
                        [0.7, 0.1, 0.1],
                        [0.1, 0.3, 0.6],
                        [0.8, 0.8, 0.8],
                        [0.2, 0.5, 0.2],
                    ],
                ),
                helmet: any(
                    r,
                    &[
                        [0.9, 0.9, 0.9],
                        [0.1, 0.1, 0.1],
                        [0.9, 0.5, 0.1],
                        [0.2, 0.4, 0.8],
                    ],
                ),
            };
            self.push(z, Some(CYCLIST), ObjKind::Cyclist(c));
        }
    }

    fn add_signals_and_signs(&mut self, r: &mut R) {
        let kind = self.env.kind;
        let state = pick(r, &[(0u8, 0.45), (1, 0.1), (2, 0.45)]);
        let housing = any(
            r,
            &[[0.08, 0.08, 0.08], [0.15, 0.2, 0.15], [0.75, 0.6, 0.1]],
        );
        let horizontal = chance(r, 0.2);
        let junction = match kind {
            Kind::City => chance(r, 0.6),
            Kind::Residential => chance(r, 0.15),
            Kind::Highway => false,
        };
        if junction {
            let zj = self
                .road
                .crosswalk
                .map(|(_, z1)| z1 + uni(r, 1.0, 4.0))
                .unwrap_or_else(|| uni(r, 15.0, 60.0));
            let mast = chance(r, 0.5);
            let xr = self.post_x(1.0);
            let xl = self.post_x(-1.0);
            let light = |x: f32, z: f32, bottom: f32| Light {
                x,
                z,
                bottom,
                horizontal,
                state,
                housing,
                backboard: false,
            };
            if mast {
                let y = uni(r, 5.5, 6.5);
                let same: Vec<f32> = lanes_of(&self.road)
                    .iter()
                    .filter(|l| !l.2)
                    .map(|l| (l.0 + l.1) * 0.5)
                    .collect();
                let x_end = same.iter().copied().fold(xr, f32::min) - 0.5;
                self.push(
                    zj,
                    None,
                    ObjKind::Beam(Beam {
                        x0: xr,
                        x1: x_end,
                        z: zj,
                        y,
                        thick: 0.2,
                        posts: 1,
                        col: [0.35, 0.36, 0.38],
                    }),
                );
                let backboard = chance(r, 0.5);
                for x in same {
                    let housing_h = if horizontal { LIGHT_SHORT } else { LIGHT_LONG };
                    self.push(
                        zj - 0.05,
                        Some(TRAFFIC_LIGHT),
                        ObjKind::Light(Light {
                            backboard,
                            ..light(x, zj, y - 0.15 - housing_h)
                        }),
                    );
                }
            } else {
                let b = uni(r, 2.2, 2.8);
                self.push(zj, Some(TRAFFIC_LIGHT), ObjKind::Light(light(xr, zj, b)));
            }
            // Far-side signals across the junction.
            let z_far = zj + uni(r, 12.0, 22.0);
            let b = uni(r, 2.2, 3.0);
            self.push(
                z_far,
                Some(TRAFFIC_LIGHT),
                ObjKind::Light(light(xl, z_far, b)),
            );
            if chance(r, 0.6) {
                self.push(
                    z_far,
                    Some(TRAFFIC_LIGHT),
                    ObjKind::Light(light(xr, z_far, b)),
                );
            }
        }

        // Signs on posts.
        let n = match kind {
            Kind::Highway => irange(r, 1, 3),
            Kind::City => irange(r, 1, 5),
            Kind::Residential => irange(r, 1, 3),
        };
        for _ in 0..n {
            let side = if chance(r, 0.75) { 1.0 } else { -1.0 };
            let z = uni(r, 6.0, 70.0);
            let big = kind == Kind::Highway;
            let size = if big {
                uni(r, 0.9, 1.5)
            } else {
                uni(r, 0.55, 0.9)
            };
            let shape = pick(
                r,
                &[
                    (0u8, 0.25),
                    (1, 0.12),
                    (2, 0.2),
                    (3, 0.08),
                    (4, 0.07),
                    (5, 0.08),
                    (6, 0.2),
                ],
            );
            let shape = match shape {
                0 => SignShape::Prohibitory,
                1 => SignShape::Mandatory(irange(r, 0, 2) as i8 - 1),
                2 => SignShape::Warning,
                3 => SignShape::Yield,
                4 => SignShape::Stop,
                5 => SignShape::Diamond,
                _ => SignShape::Info {
                    aspect: uni(r, 0.6, 1.8),
                    bg: any(
                        r,
                        &[
                            [0.1, 0.25, 0.65],
                            [0.05, 0.4, 0.2],
                            [0.92, 0.92, 0.9],
                            [0.95, 0.75, 0.1],
                        ],
                    ),
                    fg: [0.95, 0.95, 0.95],
                },
            };
            let shape = match shape {
                SignShape::Info { aspect, bg, .. } if bg[0] > 0.5 => SignShape::Info {
                    aspect,
                    bg,
                    fg: [0.05, 0.05, 0.05],
                },
                s => s,
            };
            let shape = self.style.as_ref().map_or(shape, |s| s.sign(shape));
            let x = self.post_x(side);
            let sign = Sign {
                x,
                z,
                centre: uni(r, 2.2, 3.0) + size * 0.5,
                size,
                shape,
                post: true,
            };
            self.push(z, Some(SIGN), ObjKind::Sign(sign));
        }
        // Overhead guide signs on a gantry.
        if kind == Kind::Highway && chance(r, 0.35) {
            let z = uni(r, 35.0, 130.0);
            let (xl, xr) = (self.post_x(-1.0), self.post_x(1.0));
            let y = uni(r, 6.0, 7.0);
            self.push(
                z,
                None,
                ObjKind::Beam(Beam {
                    x0: xl,
                    x1: xr,
                    z,
                    y,
                    thick: 0.5,
                    posts: 2,
                    col: [0.6, 0.62, 0.64],
                }),
            );
            let same: Vec<(f32, f32, bool)> =
                lanes_of(&self.road).into_iter().filter(|l| !l.2).collect();
            let n_signs = irange(r, 1, same.len().clamp(1, 2));
            for k in 0..n_signs {
                let l = same[same.len() - 1 - k];
                let hgt = uni(r, 1.8, 2.6);
                let sign = Sign {
                    x: (l.0 + l.1) * 0.5,
                    z: z - 0.3,
                    centre: y - hgt * 0.5 + 0.2,
                    size: hgt,
                    shape: SignShape::Info {
                        aspect: uni(r, 1.4, 2.0),
                        bg: if chance(r, 0.8) {
                            [0.05, 0.4, 0.2]
                        } else {
                            [0.1, 0.25, 0.65]
                        },
                        fg: [0.95, 0.95, 0.95],
                    },
                    post: false,
                };
                self.push(z - 0.3, Some(SIGN), ObjKind::Sign(sign));
            }
        }
    }
}

/// Lanes as `(x0, x1, oncoming)`, left to right.
pub(crate) fn lanes_of(road: &Road) -> Vec<(f32, f32, bool)> {
    let n = ((road.road_r - road.road_l) / road.lane_w).round().max(1.0) as usize;
    (0..n)
        .map(|i| {
            let x0 = road.road_l + i as f32 * road.lane_w;
            (x0, x0 + road.lane_w, x0 + 1e-3 < road.centre)
        })
        .collect()
}

fn make_env(r: &mut R, time: Time, weather: Weather, kind: Kind) -> Env {
    let mut ambient = match time {
        Time::Day => {
            let b = uni(r, 0.9, 1.1);
            [b, b, b * uni(r, 0.96, 1.05)]
        }
        Time::Dusk => scale([0.95, 0.72, 0.58], uni(r, 0.55, 0.8)),
        Time::Night => scale([0.2, 0.22, 0.3], uni(r, 0.75, 1.2)),
    };
    let (mut sky_top, mut sky_horizon) = match time {
        Time::Day => (
            jitter([0.26, 0.48, 0.85], r, 0.05),
            jitter([0.74, 0.83, 0.93], r, 0.03),
        ),
        Time::Dusk => (
            jitter([0.22, 0.22, 0.42], r, 0.05),
            jitter([0.97, 0.6, 0.36], r, 0.05),
        ),
        Time::Night => (
            [0.01, 0.015, 0.04],
            if kind == Kind::City {
                [0.16, 0.12, 0.11]
            } else {
                [0.05, 0.055, 0.09]
            },
        ),
    };
    let mut visibility = uni(r, 900.0, 1600.0);
    match weather {
        Weather::Clear => {}
        Weather::Overcast => {
            ambient = scale(mix(ambient, [0.9; 3], 0.2), 0.82);
            let grey = uni(r, 0.62, 0.78);
            sky_top = mix(
                scale([grey; 3], 0.92),
                sky_top,
                if time == Time::Night { 1.0 } else { 0.15 },
            );
            sky_horizon = mix(
                [grey; 3],
                sky_horizon,
                if time == Time::Night { 1.0 } else { 0.25 },
            );
            visibility = uni(r, 450.0, 800.0);
        }
        Weather::Rainy => {
            ambient = scale(mix(ambient, [0.8, 0.84, 0.9], 0.25), 0.68);
            let grey = uni(r, 0.5, 0.65);
            sky_top = mix(
                scale([grey; 3], 0.9),
                sky_top,
                if time == Time::Night { 1.0 } else { 0.1 },
            );
            sky_horizon = mix(
                [grey; 3],
                sky_horizon,
                if time == Time::Night { 1.0 } else { 0.2 },
            );
            visibility = uni(r, 180.0, 380.0);
        }
        Weather::Foggy => {
            ambient = scale(ambient, 0.88);
            visibility = uni(r, 30.0, 95.0);
        }
    }
    let fog = match (weather, time) {
        (Weather::Foggy, Time::Night) => [0.14, 0.14, 0.16],
        (Weather::Foggy, _) => scale([0.8, 0.81, 0.83], ambient[1].min(1.0)),
        _ => sky_horizon,
    };
    if weather == Weather::Foggy {
        sky_top = mix(sky_top, fog, 0.85);
        sky_horizon = fog;
    }
    Env {
        time,
        weather,
        kind,
        ambient,
        fog,
        visibility,
        sky_top,
        sky_horizon,
        noise: match time {
            Time::Day => uni(r, 0.006, 0.012),
            Time::Dusk => uni(r, 0.01, 0.018),
            Time::Night => uni(r, 0.015, 0.028),
        },
        lights_on: time != Time::Day,
    }
}

/// Appends a ground zone of `width` metres outward from `x` on `side` (-1 left, 1 right).
fn push_zone(zones: &mut Vec<Zone>, x: &mut f32, side: f32, width: f32, mat: Material) {
    let x2 = *x + side * width;
    zones.push(Zone {
        x0: x.min(x2),
        x1: x.max(x2),
        mat,
    });
    *x = x2;
}

/// `edge_lines`: a country's edge-line convention (`None`: the generic solid edge lines).
fn make_road(
    r: &mut R,
    kind: Kind,
    yellow_centre: bool,
    cam: &Cam,
    edge_lines: Option<EdgeLines>,
) -> Road {
    let lane_w = match kind {
        Kind::Highway => uni(r, 3.4, 3.8),
        Kind::City => uni(r, 3.0, 3.6),
        Kind::Residential => uni(r, 2.8, 3.3),
    };
    let (n_opp, n_same) = match kind {
        Kind::Highway => pick(
            r,
            &[
                ((0usize, 2usize), 0.2),
                ((0, 3), 0.15),
                ((0, 4), 0.1),
                ((2, 2), 0.4),
                ((1, 2), 0.15),
            ],
        ),
        Kind::City => pick(
            r,
            &[
                ((1, 1), 0.35),
                ((2, 2), 0.3),
                ((1, 2), 0.2),
                ((2, 1), 0.05),
                ((0, 2), 0.1),
            ],
        ),
        Kind::Residential => (1, 1),
    };
    let n = n_opp + n_same;
    let ego = n_opp + irange(r, 0, n_same - 1);
    let road_l = -(ego as f32 + 0.5) * lane_w + uni(r, -0.35, 0.35);
    let road_r = road_l + n as f32 * lane_w;
    let centre = road_l + n_opp as f32 * lane_w;

    let grey = uni(r, 0.27, 0.45);
    let asphalt = jitter([grey, grey, grey * uni(r, 0.97, 1.06)], r, 0.015);
    let paint = uni(r, 0.72, 1.0);
    let white = scale(WHITE_PAINT, paint);
    let yellow = scale(YELLOW_PAINT, paint);

    let mut zones = vec![Zone {
        x0: road_l,
        x1: road_r,
        mat: Material::Asphalt,
    }];
    let one_way = n_opp == 0;
    let mut barrier = None;
    for side in [-1.0f32, 1.0] {
        let mut x = if side > 0.0 { road_r } else { road_l };
        match kind {
            Kind::Highway => {
                let median = one_way && side < 0.0;
                let sw = if median {
                    uni(r, 0.8, 1.5)
                } else {
                    uni(r, 1.8, 3.2)
                };
                push_zone(&mut zones, &mut x, side, sw, Material::Shoulder);
                if median && chance(r, 0.8) {
                    barrier = Some(x);
                }
                push_zone(&mut zones, &mut x, side, uni(r, 0.4, 1.2), Material::Gravel);
            }
            Kind::City => {
                if chance(r, 0.3) {
                    push_zone(
                        &mut zones,
                        &mut x,
                        side,
                        uni(r, 2.0, 2.4),
                        Material::Parking,
                    );
                }
                push_zone(&mut zones, &mut x, side, 0.22, Material::Kerb);
                push_zone(
                    &mut zones,
                    &mut x,
                    side,
                    uni(r, 2.0, 5.0),
                    Material::Sidewalk,
                );
            }
            Kind::Residential => {
                if chance(r, 0.45) {
                    push_zone(
                        &mut zones,
                        &mut x,
                        side,
                        uni(r, 2.0, 2.3),
                        Material::Parking,
                    );
                }
                push_zone(&mut zones, &mut x, side, 0.18, Material::Kerb);
                push_zone(&mut zones, &mut x, side, uni(r, 0.5, 2.0), Material::Grass);
                push_zone(
                    &mut zones,
                    &mut x,
                    side,
                    uni(r, 1.2, 2.0),
                    Material::Sidewalk,
                );
            }
        }
        let open = if kind == Kind::City {
            Material::Sidewalk
        } else {
            Material::Grass
        };
        push_zone(&mut zones, &mut x, side, 1e4, open);
    }
    zones.sort_by(|a, b| a.x0.total_cmp(&b.x0));

    let mut markings = Vec::new();
    let line_hw = uni(r, 0.05, 0.09);
    let dash = |r: &mut R| {
        let len = match kind {
            Kind::Highway => uni(r, 3.0, 6.0),
            _ => uni(r, 2.0, 4.0),
        };
        Some(Dash {
            len,
            period: len * uni(r, 2.0, 4.0),
            phase: uni(r, 0.0, 20.0),
        })
    };
    // Edge lines (solid white) keep 0.2 m inside the carriageway.
    let centre_line = n_opp > 0 && !(kind == Kind::Residential && chance(r, 0.3));
    // Every road has some marking: a residential street without a centre line gets edges.
    let edges = match kind {
        Kind::Highway => true,
        Kind::City => chance(r, 0.5),
        Kind::Residential => !centre_line || chance(r, 0.2),
    };
    if edges {
        // Drawn whatever the country's convention, so the rest of the scene does not depend
        // on it; a country without edge lines paints (and masks) none.
        let hw = line_hw * uni(r, 1.0, 1.6);
        if edge_lines != Some(EdgeLines::None) {
            for x in [road_l + 0.2 + hw, road_r - 0.2 - hw] {
                markings.push(Marking {
                    x,
                    hw,
                    col: white,
                    dash: None,
                });
            }
        }
    }
    // Lane separators within one direction: dashed white.
    let sep_dash = dash(r);
    if edge_lines == Some(EdgeLines::Dashed) {
        // Dashed edge lines: the separators' dash length with equal gaps (no random draw).
        for m in &mut markings {
            m.dash = sep_dash.map(|d| Dash {
                len: d.len,
                period: d.len * 2.0,
                phase: d.phase,
            });
        }
    }
    for i in 1..n {
        if i == n_opp {
            continue;
        }
        markings.push(Marking {
            x: road_l + i as f32 * lane_w,
            hw: line_hw,
            col: white,
            dash: sep_dash,
        });
    }
    // Centre line between the directions.
    if centre_line {
        let gap = uni(r, 0.1, 0.2);
        let style = pick(r, &[(0u8, 0.5), (1, 0.3), (2, 0.2)]);
        let col = if yellow_centre { yellow } else { white };
        let double = |markings: &mut Vec<Marking>, d_left: Option<Dash>, d_right: Option<Dash>| {
            markings.push(Marking {
                x: centre - gap - line_hw,
                hw: line_hw,
                col,
                dash: d_left,
            });
            markings.push(Marking {
                x: centre + gap + line_hw,
                hw: line_hw,
                col,
                dash: d_right,
            });
        };
        match (yellow_centre, style) {
            (true, 0) | (false, 2) => double(&mut markings, None, None),
            (true, 2) => {
                // Passing allowed from the ego side only: the dashed line is on the ego side.
                let d = dash(r);
                double(&mut markings, None, d)
            }
            (_, 1) | (false, 0) => {
                let d = if yellow_centre || style == 0 {
                    dash(r)
                } else {
                    None
                };
                markings.push(Marking {
                    x: centre,
                    hw: line_hw,
                    col,
                    dash: d,
                });
            }
            _ => double(&mut markings, None, None),
        }
    }

    let crosswalk = match kind {
        Kind::City if chance(r, 0.35) => Some(uni(r, 7.0, 25.0)),
        Kind::Residential if chance(r, 0.1) => Some(uni(r, 7.0, 20.0)),
        _ => None,
    }
    .map(|z| (z, z + uni(r, 3.0, 4.5)));

    let sidewalk_grey = uni(r, 0.5, 0.68);
    let grass = jitter([0.26, 0.4, 0.16], r, 0.05);
    // Beyond this depth a lane is under 6 px wide and painted lines would merge.
    let marking_z_max = (cam.f * lane_w / 6.0).min(250.0);
    Road {
        lane_w,
        road_l,
        road_r,
        centre,
        barrier,
        zones,
        markings,
        crosswalk,
        asphalt,
        shoulder: mix(asphalt, [0.55, 0.55, 0.53], 0.25),
        sidewalk: jitter(
            [sidewalk_grey, sidewalk_grey * 0.98, sidewalk_grey * 0.94],
            r,
            0.03,
        ),
        kerb: [0.68, 0.68, 0.66],
        grass,
        gravel: jitter([0.48, 0.45, 0.4], r, 0.03),
        marking_z_max,
    }
}

fn make_backdrop(r: &mut R, kind: Kind, wf: f32, cam: &Cam) -> Backdrop {
    if kind == Kind::City && chance(r, 0.8) {
        let mut blocks = Vec::new();
        let mut x = -0.05 * wf;
        while x < wf * 1.05 {
            let bw = uni(r, 0.02, 0.09) * wf;
            blocks.push((x, x + bw, uni(r, 0.05, 0.35)));
            x += bw * uni(r, 0.7, 1.1);
        }
        Backdrop::Skyline {
            col: jitter([0.45, 0.47, 0.52], r, 0.05),
            blocks,
        }
    } else {
        let amp = cam.hy * uni(r, 0.01, 0.12);
        Backdrop::Hills {
            col: jitter([0.3, 0.4, 0.3], r, 0.06),
            waves: [
                (amp, wf * uni(r, 0.4, 1.2), uni(r, 0.0, 6.3)),
                (amp * 0.5, wf * uni(r, 0.1, 0.3), uni(r, 0.0, 6.3)),
                (amp * 0.2, wf * uni(r, 0.03, 0.08), uni(r, 0.0, 6.3)),
            ],
            base: cam.hy * uni(r, 0.0, 0.04),
        }
    }
}
