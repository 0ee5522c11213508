//! `percept bench import`: import throughput and peak memory on synthetic frames in
//! BDD100K's layout (JPEG images, drivable and lane masks, Scalabel labels).
//!
//! The frames are written once into a scratch directory, then imported once per thread count
//! into a fresh dataset directory. Peak memory is the process's resident-set high-water mark
//! during the import alone: on Linux the mark is reset before each import
//! (`/proc/self/clear_refs`), so what the generator left behind is the baseline, reported
//! beside it.

use percept_data::process_memory::{reset_peak_rss, status_mib};
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::bdd100k::{default_lane_lines, Bdd100kOptions, Bdd100kSource};
use crate::class_map::{ClassMap, UnmappedPolicy};
use crate::pipeline::{import, ImportOptions, Quiet};
use crate::synthetic::write_bdd100k_layout;
use percept_data::Split;

/// Options of [`bench_import`].
#[derive(Debug, Clone)]
pub struct ImportBenchOptions {
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    /// Thread counts to measure, each at least 1.
    pub threads: Vec<usize>,
    pub samples_per_shard: usize,
    /// Parent of the scratch directory (removed afterwards).
    pub scratch: PathBuf,
}

/// One import.
#[derive(Debug, Clone, Serialize)]
pub struct ImportBenchRow {
    pub threads: usize,
    pub seconds: f64,
    pub frames_per_second: f64,
    /// Resident memory when the import began, MiB (Linux only).
    pub rss_before_mib: Option<f64>,
    /// Peak resident memory during the import, MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
}

/// What [`bench_import`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct ImportBenchReport {
    pub frames: usize,
    pub size: String,
    /// Bytes of source images and masks per frame, on average.
    pub source_bytes_per_frame: u64,
    pub rows: Vec<ImportBenchRow>,
}

impl ImportBenchReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mib = |v: Option<f64>| v.map_or("    n/a".to_string(), |v| format!("{v:7.1}"));
        let mut out = format!(
            "import bdd100k: {} frames {} ({} KiB of images and masks each)\n\
             threads  seconds  frames/s  (per thread)  RSS before MiB  peak MiB\n",
            self.frames,
            self.size,
            self.source_bytes_per_frame / 1024
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:>7}  {:>7.2}  {:>8.1}  {:>12.1}  {:>14}  {:>8}\n",
                r.threads,
                r.seconds,
                r.frames_per_second,
                r.frames_per_second / r.threads as f64,
                mib(r.rss_before_mib),
                mib(r.peak_rss_mib),
            ));
        }
        out
    }
}

