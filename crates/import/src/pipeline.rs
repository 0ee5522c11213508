//! The import pipeline: any [`Source`] to a percept dataset directory (shards + sealed
//! manifest), streaming, in parallel, resumable.
//!
//! 1. **Scan**: one pass over the source's labels (no pixels). Counts frames, finds every
//!    category the class map does not name and, under [`UnmappedPolicy::Error`], stops before
//!    anything is written, listing them all with their counts. The scan's fingerprint (blake3
//!    over every frame's labels and every skipped record) identifies the source for resume.
//! 2. **Import**: the frames are cut into blocks of `samples_per_shard` consecutive source
//!    records; block `b` becomes `train-<b>.shard` and/or `val-<b>.shard`. Within a block,
//!    frames are loaded, mapped, clipped and encoded on rayon threads, a few dozen at a time
//!    (memory stays flat however large the dataset), and appended in source order.
//! 3. After each block, `import.state.json` in the output directory records the finished
//!    shards, skipped records and counts (written atomically). An interrupted import (a crash,
//!    Ctrl-C, [`ImportProgress::should_stop`]) resumes from the first unfinished block when run
//!    again with the same source and options; different options or changed labels are refused,
//!    naming the difference. Finished shards are verified against their hashes on resume.
//! 4. At the end the manifest is written (or extended, when adding a split to an existing
//!    dataset of the same name, region, classes and tasks), then the report
//!    `import-report-<splits>.json`, and the state file is removed.
//!
//! Per object: the class map gives a class, an ignore region or a drop; the box is clipped to
//! the image (shards hold boxes exactly inside their image), and a box with nothing left is
//! dropped and counted. Every skipped record (malformed label, unreadable image or mask, a
//! mask of the wrong size) is reported with its file and reason; nothing is skipped silently.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use image::GrayImage;
use percept_data::atomic_file::{is_temporary, remove_temporaries};
use percept_data::{
    is_region_code, BoxLabel, DataError, EncodedRecord, IgnoreRegion, ImportRecord, LabelledTasks,
    Manifest, Sample, ShardEntry, ShardReader, ShardWriter, Split, TrafficSide, MANIFEST_FILE,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::class_map::{ClassMap, Target, UnmappedPolicy};
use crate::source::{Frame, FrameItem, SkippedRecord, Source};

/// The resume journal in the output directory while an import runs.
pub const STATE_FILE: &str = "import.state.json";
const STATE_VERSION: u32 = 1;
/// Frames loaded and encoded at once: enough to keep every core busy, few enough that memory
/// stays at a few dozen decoded frames.
const CHUNK_PER_THREAD: usize = 4;

/// Options of [`import`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Dataset directory to write (created if missing).
    pub out: PathBuf,
    /// Dataset name in the manifest.
    pub name: String,
    /// Region of collection (ISO 3166-1 alpha-2): the manifest's region and home-only policy,
    /// and the frames' traffic side.
    pub region: String,
    pub class_map: ClassMap,
    pub unmapped: UnmappedPolicy,
    /// Source records per block, hence at most this many samples per shard.
    pub samples_per_shard: usize,
    /// When set, this fraction of frames goes to `val` and the rest to `train`, chosen by a
    /// hash of the frame id (the same on every run), instead of the split the source gives.
    pub val_fraction: Option<f64>,
}

/// Progress of an import, reported from the pipeline (possibly from several threads).
pub trait ImportProgress: Sync {
    /// The scan has read `frames` records so far.
    fn scanned(&self, _frames: usize) {}
    /// The import starts: `total` records, of which `done` are in blocks finished earlier.
    fn started(&self, _total: usize, _done: usize) {}
    /// One more record is done (imported or skipped).
    fn advanced(&self) {}
    /// Checked before each block: `true` stops the import cleanly (resumable).
    fn should_stop(&self) -> bool {
        false
    }
}

/// No progress reporting.
pub struct Quiet;
impl ImportProgress for Quiet {}

/// An unmapped category found by the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmappedCategory {
    pub category: String,
    /// Objects of this category.
    pub objects: usize,
    /// Where it first appears (a frame's origin).
    pub first_seen: String,
}

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Options(String),
    #[error("{0}")]
    Source(String),
    #[error("{}", unmapped_message(.class_map, .categories))]
    Unmapped {
        class_map: String,
        categories: Vec<UnmappedCategory>,
    },
    #[error("{0}")]
    Resume(String),
    #[error(
        "import interrupted after {done} of {total} blocks; run the same command again to resume \
         (progress is kept in {})",
        .state.display()
    )]
    Interrupted {
        done: usize,
        total: usize,
        state: PathBuf,
    },
    #[error(transparent)]
    Data(#[from] DataError),
}

