//! Scenes by country profile: the profiles of `configs/countries/` parse and map onto the
//! synthetic classes, and a generator made for a country draws its conventions and labels its
//! classes.

use std::path::{Path, PathBuf};

use image::imageops;
use percept_data::{
    ClassOrigin, CountryProfile, EdgeLines, LineColour, Manifest, NewObjectShape, Split, StopSign,
    TrafficSide, WarningSign,
};

use super::layout::{Obj, ObjKind, Sign, SignShape, Time, Weather};
use super::*;

fn countries_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/countries")
}

fn profile(code: &str) -> CountryProfile {
    CountryProfile::load(&countries_dir().join(format!("{}.toml", code.to_lowercase()))).unwrap()
}

fn synth_classes() -> Vec<String> {
    SYNTH_CLASSES.iter().map(|c| c.to_string()).collect()
}

fn gen(profile: &CountryProfile, w: u32, h: u32) -> SceneGenerator {
    SceneGenerator::for_country(w, h, profile, 42).unwrap()
}

#[test]
fn every_profile_in_configs_parses_and_maps_onto_the_synthetic_classes() {
    let mut codes = Vec::new();
    for entry in std::fs::read_dir(countries_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let p = CountryProfile::load(&path).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(p.code, stem.to_uppercase(), "{}", path.display());
        assert_eq!((p.input.width, p.input.height), (256, 160), "{}", p.code);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# "), "{}: starts with a comment", p.code);
        let m = p.mapping(&synth_classes()).unwrap();
        assert_eq!(m.class_names(), p.class_names());
        // A generator can be made for it.
        let g = SceneGenerator::for_country(96, 64, &p, 1).unwrap();
        assert_eq!(g.class_names(), p.class_names());
        assert_eq!(g.traffic_side(), p.traffic.side);
        assert_eq!(g.country_code(), Some(p.code.as_str()));
        codes.push(p.code);
    }
    codes.sort();
    assert_eq!(codes, ["CN", "DE", "GB", "IN", "JP", "US"]);

    let all_seven: Vec<(String, ClassOrigin)> = SYNTH_CLASSES
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), ClassOrigin::Kept(i)))
        .collect();
    for code in ["US", "DE", "GB", "JP"] {
        let m = profile(code).mapping(&synth_classes()).unwrap();
        assert_eq!(m.classes, all_seven, "{code}");
        assert!(m.dropped.is_empty(), "{code}");
    }

    let jp = profile("JP");
    assert_eq!(jp.traffic.side, TrafficSide::Left);
    assert_eq!(jp.signs.stop, StopSign::InvertedTriangle);
    assert_eq!(jp.signs.warning, WarningSign::YellowDiamond);
    assert_eq!(jp.markings.centre_line, LineColour::White);

    let us = profile("US");
    assert_eq!(us.traffic.side, TrafficSide::Right);
    assert_eq!(us.markings.centre_line, LineColour::Yellow);
    assert_eq!(
        (us.signs.warning, us.signs.stop),
        (WarningSign::YellowDiamond, StopSign::Octagon)
    );
    let de = profile("DE");
    assert_eq!(de.traffic.side, TrafficSide::Right);
    assert_eq!(de.signs.warning, WarningSign::RedTriangle);
    let gb = profile("GB");
    assert_eq!(gb.traffic.side, TrafficSide::Left);
    assert_eq!(gb.markings.centre_line, LineColour::White);

    let cn = profile("CN");
    assert_eq!(cn.traffic.side, TrafficSide::Right);
    assert_eq!(cn.markings.centre_line, LineColour::Yellow);
    assert_eq!(cn.signs.warning, WarningSign::YellowTriangle);
    let m = cn.mapping(&synth_classes()).unwrap();
    assert_eq!(m.classes.len(), 8);
    assert_eq!(m.classes[7], ("tricycle".to_string(), ClassOrigin::New));
    assert_eq!(cn.classes[7].shape, Some(NewObjectShape::Tricycle));

    let ind = profile("IN");
    assert_eq!(ind.traffic.side, TrafficSide::Left);
    assert_eq!(ind.markings.edge_lines, EdgeLines::None);
    assert_eq!(
        (ind.signs.warning, ind.signs.stop),
        (WarningSign::RedTriangle, StopSign::Octagon)
    );
    let m = ind.mapping(&synth_classes()).unwrap();
    assert_eq!(m.classes.len(), 8);
    assert_eq!(
        m.classes[4],
        ("two-wheeler".to_string(), ClassOrigin::Kept(4))
    );
    assert_eq!(
        m.classes[7],
        ("auto-rickshaw".to_string(), ClassOrigin::New)
    );
    assert_eq!(ind.classes[7].shape, Some(NewObjectShape::AutoRickshaw));
    assert!(m.dropped.is_empty());
    assert_eq!(
        m.relabel(),
        vec![
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(5),
            Some(6)
        ]
    );
}

