//! `percept import`: the importers of percept-import behind a progress bar, with Ctrl-C
//! stopping cleanly between blocks (resumable).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use indicatif::ProgressBar;
use percept::commands::progress;
use percept::data::Split;
use percept::import::bdd100k::{default_lane_lines, Bdd100kOptions, Bdd100kSource, LaneCategory};
use percept::import::kitti::{KittiOptions, KittiSource};
use percept::import::pipeline::{import, plural, ImportOptions, ImportProgress, ImportSummary};
use percept::import::yolop::{YolopOptions, YolopSource};
use percept::import::{ClassMap, Source, UnmappedPolicy};

#[derive(Subcommand)]
pub enum ImportFormat {
    /// BDD100K: Scalabel JSON labels, drivable-area and lane-marking PNG masks
    Bdd100k {
        /// Image directory, e.g. bdd100k/images/100k/train
        #[arg(long)]
        images: PathBuf,
        /// Scalabel label file, e.g. bdd100k/labels/det_20/det_train.json
        #[arg(long)]
        labels: PathBuf,
        /// Drivable-area masks, e.g. bdd100k/labels/drivable/masks/train (default: not labelled)
        #[arg(long)]
        drivable: Option<PathBuf>,
        /// Lane-marking masks, e.g. bdd100k/labels/lane/masks/train (default: not labelled)
        #[arg(long)]
        lanes: Option<PathBuf>,
        /// Lane categories that count as lane lines, comma-separated BDD names
        /// [default: the six painted line types, no crosswalk or road curb]
        #[arg(long, value_delimiter = ',')]
        lane_categories: Vec<String>,
        /// Split the frames go to: train or val
        #[arg(long, default_value = "train")]
        split: String,
        #[command(flatten)]
        common: ImportArgs,
    },
    /// YOLOP's layout: images/, det_annotations/, da_seg_annotations/, ll_seg_annotations/
    Yolop {
        /// Dataset root holding images/ and det_annotations/ (with train/ and val/ inside)
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        common: ImportArgs,
    },
    /// KITTI 2D objects: label_2/*.txt (15 fields) and image_2/ images; DontCare as ignore regions
    Kitti {
        /// Image directory, e.g. training/image_2
        #[arg(long)]
        images: PathBuf,
        /// Label directory, e.g. training/label_2
        #[arg(long)]
        labels: PathBuf,
        /// Split the frames go to: train or val
        #[arg(long, default_value = "train")]
        split: String,
        #[command(flatten)]
        common: ImportArgs,
    },
}