fn unmapped_message(class_map: &str, categories: &[UnmappedCategory]) -> String {
    let list: Vec<String> = categories
        .iter()
        .map(|c| {
            format!(
                "  `{}`: {} (first in {})",
                c.category,
                plural(c.objects, "object"),
                c.first_seen
            )
        })
        .collect();
    format!(
        "{} not in {class_map}:\n{}\nadd them to the class map ([map], ignore or \
         drop) and pass it with --class-map, or pass --unmapped drop to drop them with a count",
        match categories.len() {
            1 => "1 category is".to_string(),
            n => format!("{n} categories are"),
        },
        list.join("\n")
    )
}

/// `1 object`, `2 objects`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// What an import did; also written to `import-report-<splits>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    pub format: String,
    pub dataset: String,
    pub region: String,
    /// The class map's origin.
    pub class_map: String,
    pub tasks: LabelledTasks,
    /// Records the source yielded (frames and skipped records).
    pub records: usize,
    /// Samples written, per split.
    pub imported: BTreeMap<Split, usize>,
    /// Boxes written, per class.
    pub objects: BTreeMap<String, usize>,
    pub ignore_regions: usize,
    /// Objects not written, per reason (dropped by the class map, unmapped, outside the image).
    pub dropped_objects: BTreeMap<String, usize>,
    /// Frames per condition value: `weather`, `time_of_day`, `scene` -> value -> frames.
    pub conditions: BTreeMap<String, BTreeMap<String, usize>>,
    /// Every record not imported, with its file and reason.
    pub skipped: Vec<SkippedRecord>,
    /// Shards written by this import.
    pub shards: Vec<String>,
    /// Blocks found finished from an earlier, interrupted run.
    pub resumed_blocks: usize,
    /// Temporary files of writes a killed import never finished, removed at the start (they
    /// were never data: the files they were to replace are as they were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_temporaries: Vec<String>,
}

/// The result of [`import`].
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The dataset directory.
    pub dir: PathBuf,
    pub report: ImportReport,
    pub report_path: PathBuf,
    pub manifest: Manifest,
}

/// The resume journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportState {
    version: u32,
    /// The options and source identity the import began with.
    settings: BTreeMap<String, String>,
    blocks_total: usize,
    blocks_done: usize,
    shards: Vec<ShardEntry>,
    counts: Counts,
}

/// What the finished blocks produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counts {
    imported: BTreeMap<Split, usize>,
    objects: BTreeMap<String, usize>,
    ignore_regions: usize,
    dropped_objects: BTreeMap<String, usize>,
    conditions: BTreeMap<String, BTreeMap<String, usize>>,
    skipped: Vec<SkippedRecord>,
}

impl Counts {
    fn add_frame(&mut self, split: Split, stats: FrameStats, classes: &[String]) {
        *self.imported.entry(split).or_default() += 1;
        for (class, n) in stats.objects {
            *self
                .objects
                .entry(classes[class as usize].clone())
                .or_default() += n;
        }
        self.ignore_regions += stats.ignore_regions;
        for (reason, n) in stats.dropped {
            *self.dropped_objects.entry(reason).or_default() += n;
        }
        for (key, value) in stats.conditions {
            *self
                .conditions
                .entry(key.to_string())
                .or_default()
                .entry(value)
                .or_default() += 1;
        }
    }
}