#[test]
fn same_seed_and_profile_give_the_same_scenes() {
    let ind = profile("IN");
    let a = gen(&ind, 160, 96);
    let b = SceneGenerator::for_country(160, 96, &ind, 42).unwrap();
    for i in 0..4 {
        assert_eq!(a.generate(i), b.generate(i));
    }
    let a2 = a.clone();
    let t = std::thread::spawn(move || a2.generate(3)).join().unwrap();
    assert_eq!(t, a.generate(3));
    let other = SceneGenerator::for_country(160, 96, &ind, 43).unwrap();
    assert_ne!(other.generate(3).image, a.generate(3).image);
}

#[test]
fn a_japanese_scene_is_the_mirror_of_its_right_hand_twin() {
    let jp = profile("JP");
    let mut right = jp.clone();
    right.traffic.side = TrafficSide::Right;
    let (w, h) = (200u32, 120u32);
    let (l, r) = (gen(&jp, w, h), gen(&right, w, h));
    let de = gen(&profile("DE"), w, h);
    for i in 0..12 {
        let (ls, rs) = (l.generate(i), r.generate(i));
        assert_eq!(ls.traffic_side, TrafficSide::Left);
        assert_eq!(rs.traffic_side, TrafficSide::Right);
        let mut flipped = rs.image.clone();
        imageops::flip_horizontal_in_place(&mut flipped);
        assert_eq!(ls.image, flipped, "scene {i}");
        imageops::flip_horizontal_in_place(&mut flipped);
        let mut lanes = rs.lanes.clone();
        imageops::flip_horizontal_in_place(&mut lanes);
        assert_eq!(ls.lanes, lanes, "scene {i}");
        assert_eq!(ls.boxes.len(), rs.boxes.len());
        for (a, b) in ls.boxes.iter().zip(&rs.boxes) {
            assert_eq!((a.class, a.y1, a.y2), (b.class, b.y1, b.y2));
            assert_eq!((a.x1, a.x2), (w as f32 - b.x2, w as f32 - b.x1));
        }
        // The right-hand twin has Germany's layout: same conditions, road and markings (white
        // centre lines, solid edges; signs hang above the camera and never cover the road).
        let ds = de.generate(i);
        assert_eq!(ds.conditions, rs.conditions, "scene {i}");
        assert_eq!(ds.lanes, rs.lanes, "scene {i}");
        assert_eq!(ds.drivable, rs.drivable, "scene {i}");
    }
}

/// Painted lane-mask pixels whose colour is road-paint yellow.
fn yellow_lane_pixels(s: &Sample) -> usize {
    s.image
        .pixels()
        .zip(s.lanes.as_raw())
        .filter(|(p, &m)| {
            let [r, g, b] = p.0.map(|v| v as f32);
            m == 1 && r > 90.0 && g > 0.5 * r && b < 0.5 * r
        })
        .count()
}