/// Options every importer takes.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Region the frames were collected in (ISO 3166-1 alpha-2): sets the residency policy and
    /// the traffic side
    #[arg(long)]
    region: String,
    /// Output dataset directory: new, empty, an interrupted import to resume, or a dataset of
    /// the same name, region and classes to add the other split to
    #[arg(long)]
    out: PathBuf,
    /// Dataset name in the manifest (default: <format>-<region>)
    #[arg(long)]
    name: Option<String>,
    /// Class map (TOML) [default: the built-in configs/classmaps/<format>.toml]
    #[arg(long)]
    class_map: Option<PathBuf>,
    /// Objects of categories the class map does not name: error (list them and stop) or drop
    /// (drop them with a count)
    #[arg(long, default_value = "error")]
    unmapped: String,
    /// Put this fraction of frames in val (chosen by a hash of the frame id) instead of --split
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Source records per shard
    #[arg(long, default_value_t = 500)]
    samples_per_shard: usize,
    /// Worker threads (default: every core)
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs `percept import <format>`.
pub fn run_import(format: ImportFormat) -> Result<()> {
    let split = |s: &str| -> Result<Split> {
        s.parse()
            .map_err(|_| anyhow::anyhow!("--split {s:?}: use train or val"))
    };
    let (source, common): (Box<dyn Source>, ImportArgs) = match format {
        ImportFormat::Bdd100k {
            images,
            labels,
            drivable,
            lanes,
            lane_categories,
            split: s,
            common,
        } => {
            let lane_categories = if lane_categories.is_empty() {
                default_lane_lines()
            } else {
                lane_categories
                    .iter()
                    .map(|c| c.trim().parse::<LaneCategory>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("--lane-categories: {e}"))?
            };
            let source = Bdd100kSource::new(Bdd100kOptions {
                images,
                labels,
                drivable,
                lanes,
                split: split(&s)?,
                lane_categories,
            })
            .map_err(anyhow::Error::msg)?;
            (Box::new(source), common)
        }
        ImportFormat::Yolop { root, common } => {
            let source = YolopSource::new(YolopOptions { root }).map_err(anyhow::Error::msg)?;
            (Box::new(source), common)
        }
        ImportFormat::Kitti {
            images,
            labels,
            split: s,
            common,
        } => {
            let source = KittiSource::new(KittiOptions {
                images,
                labels,
                split: split(&s)?,
            })
            .map_err(anyhow::Error::msg)?;
            (Box::new(source), common)
        }
    };
    let format = source.format();
    let class_map = match &common.class_map {
        Some(path) => ClassMap::load(path).map_err(anyhow::Error::msg)?,
        None => ClassMap::builtin(format).context("no built-in class map")?,
    };
    if let Some(threads) = common.threads {
        if threads == 0 {
            bail!("--threads 0: give at least 1, or leave it out to use every core");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("--threads")?;
    }
    let options = ImportOptions {
        name: common
            .name
            .unwrap_or_else(|| format!("{format}-{}", common.region.to_lowercase())),
        region: common.region,
        out: common.out,
        class_map,
        unmapped: common
            .unmapped
            .parse::<UnmappedPolicy>()
            .map_err(|e| anyhow::anyhow!("--unmapped: {e}"))?,
        samples_per_shard: common.samples_per_shard,
        val_fraction: common.val_fraction,
    };
    let bar = ImportBar::new()?;
    let summary = import(source.as_ref(), &options, &bar);
    bar.bar.finish_and_clear();
    print_summary(&summary?);
    Ok(())
}

/// A progress bar that also carries the Ctrl-C flag.
struct ImportBar {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
}

impl ImportBar {
    fn new() -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        ctrlc::set_handler(move || {
            if flag.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: stop now; the finished blocks are kept all the same.
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupt: finishing the current block, then stopping (Ctrl-C again to stop \
                 at once)"
            );
        })
        .context("cannot install the Ctrl-C handler")?;
        let bar = progress(0, "import");
        bar.set_message("scanning labels");
        Ok(ImportBar { bar, stop })
    }
}

impl ImportProgress for ImportBar {
    fn scanned(&self, frames: usize) {
        self.bar.set_prefix("scan");
        self.bar.set_position(frames as u64);
    }
    fn started(&self, total: usize, done: usize) {
        self.bar.set_prefix("import");
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        self.bar.reset_eta();
        if done > 0 {
            self.bar.println(format!(
                "resuming: {done} of {total} records were imported before"
            ));
        }
    }
    fn advanced(&self) {
        self.bar.inc(1);
    }
    fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// How many skipped records the terminal shows; the report has them all.
const SHOWN_SKIPS: usize = 10;

fn print_summary(s: &ImportSummary) {
    let r = &s.report;
    let imported: Vec<String> = r
        .imported
        .iter()
        .map(|(split, n)| format!("{n} {split}"))
        .collect();
    let total: usize = r.imported.values().sum();
    println!(
        "imported {} {} into {} (dataset `{}`, region {}, {}, tasks: {})",
        imported.join(" + "),
        if total == 1 { "frame" } else { "frames" },
        s.dir.display(),
        r.dataset,
        r.region,
        plural(r.shards.len(), "shard"),
        r.tasks.names()
    );
    if r.resumed_blocks > 0 {
        println!(
            "  resumed: {} done before the interruption",
            plural(r.resumed_blocks, "block")
        );
    }
    for file in &r.removed_temporaries {
        println!("  removed {file}, left by a write that never finished");
    }
    let objects: Vec<String> = r.objects.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!(
        "  boxes: {}",
        if objects.is_empty() {
            "none".into()
        } else {
            objects.join(", ")
        }
    );
    println!("  ignore regions: {}", r.ignore_regions);
    for (reason, n) in &r.dropped_objects {
        println!("  dropped objects: {n} x {reason}");
    }
    if !r.skipped.is_empty() {
        println!("  skipped records: {}", r.skipped.len());
        for k in r.skipped.iter().take(SHOWN_SKIPS) {
            let record = k
                .record
                .as_deref()
                .map_or(String::new(), |r| format!(" ({r})"));
            println!("    {}{record}: {}", k.file.display(), k.reason);
        }
        if r.skipped.len() > SHOWN_SKIPS {
            println!(
                "    ... {} more in the report",
                r.skipped.len() - SHOWN_SKIPS
            );
        }
    }
    println!("  report: {}", s.report_path.display());
    println!("  manifest: {}", s.manifest.hash());
}
