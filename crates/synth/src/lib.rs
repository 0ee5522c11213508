//! `percept-synth`: procedural driving scenes in perspective, for smoke training, tests, benches
//! and demos, and [`write_synthetic_dataset`], which stores them as a percept dataset (shards
//! and a manifest of `percept-data`). Kept apart from the data format: the format knows nothing
//! of how scenes are drawn.
//!
//! Inside, one way down: [`layout`](self) places a scene (road, markings, objects) as data,
//! `objects` and `render` draw it on a `canvas`.
//!
//! A scene is drawn from a ChaCha8 RNG seeded with `(seed, index)` only, so any sample can be
//! regenerated on its own and generation parallelises freely. The image size scales the scene
//! (the same `(seed, index)` at another size is the same scene at another resolution) and the
//! traffic side mirrors it: a left-hand-traffic scene is the exact mirror image of the
//! right-hand-traffic scene with the same seed and index.
//!
//! What a scene holds:
//! - sky (clouds by day), a horizon with a jittered vanishing point, hills or a city skyline;
//! - a road in perspective with 2–4 lanes (lane width, lane count and a gentle curve vary),
//!   shoulders, kerbs, parking strips, sidewalks, grass, guard rails and median barriers;
//! - lane markings: dashed white lane separators, solid white edge lines and a centre line
//!   (yellow double/single or white, by the region's convention), all thinning with distance,
//!   and sometimes a zebra crossing (painted, but not a lane line);
//! - buildings with window grids (city), houses with gables and trees (residential), noise
//!   walls and distant halls (highway), street lamps and sign gantries;
//! - labelled objects: cars (sedan, hatchback, SUV, van), trucks and buses with body, windows,
//!   wheels and lights, same-direction traffic seen from behind in the ego side's lanes and
//!   oncoming traffic seen from the front in the other lanes, parked cars; pedestrians on
//!   sidewalks and crossings; cyclists; traffic lights (one lamp lit red, amber or green) on
//!   poles or mast arms; traffic signs (circles, triangles, octagons, diamonds, rectangles);
//! - conditions: `daytime`, `dawn/dusk`, `night` (darkness, lit lamps, headlights and
//!   halos); `clear`, `overcast`, `rainy` (wet road, streaks), `foggy` (depth fog); scene
//!   `highway`, `city street` or `residential` (lane counts, buildings, object mix);
//! - an ego bonnet at the bottom in some frames, vignetting and sensor noise.
//!
//! Country profiles (`percept_data::CountryProfile`, `configs/countries/*.toml`): a generator
//! made [`for_country`](SceneGenerator::for_country) draws the country's traffic side (the
//! mirror image, as for a region), centre-line colour, edge lines (solid, dashed or none),
//! warning signs (red-bordered triangles, yellow triangles or yellow diamonds) and stop signs
//! (octagons or red inverted triangles), and its new classes as vehicles of their own
//! (auto-rickshaws, cargo tricycles: three cars in ten become one). Its boxes are labelled in
//! the country's class list: a global class's boxes are relabelled by the profile's mapping
//! (a dropped class's objects stay in the image without a box), a new class has its own index.
//! Without a profile nothing changes: the same seed gives the same bytes as before. A country
//! scene is drawn from the same random numbers as the generic one with the same seed, except
//! where the country adds draws (its new vehicles).
//!
//! Labels: boxes are tight around the pixels each object drew (clipped to the image); objects
//! under 4 px a side or more than 70% occluded are not labelled (they stay in the image, as
//! in real data). The **drivable mask** is the visible surface of the carriageway: every lane of
//! both directions, not shoulders, parking strips, kerbs or sidewalks, and not pixels covered by
//! objects or the bonnet. The **lane mask** marks painted longitudinal lines (not zebra bars),
//! at least 2 px wide, up to the distance where a lane is 6 px wide.

mod canvas;
#[cfg(test)]
mod country_tests;
mod frame;
mod layout;
mod objects;
mod render;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::imageops;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use percept_data::{
    is_region_code, Conditions, CountryProfile, DataError, EncodedRecord, LineColour, Manifest,
    NewObjectShape, Result, Sample, ShardEntry, ShardWriter, Split, TrafficSide, MANIFEST_FILE,
};