#[test]
fn centre_lines_are_yellow_in_china_and_white_in_japan() {
    let (cn, jp) = (gen(&profile("CN"), 200, 120), gen(&profile("JP"), 200, 120));
    let (mut cn_yellow, mut jp_yellow, mut day) = (0, 0, 0);
    for i in 0..30 {
        let c = cn.generate(i);
        if c.conditions.time_of_day != "daytime" {
            continue;
        }
        day += 1;
        cn_yellow += yellow_lane_pixels(&c);
        jp_yellow += yellow_lane_pixels(&jp.generate(i));
    }
    assert!(day >= 10, "{day} daytime scenes");
    assert!(cn_yellow > 200, "{cn_yellow} yellow lane pixels in China");
    // Japan's few are the anti-aliased edges of yellow vehicles over a line.
    assert!(
        jp_yellow * 50 < cn_yellow,
        "{jp_yellow} yellow lane pixels in Japan, {cn_yellow} in China"
    );
    // As laid out: every Japanese marking is white paint, China's centre lines yellow.
    let yellow = |c: [f32; 3]| c[2] < 0.5 * c[0];
    let (mut cn_lines, mut jp_lines) = (0, 0);
    for i in 0..30 {
        cn_lines += cn
            .scene(i)
            .road
            .markings
            .iter()
            .filter(|m| yellow(m.col))
            .count();
        jp_lines += jp
            .scene(i)
            .road
            .markings
            .iter()
            .filter(|m| yellow(m.col))
            .count();
    }
    assert!(
        cn_lines >= 10,
        "{cn_lines} yellow lines in 30 Chinese scenes"
    );
    assert_eq!(jp_lines, 0);
}

#[test]
fn no_edge_lines_means_fewer_lane_pixels_for_the_same_seed() {
    let none = profile("IN");
    let mut solid = none.clone();
    solid.markings.edge_lines = EdgeLines::Solid;
    let mut dashed = none.clone();
    dashed.markings.edge_lines = EdgeLines::Dashed;
    let sum = |s: &Sample| s.lanes.as_raw().iter().map(|&v| v as usize).sum::<usize>();
    let (gn, gs, gd) = (
        gen(&none, 200, 120),
        gen(&solid, 200, 120),
        gen(&dashed, 200, 120),
    );
    let (mut n_none, mut n_solid, mut n_dashed) = (0, 0, 0);
    for i in 0..16 {
        let (a, b, d) = (gn.generate(i), gs.generate(i), gd.generate(i));
        // The same scene but for the edge lines: every lane pixel without them is one with.
        assert!(
            a.lanes
                .as_raw()
                .iter()
                .zip(b.lanes.as_raw())
                .all(|(&x, &y)| x <= y),
            "scene {i}"
        );
        assert_eq!(a.boxes, b.boxes, "scene {i}");
        n_none += sum(&a);
        n_solid += sum(&b);
        n_dashed += sum(&d);
    }
    assert!(
        n_none < n_dashed && n_dashed < n_solid,
        "{n_none} {n_dashed} {n_solid}"
    );
    assert!(n_none * 10 < n_solid * 9, "{n_none} vs {n_solid}");
}

#[test]
fn signs_take_the_country_families() {
    let shapes = |code: &str| {
        let g = gen(&profile(code), 200, 120);
        let mut out = Vec::new();
        for i in 0..40 {
            for o in g.scene(i).objs {
                if let ObjKind::Sign(s) = o.kind {
                    out.push(s.shape);
                }
            }
        }
        out
    };
    let has = |v: &[SignShape], s: SignShape| v.contains(&s);
    let jp = shapes("JP");
    assert!(has(&jp, SignShape::StopTriangle) && has(&jp, SignShape::Diamond));
    for s in [
        SignShape::Stop,
        SignShape::Warning,
        SignShape::Yield,
        SignShape::YellowTriangle,
    ] {
        assert!(!has(&jp, s), "JP has {s:?}");
    }
    let cn = shapes("CN");
    assert!(has(&cn, SignShape::YellowTriangle) && has(&cn, SignShape::Stop));
    assert!(!has(&cn, SignShape::Diamond) && !has(&cn, SignShape::Warning));
    let us = shapes("US");
    assert!(has(&us, SignShape::Diamond) && has(&us, SignShape::Stop));
    assert!(!has(&us, SignShape::Warning) && !has(&us, SignShape::StopTriangle));
    let de = shapes("DE");
    assert!(has(&de, SignShape::Warning) && has(&de, SignShape::Yield));
    assert!(!has(&de, SignShape::Diamond) && !has(&de, SignShape::YellowTriangle));
}

