use image::{Rgb, RgbImage};
use percept_data::{SceneGenerator, TrafficSide};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let start: u64 = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(0);
    let n: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(6);
    let side = if args.get(3).map(|s| s == "left").unwrap_or(false) {
        TrafficSide::Left
    } else {
        TrafficSide::Right
    };
    let (w, h) = (640u32, 384u32);
    let g = SceneGenerator::new(w, h, side, 42);
    let first = g.generate(start);
    first.image.save("/tmp/synth_preview.png").unwrap();
    let cols = 2u32;
    let rows = ((n as u32) + cols - 1) / cols;
    let mut grid = RgbImage::new(w * cols * 2, h * rows);
    for k in 0..n {
        let s = g.generate(start + k);
        println!("{} {:?} boxes={}", start + k, s.conditions, s.boxes.len());
        let (gx, gy) = ((k as u32 % cols) * w * 2, (k as u32 / cols) * h);
        let mut boxed = s.image.clone();
        for b in &s.boxes {
            let c = [
                Rgb([255, 0, 255]),
                Rgb([255, 128, 0]),
                Rgb([0, 255, 255]),
                Rgb([255, 0, 0]),
                Rgb([0, 255, 0]),
                Rgb([255, 255, 0]),
                Rgb([0, 0, 255]),
            ][b.class as usize];
            for x in b.x1 as u32..(b.x2 as u32).min(w) {
                boxed.put_pixel(x, b.y1 as u32, c);
                boxed.put_pixel(x, (b.y2 as u32 - 1).min(h - 1), c);
            }
            for y in b.y1 as u32..(b.y2 as u32).min(h) {
                boxed.put_pixel(b.x1 as u32, y, c);
                boxed.put_pixel((b.x2 as u32 - 1).min(w - 1), y, c);
            }
        }
        for y in 0..h {
            for x in 0..w {
                grid.put_pixel(gx + x, gy + y, *s.image.get_pixel(x, y));
                let mut p = *boxed.get_pixel(x, y);
                if s.drivable.get_pixel(x, y)[0] == 1 {
                    p[1] = p[1] / 2 + 100;
                }
                if s.lanes.get_pixel(x, y)[0] == 1 {
                    p = Rgb([255, 40, 40]);
                }
                grid.put_pixel(gx + w + x, gy + y, p);
            }
        }
    }
    grid.save("/tmp/synth_grid.png").unwrap();
}