/// Class names of synthetic datasets; box classes index this list.
pub const SYNTH_CLASSES: [&str; 7] = [
    "car",
    "truck",
    "bus",
    "pedestrian",
    "cyclist",
    "traffic light",
    "traffic sign",
];

pub(crate) const CAR: u16 = 0;
pub(crate) const TRUCK: u16 = 1;
pub(crate) const BUS: u16 = 2;
pub(crate) const PEDESTRIAN: u16 = 3;
pub(crate) const CYCLIST: u16 = 4;
pub(crate) const TRAFFIC_LIGHT: u16 = 5;
pub(crate) const SIGN: u16 = 6;
/// Internal classes of the vehicles country profiles add (after the global classes); their
/// boxes are labelled with the country's index of the class.
pub(crate) const AUTO_RICKSHAW: u16 = 7;
pub(crate) const TRICYCLE: u16 = 8;
/// Global classes and the countries' new vehicles.
const INTERNAL_CLASSES: usize = 9;

/// Validation samples use indices from here on, disjoint from training indices.
pub const VAL_INDEX_OFFSET: u64 = 1 << 32;

/// Colour of the line between the two directions of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CentreLine {
    /// The Americas, China, Korea, Taiwan, Thailand, the Nordics (Norway, Finland, Iceland).
    Yellow,
    /// Most of Europe, Africa, Oceania, Japan and the rest.
    White,
}

impl CentreLine {
    /// The convention of a region (ISO 3166-1 alpha-2; unknown codes get white).
    pub fn of_region(region: &str) -> Self {
        const YELLOW: &[&str] = &[
            "US", "CA", "MX", "BR", "AR", "CL", "CO", "PE", "VE", "EC", "BO", "PY", "UY", "CR",
            "PA", "GT", "HN", "SV", "NI", "DO", "PR", "CN", "KR", "TW", "TH", "NO", "FI", "IS",
        ];
        if YELLOW.contains(&region.to_ascii_uppercase().as_str()) {
            CentreLine::Yellow
        } else {
            CentreLine::White
        }
    }
}

impl From<LineColour> for CentreLine {
    fn from(c: LineColour) -> Self {
        match c {
            LineColour::White => CentreLine::White,
            LineColour::Yellow => CentreLine::Yellow,
        }
    }
}

/// What a generator needs of a country profile.
#[derive(Debug, Clone, PartialEq)]
struct Country {
    code: String,
    /// The profile's class names: the labels' class list.
    classes: Vec<String>,
    style: layout::Style,
    /// Per internal class, its index in `classes` (`None`: drawn but not labelled).
    relabel: [Option<u16>; INTERNAL_CLASSES],
}

impl Country {
    fn new(profile: &CountryProfile) -> Result<Self> {
        let global: Vec<String> = SYNTH_CLASSES.iter().map(|c| c.to_string()).collect();
        let mapping = profile.mapping(&global)?;
        let mut relabel = [None; INTERNAL_CLASSES];
        relabel[..SYNTH_CLASSES.len()].copy_from_slice(&mapping.relabel());
        let mut new_vehicles = Vec::new();
        for (i, c) in profile.classes.iter().enumerate() {
            let internal = match (c.from.is_empty(), c.shape) {
                (true, Some(NewObjectShape::AutoRickshaw)) => AUTO_RICKSHAW,
                (true, Some(NewObjectShape::Tricycle)) => TRICYCLE,
                _ => continue,
            };
            // Two new classes of one shape: the first one labels the drawn objects.
            if relabel[internal as usize].is_none() {
                relabel[internal as usize] = Some(i as u16);
                new_vehicles.push(internal);
            }
        }
        Ok(Country {
            code: profile.code.clone(),
            classes: profile.class_names(),
            style: layout::Style {
                edge_lines: profile.markings.edge_lines,
                warning: profile.signs.warning,
                stop: profile.signs.stop,
                new_vehicles,
            },
            relabel,
        })
    }
}