/// Renders one big sign of `shape` in front of the camera on a clear day and returns, per image
/// row it covers, the number of its pixels and, over all of them, the mean colour.
fn render_sign(shape: SignShape) -> (Vec<usize>, [f32; 3]) {
    let g = SceneGenerator::new(200, 200, TrafficSide::Right, 5);
    let mut scene = g.scene(0);
    scene.env.time = Time::Day;
    scene.env.weather = Weather::Clear;
    scene.env.ambient = [1.0; 3];
    scene.env.visibility = 1e6;
    scene.env.noise = 0.0;
    scene.env.lights_on = false;
    scene.hood = None;
    scene.rain = None;
    scene.objs.clear();
    let background = render::render(&scene);
    let z = 6.0;
    let sign = Sign {
        x: -scene.cam.k * z * z,
        z,
        centre: scene.cam.cam_h,
        size: 1.6,
        shape,
        post: false,
    };
    scene.objs.push(Obj {
        z,
        class: Some(SIGN),
        kind: ObjKind::Sign(sign),
        oncoming: false,
    });
    let out = render::render(&scene);
    assert_eq!(out.boxes.len(), 1);
    let b = out.boxes[0];
    let mut rows = Vec::new();
    let mut mean = [0.0f32; 3];
    let mut n = 0;
    for y in b.y1 as u32..b.y2 as u32 {
        let mut count = 0;
        for x in 0..200 {
            let p = out.image.get_pixel(x, y).0;
            if p != background.image.get_pixel(x, y).0 {
                count += 1;
                for c in 0..3 {
                    mean[c] += p[c] as f32 / 255.0;
                }
                n += 1;
            }
        }
        rows.push(count);
    }
    (rows, mean.map(|m| m / n.max(1) as f32))
}

/// Mean width of the top and bottom quarters of the rows.
fn top_and_bottom(rows: &[usize]) -> (f32, f32) {
    let q = (rows.len() / 4).max(1);
    let mean = |r: &[usize]| r.iter().sum::<usize>() as f32 / r.len() as f32;
    (mean(&rows[..q]), mean(&rows[rows.len() - q..]))
}

#[test]
fn the_japanese_stop_sign_is_a_red_triangle_apex_down() {
    let (rows, mean) = render_sign(SignShape::StopTriangle);
    assert!(rows.len() > 40, "{} rows", rows.len());
    let (top, bottom) = top_and_bottom(&rows);
    assert!(top > 3.0 * bottom, "top {top} px, bottom {bottom} px");
    // The widest row is in the top fifth (the triangle's base).
    let widest = rows.iter().enumerate().max_by_key(|r| r.1).unwrap().0;
    assert!(
        widest < rows.len() / 5,
        "widest row {widest} of {}",
        rows.len()
    );
    assert!(mean[0] > 0.5 && mean[1] < 0.4 && mean[2] < 0.4, "{mean:?}");

    // The octagon is about as wide at the top as at the bottom; China's warning triangle
    // points up and is yellow; the US diamond is widest in the middle.
    let (rows, mean) = render_sign(SignShape::Stop);
    let (top, bottom) = top_and_bottom(&rows);
    assert!(
        (top / bottom - 1.0).abs() < 0.2,
        "octagon: {top} / {bottom}"
    );
    assert!(mean[0] > 0.5 && mean[1] < 0.4, "{mean:?}");
    let (rows, mean) = render_sign(SignShape::YellowTriangle);
    let (top, bottom) = top_and_bottom(&rows);
    assert!(bottom > 3.0 * top, "yellow triangle: {top} / {bottom}");
    assert!(mean[0] > 0.5 && mean[1] > 0.4 && mean[2] < 0.25, "{mean:?}");
    let (rows, _) = render_sign(SignShape::Diamond);
    let (top, bottom) = top_and_bottom(&rows);
    let middle = rows[rows.len() / 2] as f32;
    assert!(middle > 2.0 * top && middle > 2.0 * bottom, "diamond");
}