/// Per-frame counts, merged in source order.
struct FrameStats {
    objects: BTreeMap<u16, usize>,
    ignore_regions: usize,
    dropped: BTreeMap<String, usize>,
    conditions: [(&'static str, String); 3],
}

/// What the scan learned.
struct Scan {
    records: usize,
    frames: BTreeMap<Split, usize>,
    fingerprint: String,
    /// The first frame whose id the dataset already has, as a refusal.
    duplicate: Option<String>,
}

/// Imports `source` into `opts.out`. See the module docs for the steps and guarantees.
pub fn import(
    source: &dyn Source,
    opts: &ImportOptions,
    progress: &dyn ImportProgress,
) -> Result<ImportSummary, ImportError> {
    validate_options(opts)?;
    // Refusals that need no scan come first: a scan of BDD100K takes a while.
    let existing = prepare_output(source, opts)?;
    // The directory is this import's (new, or a percept dataset): leftovers of a killed
    // import go before anything is read from it.
    let removed_temporaries: Vec<String> = remove_temporaries(&opts.out)?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let state_path = opts.out.join(STATE_FILE);
    let prior = load_state(&state_path)?;
    // Ids already in the dataset, except those of shards this import wrote before it was
    // interrupted (a crash can leave them listed in the manifest already).
    let own: HashSet<&str> = prior
        .iter()
        .flat_map(|s| s.shards.iter().map(|e| e.file.as_str()))
        .collect();
    let existing_ids = match &existing {
        Some(manifest) => sample_ids(manifest, &opts.out, &own)?,
        None => HashSet::new(),
    };
    let scan = scan(source, opts, existing_ids, progress)?;
    if let Some(manifest) = &existing {
        refuse_existing_splits(manifest, opts, &scan)?;
    }
    if let Some(duplicate) = &scan.duplicate {
        return Err(ImportError::Source(duplicate.clone()));
    }
    if scan.frames.values().all(|&n| n == 0) {
        return Err(ImportError::Source(format!(
            "the {} source holds no frames to import ({} records, all skipped or none at all)",
            source.format(),
            scan.records
        )));
    }
    let settings = settings(source, opts, &scan);
    let blocks_total = scan.records.div_ceil(opts.samples_per_shard);
    let mut state = match prior {
        Some(state) => resume_state(state, &settings, opts)?,
        None => ImportState {
            version: STATE_VERSION,
            settings,
            blocks_total,
            blocks_done: 0,
            shards: Vec::new(),
            counts: Counts::default(),
        },
    };
    save_json(&state_path, &state)?;
    let resumed_blocks = state.blocks_done;

    progress.started(
        scan.records,
        (state.blocks_done * opts.samples_per_shard).min(scan.records),
    );
    let mut frames = source.frames().map_err(ImportError::Source)?;
    let classes = opts.class_map.classes().to_vec();
    for block in 0..blocks_total {
        let items: Vec<FrameItem> = frames.by_ref().take(opts.samples_per_shard).collect();
        if block < state.blocks_done {
            continue;
        }
        if progress.should_stop() {
            return Err(ImportError::Interrupted {
                done: state.blocks_done,
                total: blocks_total,
                state: state_path,
            });
        }
        let (shards, counts) = import_block(source, opts, block, items, progress)?;
        state.shards.extend(shards);
        merge_counts(&mut state.counts, counts, &classes);
        state.blocks_done = block + 1;
        save_json(&state_path, &state)?;
    }
    drop(frames);

    let record = ImportRecord {
        tool: format!(
            "percept-import {} {}",
            env!("CARGO_PKG_VERSION"),
            source.format()
        ),
        splits: state.counts.imported.keys().copied().collect(),
        class_map: opts.class_map.hash().to_string(),
        labels: scan.fingerprint.clone(),
        records: scan.records,
        imported: state.counts.imported.values().sum(),
        skipped: state.counts.skipped.len(),
    };
    let manifest = write_manifest(source, opts, existing, &state.shards, record)?;
    let splits: Vec<&str> = Split::ALL
        .iter()
        .filter(|s| state.counts.imported.get(s).is_some_and(|&n| n > 0))
        .map(|s| s.as_str())
        .collect();
    let report_path = opts
        .out
        .join(format!("import-report-{}.json", splits.join("+")));
    let counts = state.counts;
    let report = ImportReport {
        format: source.format().to_string(),
        dataset: opts.name.clone(),
        region: opts.region.clone(),
        class_map: opts.class_map.origin().to_string(),
        tasks: source.tasks(),
        records: scan.records,
        imported: counts.imported,
        objects: counts.objects,
        ignore_regions: counts.ignore_regions,
        dropped_objects: counts.dropped_objects,
        conditions: counts.conditions,
        skipped: counts.skipped,
        shards: state.shards.iter().map(|s| s.file.clone()).collect(),
        resumed_blocks,
        removed_temporaries,
    };
    save_json(&report_path, &report)?;
    std::fs::remove_file(&state_path).map_err(|e| DataError::io(&state_path, e))?;
    Ok(ImportSummary {
        dir: opts.out.clone(),
        report,
        report_path,
        manifest,
    })
}

fn validate_options(opts: &ImportOptions) -> Result<(), ImportError> {
    let bad = |m: String| Err(ImportError::Options(m));
    if opts.name.trim().is_empty() {
        return bad("--name is empty; give the dataset a name".into());
    }
    if !is_region_code(&opts.region) {
        return bad(format!(
            "--region `{}` is not an ISO 3166-1 alpha-2 code (two uppercase letters such as `DE`)",
            opts.region
        ));
    }
    if opts.samples_per_shard == 0 {
        return bad("--samples-per-shard is 0; expected at least 1".into());
    }
    if let Some(f) = opts.val_fraction {
        if !(f > 0.0 && f < 1.0) {
            return bad(format!(
                "--val-fraction is {f}; expected a fraction strictly between 0 and 1"
            ));
        }
    }
    Ok(())
}

/// The split a frame goes to.
fn split_of(frame: &Frame, val_fraction: Option<f64>) -> Split {
    let Some(fraction) = val_fraction else {
        return frame.split;
    };
    let hash = blake3::hash(frame.id.as_bytes());
    let h = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
    // h / 2^64 < fraction, in exact integer arithmetic for every fraction representable here.
    if (h as f64) < fraction * 2f64.powi(64) {
        Split::Val
    } else {
        Split::Train
    }
}

/// The ids of every sample of a dataset (its shards' label blocks; no pixels are decoded).
fn sample_ids(
    manifest: &Manifest,
    dir: &Path,
    except: &HashSet<&str>,
) -> Result<HashSet<String>, ImportError> {
    let mut ids = HashSet::new();
    for shard in manifest
        .shards
        .iter()
        .filter(|s| !except.contains(s.file.as_str()))
    {
        let reader = ShardReader::open(dir.join(&shard.file))?;
        for i in 0..reader.len() {
            ids.insert(reader.sample_id(i)?);
        }
    }
    Ok(ids)
}

/// Scans the source's labels; `ids` holds the ids the dataset already has.
fn scan(
    source: &dyn Source,
    opts: &ImportOptions,
    mut ids: HashSet<String>,
    progress: &dyn ImportProgress,
) -> Result<Scan, ImportError> {
    let mut hasher = blake3::Hasher::new();
    let mut records = 0usize;
    let mut frames = BTreeMap::new();
    let mut duplicate = None;
    let mut unmapped: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for item in source.frames().map_err(ImportError::Source)? {
        records += 1;
        if records.is_multiple_of(256) {
            progress.scanned(records);
        }
        let json = match &item {
            Ok(frame) => serde_json::to_vec(frame),
            Err(skip) => serde_json::to_vec(skip),
        }
        .expect("frames serialise");
        hasher.update(&(json.len() as u64).to_le_bytes());
        hasher.update(&json);
        let Ok(frame) = item else { continue };
        if !ids.insert(frame.id.clone()) && duplicate.is_none() {
            duplicate = Some(format!(
                "frame id `{}` appears twice in the dataset (again in {}); sample ids must be \
                 unique within a dataset, across its splits",
                frame.id, frame.origin
            ));
        }
        *frames
            .entry(split_of(&frame, opts.val_fraction))
            .or_insert(0) += 1;
        for object in &frame.objects {
            if opts.class_map.resolve(&object.category).is_none() {
                let entry = unmapped
                    .entry(object.category.clone())
                    .or_insert_with(|| (0, frame.origin.clone()));
                entry.0 += 1;
            }
        }
    }
    progress.scanned(records);
    if opts.unmapped == UnmappedPolicy::Error && !unmapped.is_empty() {
        return Err(ImportError::Unmapped {
            class_map: opts.class_map.origin().to_string(),
            categories: unmapped
                .into_iter()
                .map(|(category, (objects, first_seen))| UnmappedCategory {
                    category,
                    objects,
                    first_seen,
                })
                .collect(),
        });
    }
    Ok(Scan {
        records,
        frames,
        fingerprint: hasher.finalize().to_hex().to_string(),
        duplicate,
    })
}

/// What identifies an import for resume: every option that changes the output, and the
/// source's fingerprint.
fn settings(source: &dyn Source, opts: &ImportOptions, scan: &Scan) -> BTreeMap<String, String> {
    let mut settings: BTreeMap<String, String> = source.settings().into_iter().collect();
    settings.extend([
        ("format".into(), source.format().to_string()),
        ("name".into(), opts.name.clone()),
        ("region".into(), opts.region.clone()),
        ("class map".into(), opts.class_map.hash().to_string()),
        (
            "unmapped".into(),
            format!("{:?}", opts.unmapped).to_lowercase(),
        ),
        (
            "samples per shard".into(),
            opts.samples_per_shard.to_string(),
        ),
        (
            "val fraction".into(),
            opts.val_fraction.map_or("none".into(), |f| f.to_string()),
        ),
        ("tasks".into(), source.tasks().names()),
        ("source labels".into(), scan.fingerprint.clone()),
    ]);
    settings
}

/// Checks the output directory and returns the dataset it already holds, if any.
fn prepare_output(
    source: &dyn Source,
    opts: &ImportOptions,
) -> Result<Option<Manifest>, ImportError> {
    let out = &opts.out;
    std::fs::create_dir_all(out).map_err(|e| DataError::io(out, e))?;
    let manifest_path = out.join(MANIFEST_FILE);
    let in_progress = out.join(STATE_FILE).exists();
    if !manifest_path.exists() {
        if !in_progress {
            // A temporary file left by a killed writer (e.g. of the first state file) is not
            // data; an entry that cannot be read is counted as data.
            let holds_data = std::fs::read_dir(out)
                .map_err(|e| DataError::io(out, e))?
                .any(|entry| match entry {
                    Ok(entry) => !is_temporary(&entry.file_name().to_string_lossy()),
                    Err(_) => true,
                });
            if holds_data {
                return Err(ImportError::Options(format!(
                    "--out {} is not empty and holds no percept dataset; choose an empty or new \
                     directory",
                    out.display()
                )));
            }
        }
        return Ok(None);
    }
    let manifest = Manifest::load(&manifest_path)?;
    let mismatch = |what: &str, have: String, want: String| {
        Err(ImportError::Options(format!(
            "{} already holds dataset `{}` whose {what} is {have}, but this import's is {want}; \
             a dataset is extended only by an import with the same name, region, classes and \
             tasks. Import into a new directory",
            out.display(),
            manifest.name
        )))
    };
    if manifest.name != opts.name {
        return mismatch("name", manifest.name.clone(), opts.name.clone());
    }
    if manifest.region != opts.region {
        return mismatch("region", manifest.region.clone(), opts.region.clone());
    }
    if manifest.classes != opts.class_map.classes() {
        return mismatch(
            "class list",
            manifest.classes.join(", "),
            opts.class_map.classes().join(", "),
        );
    }
    if manifest.tasks != source.tasks() {
        return mismatch(
            "labelled tasks",
            manifest.tasks.names(),
            source.tasks().names(),
        );
    }
    Ok(Some(manifest))
}

/// Refuses to add a split the dataset already has (unless an interrupted import of it is
/// being resumed).
fn refuse_existing_splits(
    manifest: &Manifest,
    opts: &ImportOptions,
    scan: &Scan,
) -> Result<(), ImportError> {
    if opts.out.join(STATE_FILE).exists() {
        return Ok(());
    }
    for (split, &n) in &scan.frames {
        if n > 0 && manifest.samples_of(*split) > 0 {
            return Err(ImportError::Options(format!(
                "{} already holds the {split} split of dataset `{}`; import into a new \
                 directory, or import the other split",
                opts.out.display(),
                manifest.name
            )));
        }
    }
    Ok(())
}

fn load_state(path: &Path) -> Result<Option<ImportState>, ImportError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DataError::io(path, e).into()),
    };
    let state: ImportState = serde_json::from_slice(&bytes).map_err(|e| {
        ImportError::Resume(format!(
            "{} is not a valid import state ({e}); delete it and the shards beside it to start \
             over",
            path.display()
        ))
    })?;
    if state.version != STATE_VERSION {
        return Err(ImportError::Resume(format!(
            "{} has state version {}; this build resumes version {STATE_VERSION}. Delete it and \
             the shards beside it to start over",
            path.display(),
            state.version
        )));
    }
    Ok(Some(state))
}