/// Deterministic generator of synthetic driving scenes.
#[derive(Debug, Clone)]
pub struct SceneGenerator {
    width: u32,
    height: u32,
    traffic_side: TrafficSide,
    seed: u64,
    centre_line: Option<CentreLine>,
    country: Option<Box<Country>>,
}

impl SceneGenerator {
    /// A generator of `width x height` frames (any size from 64x64 up; smaller sizes give
    /// crude but valid samples). The centre-line colour varies per scene; see
    /// [`for_region`](Self::for_region) to fix it by a region's convention.
    pub fn new(width: u32, height: u32, traffic_side: TrafficSide, seed: u64) -> Self {
        SceneGenerator {
            width,
            height,
            traffic_side,
            seed,
            centre_line: None,
            country: None,
        }
    }

    /// A generator of scenes of the country `profile` describes: its traffic side, centre-line
    /// colour, edge lines, sign families and new vehicle classes, with boxes labelled in its
    /// class list ([`class_names`](Self::class_names)). Fails when the profile's classes do not
    /// map onto [`SYNTH_CLASSES`] (a `from` name that is not a synthetic class).
    pub fn for_country(
        width: u32,
        height: u32,
        profile: &CountryProfile,
        seed: u64,
    ) -> Result<Self> {
        let country = Country::new(profile)?;
        Ok(
            SceneGenerator::new(width, height, profile.traffic.side, seed)
                .with_centre_line(Some(profile.markings.centre_line.into()))
                .with_country(Some(country)),
        )
    }

    fn with_country(mut self, country: Option<Country>) -> Self {
        self.country = country.map(Box::new);
        self
    }