/// Writes the frames, imports them at each thread count, removes the scratch directory.
pub fn bench_import(
    options: &ImportBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<ImportBenchReport, String> {
    if options.frames == 0 || options.samples_per_shard == 0 {
        return Err("--frames and --samples-per-shard must be at least 1".into());
    }
    if let Some(t) = options.threads.iter().find(|&&t| t == 0) {
        return Err(format!("--threads {t}: give thread counts of at least 1"));
    }
    let scratch = options
        .scratch
        .join(format!("percept-bench-import-{}", std::process::id()));
    let result = run(options, &scratch, progress);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run(
    options: &ImportBenchOptions,
    scratch: &std::path::Path,
    progress: &dyn Fn(&str),
) -> Result<ImportBenchReport, String> {
    progress(&format!(
        "writing {} synthetic {}x{} frames in BDD100K's layout to {}",
        options.frames,
        options.width,
        options.height,
        scratch.display()
    ));
    let layout = write_bdd100k_layout(
        &scratch.join("source"),
        options.frames,
        options.width,
        options.height,
        &|_| {},
    )?;
    let source_bytes = [&layout.images, &layout.drivable, &layout.lanes]
        .iter()
        .map(|d| dir_bytes(d))
        .sum::<u64>();
    let source = Bdd100kSource::new(Bdd100kOptions {
        images: layout.images.clone(),
        labels: layout.labels.clone(),
        drivable: Some(layout.drivable.clone()),
        lanes: Some(layout.lanes.clone()),
        split: Split::Train,
        lane_categories: default_lane_lines(),
    })?;
    let mut rows = Vec::new();
    for &threads in &options.threads {
        let out = scratch.join(format!("dataset-{threads}"));
        let import_options = ImportOptions {
            out: out.clone(),
            name: "bench".into(),
            region: "US".into(),
            class_map: ClassMap::builtin("bdd100k").expect("built in"),
            unmapped: UnmappedPolicy::Error,
            samples_per_shard: options.samples_per_shard,
            val_fraction: None,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
        let rss_before_mib = reset_peak_rss().then(|| status_mib("VmRSS")).flatten();
        let start = Instant::now();
        let summary = pool
            .install(|| import(&source, &import_options, &Quiet))
            .map_err(|e| e.to_string())?;
        let seconds = start.elapsed().as_secs_f64();
        let peak_rss_mib = rss_before_mib.and(status_mib("VmHWM"));
        let imported: usize = summary.report.imported.values().sum();
        if imported != options.frames {
            return Err(format!(
                "imported {imported} of {} frames; see {}",
                options.frames,
                summary.report_path.display()
            ));
        }
        let row = ImportBenchRow {
            threads,
            seconds,
            frames_per_second: options.frames as f64 / seconds,
            rss_before_mib,
            peak_rss_mib,
        };
        progress(&format!(
            "{threads} threads: {:.1} frames/s",
            row.frames_per_second
        ));
        rows.push(row);
        std::fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(ImportBenchReport {
        frames: options.frames,
        size: format!("{}x{}", options.width, options.height),
        source_bytes_per_frame: source_bytes / options.frames as u64,
        rows,
    })
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_imports_every_frame_at_each_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let report = bench_import(
            &ImportBenchOptions {
                frames: 6,
                width: 96,
                height: 64,
                threads: vec![1, 2],
                samples_per_shard: 4,
                scratch: dir.path().to_path_buf(),
            },
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            report.rows.iter().map(|r| r.threads).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(report.rows.iter().all(|r| r.frames_per_second > 0.0));
        assert!(report.source_bytes_per_frame > 0);
        assert_eq!(report.size, "96x64");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the scratch directory is removed"
        );
        let err = bench_import(
            &ImportBenchOptions {
                threads: vec![0],
                ..ImportBenchOptions {
                    frames: 1,
                    width: 96,
                    height: 64,
                    threads: vec![],
                    samples_per_shard: 1,
                    scratch: dir.path().to_path_buf(),
                }
            },
            &|_| {},
        )
        .unwrap_err();
        assert!(err.contains("--threads 0"), "{err}");
    }

    #[test]
    fn synthetic_layout_imports_to_the_generator_boxes() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_bdd100k_layout(&dir.path().join("src"), 3, 96, 64, &|_| {}).unwrap();
        let source = Bdd100kSource::new(Bdd100kOptions {
            images: layout.images,
            labels: layout.labels,
            drivable: Some(layout.drivable),
            lanes: Some(layout.lanes),
            split: Split::Train,
            lane_categories: default_lane_lines(),
        })
        .unwrap();
        let out = dir.path().join("out");
        let summary = import(
            &source,
            &ImportOptions {
                out: out.clone(),
                name: "synthetic".into(),
                region: "US".into(),
                class_map: ClassMap::builtin("bdd100k").unwrap(),
                unmapped: UnmappedPolicy::Error,
                samples_per_shard: 10,
                val_fraction: None,
            },
            &Quiet,
        )
        .unwrap();
        assert!(
            summary.report.skipped.is_empty(),
            "{:?}",
            summary.report.skipped
        );
        let generator = percept_synth::SceneGenerator::for_region(96, 64, "US", 11);
        let reader = percept_data::ShardReader::open(out.join("train-00000.shard")).unwrap();
        let bdd = ClassMap::builtin("bdd100k").unwrap();
        for i in 0..3 {
            let want = generator.generate(i as u64);
            let got = reader.read(i).unwrap();
            assert_eq!(got.drivable, want.drivable);
            assert_eq!(got.lanes, want.lanes);
            assert_eq!(got.conditions, want.conditions);
            let names = |b: &percept_data::BoxLabel, classes: &[String]| {
                classes[usize::from(b.class)].clone()
            };
            let synth: Vec<String> = percept_synth::SYNTH_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect();
            let want_boxes: Vec<(String, [f32; 4])> = want
                .boxes
                .iter()
                .map(|b| {
                    let name = names(b, &synth).replace("cyclist", "rider");
                    (name, [b.x1, b.y1, b.x2, b.y2])
                })
                .collect();
            let got_boxes: Vec<(String, [f32; 4])> = got
                .boxes
                .iter()
                .map(|b| (names(b, bdd.classes()), [b.x1, b.y1, b.x2, b.y2]))
                .collect();
            assert_eq!(got_boxes, want_boxes, "frame {i}");
        }
    }
}