/// Checks that an interrupted import can go on with these settings, and that its finished
/// shards are intact.
fn resume_state(
    state: ImportState,
    settings: &BTreeMap<String, String>,
    opts: &ImportOptions,
) -> Result<ImportState, ImportError> {
    let state_path = opts.out.join(STATE_FILE);
    let changed: Vec<String> = settings
        .iter()
        .filter(|(k, v)| state.settings.get(*k) != Some(v))
        .map(|(k, v)| {
            let was = state.settings.get(k).map_or("(unset)", String::as_str);
            if k == "source labels" {
                "the source's labels changed (different frames or labels)".to_string()
            } else {
                format!("{k} was `{was}`, now `{v}`")
            }
        })
        .collect();
    if !changed.is_empty() {
        return Err(ImportError::Resume(format!(
            "an interrupted import in {} began with other settings: {}. Rerun it with the \
             original settings to resume, or delete {} and its shards to start over",
            opts.out.display(),
            changed.join("; "),
            state_path.display()
        )));
    }
    for shard in &state.shards {
        let path = opts.out.join(&shard.file);
        let mut hasher = blake3::Hasher::new();
        let hashed = File::open(&path).and_then(|f| hasher.update_reader(f).map(|_| ()));
        let hash = hashed.map(|()| hasher.finalize().to_hex().to_string());
        if hash.as_deref().ok() != Some(shard.hash.as_str()) {
            return Err(ImportError::Resume(format!(
                "{} was finished by the interrupted import but is now missing or changed; \
                 delete {} and the shards beside it to start over",
                path.display(),
                state_path.display()
            )));
        }
    }
    Ok(state)
}