#[test]
fn an_indian_dataset_labels_auto_rickshaws_and_two_wheelers_in_its_class_list() {
    let ind = profile("IN");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth-in");
    let opts = SynthOptions {
        name: "synthetic-in".into(),
        region: "IN".into(),
        width: 256,
        height: 160,
        train: 30,
        val: 2,
        seed: 11,
        samples_per_shard: 16,
    };
    let m = write_synthetic_dataset_for(&out, &opts, Some(&ind), &|_| {}).unwrap();
    assert_eq!(m.classes, ind.class_names());
    assert_eq!(m.classes[7], "auto-rickshaw");
    assert_eq!(m.classes[4], "two-wheeler");
    assert_eq!(Manifest::load_dir(&out).unwrap().classes, ind.class_names());

    let data = percept_data::Dataset::open(
        &percept_data::ResidencyGuard::new(percept_data::Site {
            region: "IN".into(),
            name: "test".into(),
        })
        .unwrap()
        .check(&out)
        .map_err(|r| r.error)
        .unwrap(),
        Split::Train,
        percept_data::IntegrityPolicy::Fail,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(data.len(), 30);
    let g = SceneGenerator::for_country(256, 160, &ind, 11).unwrap();
    let (mut with_auto, mut autos, mut two_wheelers) = (0, 0, 0);
    for i in 0..30 {
        let s = data.get(i).unwrap();
        assert_eq!(s.traffic_side, TrafficSide::Left);
        let (fresh, _, internal) = g.generate_full(i as u64);
        assert_eq!(s.boxes, fresh.boxes);
        assert_eq!(s.lanes, fresh.lanes);
        assert!(
            s.boxes.iter().all(|b| (b.class as usize) < 8),
            "{:?}",
            s.boxes
        );
        // Cyclists are labelled two-wheelers, the new vehicles auto-rickshaws.
        for (b, &c) in s.boxes.iter().zip(&internal) {
            match c {
                CYCLIST => assert_eq!(b.class, 4),
                AUTO_RICKSHAW => assert_eq!(b.class, 7),
                TRICYCLE => panic!("no tricycles in India's profile"),
                c => assert_eq!(b.class, c),
            }
        }
        let n = s.boxes.iter().filter(|b| b.class == 7).count();
        autos += n;
        with_auto += usize::from(n > 0);
        two_wheelers += s.boxes.iter().filter(|b| b.class == 4).count();
    }
    assert!(with_auto >= 9, "auto-rickshaws in {with_auto} of 30 scenes");
    assert!(autos >= 15, "{autos} auto-rickshaws");
    assert!(two_wheelers > 0, "no two-wheeler labels");

    // A region other than the profile's is refused.
    let bad = SynthOptions {
        region: "DE".into(),
        ..opts
    };
    let err = write_synthetic_dataset_for(&dir.path().join("x"), &bad, Some(&ind), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("`IN`"), "{err}");
}

#[test]
fn chinese_scenes_have_tricycles() {
    let cn = profile("CN");
    let g = gen(&cn, 256, 160);
    let mut tricycles = 0;
    for i in 0..20 {
        let (s, _, internal) = g.generate_full(i);
        for (b, &c) in s.boxes.iter().zip(&internal) {
            assert_eq!(b.class == 7, c == TRICYCLE);
            tricycles += usize::from(c == TRICYCLE);
        }
    }
    assert!(tricycles >= 8, "{tricycles} tricycles in 20 scenes");
}

#[test]
fn a_dropped_class_stays_in_the_image_without_a_box() {
    let de = profile("DE");
    let mut no_signs = de.clone();
    no_signs.classes.retain(|c| c.name != "traffic sign");
    let (a, b) = (gen(&de, 200, 120), gen(&no_signs, 200, 120));
    assert_eq!(b.class_names().len(), 6);
    let mut signs = 0;
    for i in 0..8 {
        let (sa, sb) = (a.generate(i), b.generate(i));
        assert_eq!(sa.image, sb.image);
        signs += sa.boxes.iter().filter(|x| x.class == SIGN).count();
        let kept: Vec<_> = sa.boxes.iter().filter(|x| x.class != SIGN).collect();
        assert_eq!(kept.len(), sb.boxes.len());
        assert!(sb.boxes.iter().all(|x| x.class < 6));
    }
    assert!(signs > 0);
}