    /// The class list the boxes index: [`SYNTH_CLASSES`], or the country profile's classes.
    pub fn class_names(&self) -> Vec<String> {
        match &self.country {
            Some(c) => c.classes.clone(),
            None => SYNTH_CLASSES.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// The code of the country profile the generator draws (`None`: generic scenes).
    pub fn country_code(&self) -> Option<&str> {
        self.country.as_deref().map(|c| c.code.as_str())
    }

    /// A generator with the traffic side and centre-line colour of `region`.
    pub fn for_region(width: u32, height: u32, region: &str, seed: u64) -> Self {
        SceneGenerator::new(width, height, TrafficSide::of_region(region), seed)
            .with_centre_line(Some(CentreLine::of_region(region)))
    }

    /// Fixes the centre-line colour (`None`: random per scene).
    pub fn with_centre_line(mut self, centre_line: Option<CentreLine>) -> Self {
        self.centre_line = centre_line;
        self
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn traffic_side(&self) -> TrafficSide {
        self.traffic_side
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Scene number `index`. Depends only on the generator's settings and `index`.
    /// The sample id is `synth-{seed:016x}-{index}`.
    pub fn generate(&self, index: u64) -> Sample {
        self.generate_with_meta(index).0
    }

    /// The layout of scene number `index` (laid out for right-hand traffic).
    pub(crate) fn scene(&self, index: u64) -> layout::Scene {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&self.seed.to_le_bytes());
        key[8..16].copy_from_slice(&index.to_le_bytes());
        key[16..].copy_from_slice(b"percept-synth-v1");
        let mut rng = ChaCha8Rng::from_seed(key);
        layout::Scene::random(
            &mut rng,
            self.width as usize,
            self.height as usize,
            self.centre_line,
            self.country.as_ref().map(|c| &c.style),
        )
    }

    /// The scene and, per box, `(oncoming vehicle, world X in metres)` (for tests).
    pub(crate) fn generate_with_meta(&self, index: u64) -> (Sample, Vec<(bool, f32)>) {
        let (sample, meta, _) = self.generate_full(index);
        (sample, meta)
    }

    /// The scene, per box `(oncoming vehicle, world X in metres)` and per box the internal
    /// class of the object (a global class index, or `AUTO_RICKSHAW` / `TRICYCLE`).
    pub(crate) fn generate_full(&self, index: u64) -> (Sample, Vec<(bool, f32)>, Vec<u16>) {
        let scene = self.scene(index);
        let out = render::render(&scene);
        let mut sample = Sample {
            id: format!("synth-{:016x}-{index}", self.seed),
            image: out.image,
            boxes: out.boxes,
            ignore: Vec::new(),
            drivable: out.drivable,
            lanes: out.lanes,
            conditions: Conditions {
                weather: scene.env.weather.name().to_string(),
                time_of_day: scene.env.time.name().to_string(),
                scene: scene.env.kind.name().to_string(),
            },
            traffic_side: self.traffic_side,
        };
        let mut meta = out.meta;
        if self.traffic_side == TrafficSide::Left {
            // Scenes are laid out for right-hand traffic; left-hand traffic is its mirror.
            imageops::flip_horizontal_in_place(&mut sample.image);
            imageops::flip_horizontal_in_place(&mut sample.drivable);
            imageops::flip_horizontal_in_place(&mut sample.lanes);
            let w = self.width as f32;
            for b in &mut sample.boxes {
                (b.x1, b.x2) = (w - b.x2, w - b.x1);
            }
            for m in &mut meta {
                m.1 = -m.1;
            }
        }
        let internal: Vec<u16> = sample.boxes.iter().map(|b| b.class).collect();
        if let Some(country) = &self.country {
            // Labels in the country's class list; a class the country drops keeps its pixels
            // but loses its box.
            let mut kept = (Vec::new(), Vec::new(), Vec::new());
            for ((mut b, m), class) in sample.boxes.drain(..).zip(meta).zip(&internal) {
                if let Some(c) = country.relabel.get(*class as usize).copied().flatten() {
                    b.class = c;
                    kept.0.push(b);
                    kept.1.push(m);
                    kept.2.push(*class);
                }
            }
            sample.boxes = kept.0;
            return (sample, kept.1, kept.2);
        }
        (sample, meta, internal)
    }
}

/// Options of [`write_synthetic_dataset`] and [`write_synthetic_dataset_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Dataset name in the manifest.
    pub name: String,
    /// Region (ISO 3166-1 alpha-2): sets traffic side, centre-line colour and the manifest's
    /// region and policy.
    pub region: String,
    /// Frame size, 64..=4096 px a side.
    pub width: u32,
    pub height: u32,
    /// Number of training samples (indices `0..train`).
    pub train: usize,
    /// Number of validation samples (indices `VAL_INDEX_OFFSET + 0..val`).
    pub val: usize,
    pub seed: u64,
    /// Samples per shard file (at least 1).
    pub samples_per_shard: usize,
}

/// Samples generated and encoded at once: bounds memory while keeping all cores busy.
const CHUNK: usize = 64;
/// Largest frame side: a 4096x4096 frame already needs ~320 MB of render buffers.
const MAX_SIDE: u32 = 4096;

/// Generates a synthetic dataset into `out` (created if missing; must not hold a dataset).
///
/// Writes `train-00000.shard`, ..., `val-00000.shard`, ... and `manifest.json` with
/// `classes = SYNTH_CLASSES` and the home-only, weights-only policy of `opts.region`. Samples
/// are generated and encoded on rayon threads; `progress(n)` is called from those threads as
/// each sample completes, with `n` the number completed so far (calls may arrive slightly out
/// of order). Sample ids are `synth-{region}-{split}-{index}` with the index within the split.
pub fn write_synthetic_dataset(
    out: &Path,
    opts: &SynthOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Manifest, DataError> {
    write_synthetic_dataset_for(out, opts, None, progress)
}

/// [`write_synthetic_dataset`], with the scenes of a `country` profile when one is given:
/// drawn by [`SceneGenerator::for_country`], labelled in the profile's class list, and the
/// manifest's `classes` are the profile's. `opts.region` must be the profile's code (the
/// dataset belongs to the country). Without a country it is `write_synthetic_dataset`.
pub fn write_synthetic_dataset_for(
    out: &Path,
    opts: &SynthOptions,
    country: Option<&CountryProfile>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Manifest, DataError> {
    validate_options(opts)?;
    let generator = match country {
        Some(profile) => {
            if profile.code != opts.region {
                return Err(DataError::InvalidOptions(format!(
                    "region `{}` is not the country profile's code `{}`; a country's synthetic \
                     data belongs to the country (use region `{}`)",
                    opts.region, profile.code, profile.code
                )));
            }
            SceneGenerator::for_country(opts.width, opts.height, profile, opts.seed)?
        }
        None => SceneGenerator::for_region(opts.width, opts.height, &opts.region, opts.seed),
    };
    let manifest_path = out.join(MANIFEST_FILE);
    if manifest_path.exists() {
        return Err(DataError::InvalidOptions(format!(
            "{} already holds a dataset ({MANIFEST_FILE}); choose an empty directory or remove it",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let mut manifest = Manifest::new(&opts.name, &opts.region, generator.class_names())?;
    let done = AtomicUsize::new(0);

    for (split, count, offset) in [
        (Split::Train, opts.train, 0u64),
        (Split::Val, opts.val, VAL_INDEX_OFFSET),
    ] {
        let shards = count.div_ceil(opts.samples_per_shard);
        for k in 0..shards {
            let path = out.join(format!("{split}-{k:05}.shard"));
            let mut writer = ShardWriter::create(&path)?;
            let start = k * opts.samples_per_shard;
            let end = (start + opts.samples_per_shard).min(count);
            for chunk_start in (start..end).step_by(CHUNK) {
                let chunk_end = (chunk_start + CHUNK).min(end);
                let records: Vec<EncodedRecord> = (chunk_start..chunk_end)
                    .into_par_iter()
                    .map(|i| {
                        let mut sample = generator.generate(offset + i as u64);
                        sample.id = format!("synth-{}-{split}-{i}", opts.region);
                        let record = EncodedRecord::encode(&sample);
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                        record
                    })
                    .collect::<Result<_>>()?;
                for r in &records {
                    writer.push_encoded(r)?;
                }
            }
            let info = writer.finish()?;
            manifest.shards.push(ShardEntry {
                file: info.file_name,
                split,
                samples: info.samples,
                hash: info.hash,
                sample_checksums: info.sample_checksums,
            });
        }
    }
    manifest.save(&manifest_path)?;
    Ok(manifest)
}

fn validate_options(o: &SynthOptions) -> Result<()> {
    let bad = |m: String| Err(DataError::InvalidOptions(m));
    if o.name.trim().is_empty() {
        return bad("name is empty".into());
    }
    if !is_region_code(&o.region) {
        return bad(format!(
            "region `{}` is not an ISO 3166-1 alpha-2 code (two uppercase letters such as `DE`)",
            o.region
        ));
    }
    for (what, v) in [("width", o.width), ("height", o.height)] {
        if !(64..=MAX_SIDE).contains(&v) {
            return bad(format!("{what} is {v}; expected 64..={MAX_SIDE} pixels"));
        }
    }
    if o.samples_per_shard == 0 {
        return bad("samples_per_shard is 0; expected at least 1".into());
    }
    if o.train as u64 > VAL_INDEX_OFFSET {
        return bad(format!(
            "train is {}; at most 2^32 training samples keep train and val indices disjoint",
            o.train
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `split` at a site in the dataset's own region, failing on any integrity problem.
    fn open_at_home(dir: &Path, split: Split) -> Result<percept_data::Dataset> {
        let manifest = Manifest::load_dir(dir)?;
        let guard = percept_data::ResidencyGuard::new(percept_data::Site {
            region: manifest.region.clone(),
            name: "test".into(),
        })?;
        let cleared = guard.check(dir).map_err(|r| r.error)?;
        percept_data::Dataset::open(
            &cleared,
            split,
            percept_data::IntegrityPolicy::Fail,
            &mut |_| {},
        )
    }

    fn gen(side: TrafficSide) -> SceneGenerator {
        SceneGenerator::new(320, 192, side, 42)
    }

    #[test]
    fn same_seed_and_index_give_the_same_sample() {
        let g = gen(TrafficSide::Right);
        let a = g.generate(7);
        let b = g.generate(7);
        assert_eq!(a, b);
        let c = g.generate(8);
        assert_ne!(a.image, c.image);
        let other_seed = SceneGenerator::new(320, 192, TrafficSide::Right, 43).generate(7);
        assert_ne!(a.image, other_seed.image);
        // A clone on another thread agrees: nothing depends on generation order.
        let g2 = g.clone();
        let d = std::thread::spawn(move || g2.generate(7)).join().unwrap();
        assert_eq!(a, d);
    }

    #[test]
    fn scenes_are_sane() {
        let g = gen(TrafficSide::Right);
        let mut class_seen = [0usize; 7];
        let mut conditions = std::collections::HashSet::new();
        for i in 0..48 {
            let s = g.generate(i);
            assert_eq!(s.image.dimensions(), (320, 192));
            assert_eq!(s.drivable.dimensions(), (320, 192));
            assert_eq!(s.lanes.dimensions(), (320, 192));
            let drivable: usize = s.drivable.as_raw().iter().map(|&v| v as usize).sum();
            let lanes: usize = s.lanes.as_raw().iter().map(|&v| v as usize).sum();
            assert!(s.drivable.as_raw().iter().all(|&v| v <= 1));
            assert!(s.lanes.as_raw().iter().all(|&v| v <= 1));
            assert!(
                drivable > 320 * 192 / 50,
                "scene {i}: drivable area {drivable} px"
            );
            assert!(lanes > 30, "scene {i}: lane mask {lanes} px");
            assert!(lanes < drivable, "scene {i}");
            for b in &s.boxes {
                assert!((b.class as usize) < SYNTH_CLASSES.len());
                assert!(
                    b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= 320.0 && b.y2 <= 192.0,
                    "{b:?}"
                );
                assert!(b.width() >= 4.0 && b.height() >= 4.0, "{b:?}");
                class_seen[b.class as usize] += 1;
            }
            assert!(
                ["clear", "overcast", "rainy", "foggy"].contains(&s.conditions.weather.as_str())
            );
            assert!(["daytime", "dawn/dusk", "night"].contains(&s.conditions.time_of_day.as_str()));
            assert!(
                ["highway", "city street", "residential"].contains(&s.conditions.scene.as_str())
            );
            let c = s.conditions;
            conditions.insert((c.weather, c.time_of_day, c.scene));
        }
        for (c, n) in class_seen.iter().enumerate() {
            assert!(
                *n > 0,
                "class {} never labelled in 48 scenes",
                SYNTH_CLASSES[c]
            );
        }
        assert!(
            conditions.len() >= 10,
            "only {} condition combinations",
            conditions.len()
        );
    }

    #[test]
    fn traffic_sides_mirror_each_other() {
        let right = gen(TrafficSide::Right);
        let left = gen(TrafficSide::Left);
        let mut oncoming = 0;
        for i in 0..24 {
            let (r, rm) = right.generate_with_meta(i);
            let (l, lm) = left.generate_with_meta(i);
            assert_eq!(l.traffic_side, TrafficSide::Left);
            let mut flipped = r.image.clone();
            imageops::flip_horizontal_in_place(&mut flipped);
            assert_eq!(l.image, flipped);
            assert_eq!(r.boxes.len(), l.boxes.len());
            for (a, b) in r.boxes.iter().zip(&l.boxes) {
                assert_eq!((a.class, a.y1, a.y2), (b.class, b.y1, b.y2));
                assert_eq!((a.x1, a.x2), (320.0 - b.x2, 320.0 - b.x1));
            }
            // Oncoming traffic is on the left of the camera with right-hand traffic and on the
            // right with left-hand traffic; same-direction traffic the other way round, except
            // parked or neighbouring-lane cars straddling the centre.
            for ((&(on_r, xr), &(on_l, xl)), b) in rm.iter().zip(&lm).zip(&r.boxes) {
                assert_eq!(on_r, on_l);
                if on_r {
                    oncoming += 1;
                    assert!(xr < 0.0 && xl > 0.0, "oncoming at {xr} / {xl}: {b:?}");
                }
            }
        }
        assert!(
            oncoming > 5,
            "only {oncoming} oncoming vehicles in 24 scenes"
        );
    }

    #[test]
    fn any_size_from_64_works() {
        for (w, h) in [(64, 64), (100, 64), (64, 200), (1280, 720)] {
            let s = SceneGenerator::new(w, h, TrafficSide::Right, 1).generate(3);
            assert_eq!(s.image.dimensions(), (w, h));
            for b in &s.boxes {
                assert!(b.x2 <= w as f32 && b.y2 <= h as f32);
            }
        }
        // Degenerate sizes do not panic.
        for (w, h) in [(0, 0), (1, 1), (7, 3)] {
            let s = SceneGenerator::new(w, h, TrafficSide::Left, 1).generate(0);
            assert_eq!(s.image.dimensions(), (w, h));
        }
    }

    #[test]
    fn centre_line_convention_by_region() {
        assert_eq!(CentreLine::of_region("US"), CentreLine::Yellow);
        assert_eq!(CentreLine::of_region("cn"), CentreLine::Yellow);
        assert_eq!(CentreLine::of_region("DE"), CentreLine::White);
        assert_eq!(CentreLine::of_region("GB"), CentreLine::White);
        let g = SceneGenerator::for_region(64, 64, "GB", 0);
        assert_eq!(g.traffic_side(), TrafficSide::Left);
    }

    #[test]
    fn writes_a_verifiable_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("synth");
        let opts = SynthOptions {
            name: "synth-jp".into(),
            region: "JP".into(),
            width: 96,
            height: 64,
            train: 5,
            val: 2,
            seed: 9,
            samples_per_shard: 2,
        };
        let calls = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        let progress = |n: usize| {
            calls.fetch_add(1, Ordering::Relaxed);
            max_seen.fetch_max(n, Ordering::Relaxed);
        };
        let m = write_synthetic_dataset(&out, &opts, &progress).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 7);
        assert_eq!(max_seen.load(Ordering::Relaxed), 7);
        let files: Vec<&str> = m.shards.iter().map(|s| s.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "train-00000.shard",
                "train-00001.shard",
                "train-00002.shard",
                "val-00000.shard"
            ]
        );
        assert_eq!(m.region, "JP");
        assert_eq!(m.policy.processing_regions, vec!["JP".to_string()]);
        assert_eq!(m.policy.export, "weights-only");
        assert_eq!(m.classes, SYNTH_CLASSES.map(String::from).to_vec());
        assert_eq!(
            Manifest::load(out.join(MANIFEST_FILE)).unwrap().hash(),
            m.hash()
        );

        let train = open_at_home(&out, Split::Train).unwrap();
        assert_eq!(train.len(), 5);
        let s4 = train.get(4).unwrap();
        assert_eq!(s4.id, "synth-JP-train-4");
        assert_eq!(s4.traffic_side, TrafficSide::Left);
        let fresh = SceneGenerator::for_region(96, 64, "JP", 9).generate(4);
        assert_eq!(s4.boxes, fresh.boxes);
        assert_eq!(s4.drivable, fresh.drivable);
        let val = open_at_home(&out, Split::Val).unwrap();
        assert_eq!(val.len(), 2);
        let v0 = val.get(0).unwrap();
        assert_eq!(v0.id, "synth-JP-val-0");
        let fresh_val = SceneGenerator::for_region(96, 64, "JP", 9).generate(VAL_INDEX_OFFSET);
        assert_eq!(v0.lanes, fresh_val.lanes);
        assert_ne!(v0.lanes, train.get(0).unwrap().lanes);

        // A second run into the same directory is refused; bad options name the option.
        let err = write_synthetic_dataset(&out, &opts, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("already holds a dataset"), "{err}");
        let bad = SynthOptions {
            region: "Japan".into(),
            ..opts.clone()
        };
        let err = write_synthetic_dataset(&dir.path().join("x"), &bad, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("region `Japan`"), "{err}");
        let bad = SynthOptions { width: 32, ..opts };
        let err = write_synthetic_dataset(&dir.path().join("y"), &bad, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("width is 32"), "{err}");
    }
}