/// Imports one block of source records into at most one shard per split.
fn import_block(
    source: &dyn Source,
    opts: &ImportOptions,
    block: usize,
    items: Vec<FrameItem>,
    progress: &dyn ImportProgress,
) -> Result<(Vec<ShardEntry>, BlockCounts), ImportError> {
    let mut writers: BTreeMap<Split, ShardWriter> = BTreeMap::new();
    let mut counts = BlockCounts::default();
    let chunk = (rayon::current_num_threads() * CHUNK_PER_THREAD).max(1);
    let mut frames = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(frame) => frames.push(frame),
            Err(skip) => {
                counts.skipped.push(skip);
                progress.advanced();
            }
        }
    }
    for part in frames.chunks(chunk) {
        let built: Vec<_> = part
            .par_iter()
            .map(|frame| {
                let split = split_of(frame, opts.val_fraction);
                build_record(source, frame, opts).map(|(r, stats)| (split, r, stats))
            })
            .collect();
        for result in built {
            match result {
                Ok((split, record, stats)) => {
                    let writer = match writers.entry(split) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            let path = opts.out.join(format!("{split}-{block:05}.shard"));
                            e.insert(ShardWriter::create(&path)?)
                        }
                    };
                    writer.push_encoded(&record)?;
                    counts.frames.push((split, stats));
                }
                Err(skip) => counts.skipped.push(skip),
            }
            progress.advanced();
        }
    }
    let mut shards = Vec::new();
    for (split, writer) in writers {
        let info = writer.finish()?;
        shards.push(ShardEntry {
            file: info.file_name,
            split,
            samples: info.samples,
            hash: info.hash,
            sample_checksums: info.sample_checksums,
        });
    }
    Ok((shards, counts))
}

#[derive(Default)]
struct BlockCounts {
    frames: Vec<(Split, FrameStats)>,
    skipped: Vec<SkippedRecord>,
}

fn merge_counts(total: &mut Counts, block: BlockCounts, classes: &[String]) {
    for (split, stats) in block.frames {
        total.add_frame(split, stats, classes);
    }
    total.skipped.extend(block.skipped);
}

/// Loads, maps, clips and encodes one frame.
fn build_record(
    source: &dyn Source,
    frame: &Frame,
    opts: &ImportOptions,
) -> Result<(EncodedRecord, FrameStats), SkippedRecord> {
    let pixels = source.load(frame)?;
    let (w, h) = pixels.image.dimensions();
    let skip = |file: &Path, reason: String| SkippedRecord {
        file: file.to_path_buf(),
        record: Some(frame.id.clone()),
        reason,
    };
    let mask = |mask: Option<GrayImage>, file: &Option<PathBuf>, what: &str| match mask {
        None => Ok(GrayImage::new(w, h)),
        Some(m) if m.dimensions() == (w, h) => Ok(m),
        Some(m) => Err(skip(
            file.as_deref().unwrap_or(&frame.image),
            format!(
                "the {what} is {}x{} but its image is {w}x{h}",
                m.width(),
                m.height()
            ),
        )),
    };
    let drivable = mask(pixels.drivable, &frame.drivable, "drivable-area mask")?;
    let lanes = mask(pixels.lanes, &frame.lanes, "lane mask")?;

    let mut stats = FrameStats {
        objects: BTreeMap::new(),
        ignore_regions: 0,
        dropped: BTreeMap::new(),
        conditions: [
            ("weather", frame.conditions.weather.clone()),
            ("time_of_day", frame.conditions.time_of_day.clone()),
            ("scene", frame.conditions.scene.clone()),
        ],
    };
    let mut boxes = Vec::new();
    let mut ignore = Vec::new();
    let mut drop = |reason: String| *stats.dropped.entry(reason).or_default() += 1;
    for object in &frame.objects {
        let target = opts.class_map.resolve(&object.category);
        let Some(target) = target else {
            drop(format!("unmapped category `{}`", object.category));
            continue;
        };
        if target == Target::Drop {
            drop(format!("`{}` dropped by the class map", object.category));
            continue;
        }
        let [bx1, by1, bx2, by2] = object.bbox;
        if bx2 <= bx1 || by2 <= by1 {
            drop("empty box (zero width or height)".to_string());
            continue;
        }
        let Some([x1, y1, x2, y2]) = clip(object.bbox, w, h) else {
            drop("box outside the image".to_string());
            continue;
        };
        match target {
            Target::Class(class) => {
                boxes.push(BoxLabel {
                    class,
                    x1,
                    y1,
                    x2,
                    y2,
                });
                *stats.objects.entry(class).or_default() += 1;
            }
            Target::Ignore => {
                ignore.push(IgnoreRegion { x1, y1, x2, y2 });
                stats.ignore_regions += 1;
            }
            Target::Drop => unreachable!("handled above"),
        }
    }
    let sample = Sample {
        id: frame.id.clone(),
        image: pixels.image,
        boxes,
        ignore,
        drivable,
        lanes,
        conditions: frame.conditions.clone(),
        traffic_side: TrafficSide::of_region(&opts.region),
    };
    let record = match pixels.jpeg {
        Some(jpeg) => EncodedRecord::encode_with_jpeg(&sample, jpeg),
        None => EncodedRecord::encode(&sample),
    }
    .map_err(|e| skip(&frame.image, e.to_string()))?;
    Ok((record, stats))
}

/// `bbox` clipped to a `w` x `h` image; `None` when nothing of it is left.
fn clip([x1, y1, x2, y2]: [f32; 4], w: u32, h: u32) -> Option<[f32; 4]> {
    let (wf, hf) = (w as f32, h as f32);
    let b = [
        x1.clamp(0.0, wf),
        y1.clamp(0.0, hf),
        x2.clamp(0.0, wf),
        y2.clamp(0.0, hf),
    ];
    (b[0] < b[2] && b[1] < b[3]).then_some(b)
}

/// Writes the dataset's manifest: `existing` extended with `shards`, or a new one.
fn write_manifest(
    source: &dyn Source,
    opts: &ImportOptions,
    existing: Option<Manifest>,
    shards: &[ShardEntry],
    record: ImportRecord,
) -> Result<Manifest, ImportError> {
    let mut manifest = match existing {
        Some(m) => m,
        None => {
            let mut m = Manifest::new(&opts.name, &opts.region, opts.class_map.classes().to_vec())?;
            m.tasks = source.tasks();
            m
        }
    };
    // A crash after the manifest was written but before the state was removed leaves the
    // shards already listed: add only what is missing.
    for shard in shards {
        if !manifest.shards.contains(shard) {
            manifest.shards.push(shard.clone());
        }
    }
    manifest
        .shards
        .sort_by(|a, b| (a.split, &a.file).cmp(&(b.split, &b.file)));
    if !manifest.imports.contains(&record) {
        manifest.imports.push(record);
    }
    manifest.save(opts.out.join(MANIFEST_FILE))?;
    Ok(manifest)
}

/// Writes JSON atomically ([`percept_data::write_atomic`]: unique temp file, fsync, rename,
/// directory fsync).
fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImportError> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("import state serialises");
    bytes.push(b'\n');
    percept_data::write_atomic(path, &bytes).map_err(ImportError::Data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Object, Pixels};
    use image::RgbImage;
    use percept_data::{Conditions, LabelledTasks};

    /// Frames held in memory, 16x8 px each, detection labels only.
    struct MemorySource(Vec<Frame>);

    impl Source for MemorySource {
        fn format(&self) -> &'static str {
            "memory"
        }
        fn tasks(&self) -> LabelledTasks {
            LabelledTasks::DETECTION_ONLY
        }
        fn frames(&self) -> Result<Box<dyn Iterator<Item = FrameItem> + Send + '_>, String> {
            Ok(Box::new(self.0.iter().cloned().map(Ok)))
        }
        fn load(&self, _: &Frame) -> Result<Pixels, SkippedRecord> {
            Ok(Pixels {
                image: RgbImage::new(16, 8),
                jpeg: None,
                drivable: None,
                lanes: None,
            })
        }
    }

    fn frame(id: &str, objects: &[(&str, [f32; 4])]) -> Frame {
        Frame {
            id: id.into(),
            split: Split::Train,
            origin: format!("{id}.txt"),
            objects: objects
                .iter()
                .map(|&(category, bbox)| Object::new(category, bbox))
                .collect(),
            conditions: Conditions::new("clear", "night", "highway"),
            image: PathBuf::from(format!("{id}.png")),
            drivable: None,
            lanes: None,
        }
    }

    #[test]
    fn objects_are_mapped_clipped_ignored_and_dropped_with_reasons() {
        let source = MemorySource(vec![
            frame(
                "a",
                &[
                    ("car", [1.0, 2.0, 5.5, 6.0]),
                    ("car", [3.0, 1.0, 3.0, 4.0]),
                    ("car", [20.0, 1.0, 30.0, 4.0]),
                    ("crowd", [-4.0, 0.0, 4.0, 10.0]),
                    ("misc", [0.0, 0.0, 2.0, 2.0]),
                    ("zzz", [0.0, 0.0, 2.0, 2.0]),
                ],
            ),
            frame("b", &[("person", [10.0, 4.0, 18.0, 9.0])]),
        ]);
        let class_map = ClassMap::parse(
            "classes = [\"car\", \"person\"]\nignore = [\"crowd\"]\ndrop = [\"misc\"]\n\
             [map]\ncar = \"car\"\nperson = \"person\"\n",
            "test map",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = ImportOptions {
            out: dir.path().join("out"),
            name: "mem".into(),
            region: "GB".into(),
            class_map,
            unmapped: UnmappedPolicy::Error,
            samples_per_shard: 10,
            val_fraction: None,
        };
        let err = import(&source, &opts, &Quiet).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("1 category is not in test map:\n  `zzz`: 1 object (first in a.txt)"),
            "{err}"
        );

        let opts = ImportOptions {
            unmapped: UnmappedPolicy::Drop,
            ..opts
        };
        let summary = import(&source, &opts, &Quiet).unwrap();
        let r = &summary.report;
        assert_eq!(
            r.dropped_objects,
            BTreeMap::from([
                ("`misc` dropped by the class map".to_string(), 1),
                ("box outside the image".to_string(), 1),
                ("empty box (zero width or height)".to_string(), 1),
                ("unmapped category `zzz`".to_string(), 1),
            ])
        );
        assert_eq!(
            r.objects,
            BTreeMap::from([("car".to_string(), 1), ("person".to_string(), 1)])
        );
        assert_eq!(r.ignore_regions, 1);
        assert_eq!(summary.manifest.tasks, source.tasks());
        assert_eq!(summary.manifest.imports.len(), 1);
        assert_eq!(summary.manifest.imports[0].imported, 2);

        let reader = ShardReader::open(opts.out.join("train-00000.shard")).unwrap();
        let a = reader.read(0).unwrap();
        let bx = |class, x1, y1, x2, y2| BoxLabel {
            class,
            x1,
            y1,
            x2,
            y2,
        };
        assert_eq!(a.boxes, vec![bx(0, 1.0, 2.0, 5.5, 6.0)]);
        assert_eq!(
            a.ignore,
            vec![IgnoreRegion {
                x1: 0.0,
                y1: 0.0,
                x2: 4.0,
                y2: 8.0
            }]
        );
        assert_eq!(a.traffic_side, TrafficSide::Left);
        assert!(a.drivable.iter().all(|&v| v == 0));
        let b = reader.read(1).unwrap();
        assert_eq!(b.boxes, vec![bx(1, 10.0, 4.0, 16.0, 8.0)]);
        assert_eq!(b.conditions.time_of_day, "night");
    }

    #[test]
    fn leftover_temporary_files_are_not_data() {
        let source = MemorySource(vec![frame("a", &[("car", [1.0, 2.0, 5.5, 6.0])])]);
        let class_map =
            ClassMap::parse("classes = [\"car\"]\n[map]\ncar = \"car\"\n", "test map").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        // What a process killed while writing its first state file leaves behind.
        let leftover = format!(".{STATE_FILE}.4242.0.tmp");
        std::fs::write(out.join(&leftover), b"{\"ver").unwrap();
        let opts = ImportOptions {
            out: out.clone(),
            name: "mem".into(),
            region: "GB".into(),
            class_map,
            unmapped: UnmappedPolicy::Error,
            samples_per_shard: 10,
            val_fraction: None,
        };
        let summary = import(&source, &opts, &Quiet).unwrap();
        assert_eq!(summary.manifest.imports[0].imported, 1);
        // The leftover was removed at the start, and reported; every file of the import was
        // committed: no temporary file is left.
        assert_eq!(
            summary.report.removed_temporaries,
            [out.join(&leftover).display().to_string()]
        );
        let temporary: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| is_temporary(n))
            .collect();
        assert!(temporary.is_empty(), "{temporary:?}");

        // Anything else still makes the directory non-empty.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("notes.txt"), b"mine").unwrap();
        let opts = ImportOptions { out: other, ..opts };
        let err = import(&source, &opts, &Quiet).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }

    #[test]
    fn clipping_keeps_what_lies_inside() {
        assert_eq!(
            clip([-3.0, 2.5, 70.0, 20.0], 64, 48),
            Some([0.0, 2.5, 64.0, 20.0])
        );
        assert_eq!(clip([64.0, 0.0, 80.0, 10.0], 64, 48), None);
        assert_eq!(clip([10.0, 10.0, 10.0, 20.0], 64, 48), None);
        assert_eq!(
            clip([1.0, 2.0, 3.0, 4.0], 64, 48),
            Some([1.0, 2.0, 3.0, 4.0])
        );
    }
}
