//! Where a run config comes from: a chain of TOML files joined by `extends`, then `--set`
//! overrides, merged into one table that remembers which file or `--set` gave each key; and
//! the resolution of that table into a [`RunConfig`] that reports every problem at once.
//!
//! Merging: a later layer (the file that extends, then each `--set` in order) overrides an
//! earlier one; tables merge key by key, recursively; arrays and scalars are replaced whole.
//!
//! Resolution deserializes the merged table with [`serde_path_to_error`]. On an error it
//! records the problem with its key path and source, repairs the table (an unknown key is
//! removed; a wrong type or a missing required key gets the value of a known-good placeholder
//! config at the same path; a bad entry of a free-form map is removed) and tries again, until
//! the table deserializes. Then [`RunConfig::validate`] checks the values; its problems about
//! keys that were repaired are left out (they would describe the placeholder, not the file).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use percept_data::{AugmentConfig, IntegrityPolicy};
use percept_model::{ConvKernels, LossWeights, ModelSize, Precision, Tasks};
use toml::{Table, Value};

use crate::config::{
    CheckpointConfig, DataConfig, DistillationConfig, EmaConfig, EvalConfig, FinetuneConfig,
    FreezePolicy, InputSize, LoggingConfig, ModelConfig, OptimizerConfig, RunConfig,
    ScheduleConfig, SiteConfig, TrainConfig, ValidationConfig,
};
use crate::TrainError;

/// The top-level key naming a parent config, relative to the file that names it.
pub const EXTENDS_KEY: &str = "extends";

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A config file (as named: the command line's path, or a parent joined to the directory
    /// of the file that extends it).
    File(PathBuf),
    /// A `--set KEY=VALUE` override; holds the argument as given.
    Set(String),
    /// No layer set the key: the schema's default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Set(arg) => write!(f, "--set {arg}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One problem of a config: the key path it is about, where that key came from, and a
/// message that starts with the key path and says what would be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub source: Source,
    /// Dotted key path, e.g. `optimizer.kind`.
    pub key: String,
    /// E.g. `optimizer.kind = "adam": expected one of "adamw", "sgd"`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

/// The text of a [`TrainError::Config`] carrying `problems`: a count, then one problem per
/// line, each indented and prefixed with its source.
pub fn problems_message(problems: &[Problem]) -> String {
    let mut out = format!(
        "{} problem{}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// A merged config table with the source of every key.
#[derive(Debug, Clone)]
pub struct LayeredConfig {
    /// The file named on the command line (errors are reported against it).
    path: PathBuf,
    table: Table,
    /// Layers in the order applied: the chain's files from the root-most parent to `path`,
    /// then each `--set`.
    layers: Vec<Source>,
    /// Dotted key path (tables and leaves) -> index into `layers` of the last layer that set it.
    origin: BTreeMap<String, usize>,
}

/// The most a config file may hold; a run config is a few KB.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config file: a regular file (not a device or pipe such as `/dev/zero` or
/// `/dev/stdin`, which would never end) of at most [`MAX_CONFIG_BYTES`], in UTF-8.
fn read_config_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file; a config is a TOML file",
        ));
    }
    let mut text = String::new();
    let read = file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if read as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB; a run config is a few KB of TOML",
                MAX_CONFIG_BYTES >> 20
            ),
        ));
    }
    Ok(text)
}

impl LayeredConfig {
    /// Reads `path` and the chain of files it extends, then applies `sets` (`KEY=VALUE`, see
    /// [`parse_set`]). Errors: a file that cannot be read (naming the file that extends it) or
    /// parsed, an `extends` cycle (naming every file in it), malformed `--set` arguments.
    pub fn load(path: &Path, sets: &[String]) -> Result<LayeredConfig, TrainError> {
        let text = read_config_file(path).map_err(|e| TrainError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_text(&text, path, sets)
    }

    /// As [`load`](Self::load), with the named file's text given; `path` names it in errors
    /// and its directory anchors a relative `extends`.
    pub fn from_text(
        text: &str,
        path: &Path,
        sets: &[String],
    ) -> Result<LayeredConfig, TrainError> {
        let mut files = Vec::new();
        read_chain(text, path, &mut Vec::new(), &mut files)?;
        let mut layered = LayeredConfig {
            path: path.to_path_buf(),
            table: Table::new(),
            layers: Vec::new(),
            origin: BTreeMap::new(),
        };
        // `files` is child first; apply the root-most parent first.
        for (file, table) in files.into_iter().rev() {
            layered.apply(Source::File(file), table);
        }
        let mut bad = Vec::new();
        let mut parsed = Vec::new();
        for arg in sets {
            match parse_set(arg) {
                Ok(layer) => parsed.push((arg, layer)),
                Err(e) => bad.push(e),
            }
        }
        if !bad.is_empty() {
            // Each names its `--set`; the file is not to blame.
            return Err(TrainError::Set(bad.join("\n")));
        }
        for (arg, layer) in parsed {
            layered.apply(Source::Set(arg.clone()), layer);
        }
        Ok(layered)
    }

    fn apply(&mut self, source: Source, layer: Table) {
        let index = self.layers.len();
        self.layers.push(source);
        merge(&mut self.table, layer, index, "", &mut self.origin);
    }

    /// The merged table, as the layers give it (no defaults filled in, `extends` removed).
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The merged table as TOML text.
    pub fn merged_toml(&self) -> String {
        toml::to_string_pretty(&self.table).expect("a TOML table serialises")
    }

    /// The file named on the command line.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every layer in the order applied: files from the root-most parent to the named file,
    /// then each `--set`.
    pub fn layers(&self) -> &[Source] {
        &self.layers
    }

    /// Where the value at dotted key path `key` came from: the last layer that set it or the
    /// nearest table above it, or [`Source::Default`].
    pub fn source_of(&self, key: &str) -> &Source {
        let mut k = key;
        loop {
            if let Some(&i) = self.origin.get(k) {
                return &self.layers[i];
            }
            match k.rfind('.') {
                Some(dot) => k = &k[..dot],
                None => return &Source::Default,
            }
        }
    }

    /// The run config, or every problem: unknown keys (with the valid keys of their table),
    /// wrong types, missing required keys and invalid values (with what would be valid), each
    /// with its key path and source.
    pub fn resolve(&self) -> Result<RunConfig, Vec<Problem>> {
        let placeholder = Value::try_from(placeholder()).expect("the placeholder serialises");
        let mut working = self.table.clone();
        let mut problems: Vec<Problem> = Vec::new();
        // Key paths whose value is no longer the layers' (replaced or removed).
        let mut repaired: BTreeSet<String> = BTreeSet::new();
        let mut fixes: BTreeMap<String, usize> = BTreeMap::new();
        let config = loop {
            let err = match serde_path_to_error::deserialize::<_, RunConfig>(Value::Table(
                working.clone(),
            )) {
                Ok(config) => break config,
                Err(err) => err,
            };
            let segments = path_segments(err.path());
            let inner = first_line(&err.inner().to_string());
            let Diagnosis {
                key,
                message,
                repair,
            } = self.diagnose(&working, &placeholder, &segments, &inner);
            let source = match &repair {
                // A missing key has no value anywhere: blame the table that lacks it.
                Repair::Insert(path) => self.source_of_missing(&join(&path[..path.len() - 1])),
                _ => self.source_of(&key).clone(),
            };
            // A key that fails again after its repair is reported once.
            if !problems
                .iter()
                .any(|p| p.key == key && p.message == message)
            {
                problems.push(Problem {
                    source,
                    key: key.clone(),
                    message,
                });
            }
            let target = match &repair {
                Repair::Remove(p) | Repair::Replace(p) | Repair::Insert(p) => p.clone(),
            };
            let target_key = join(&target);
            let tries = fixes.entry(target_key.clone()).or_default();
            *tries += 1;
            let done = match (&repair, *tries) {
                (Repair::Replace(_) | Repair::Insert(_), 1) => {
                    match get(&placeholder, &target).cloned() {
                        Some(v) => set(&mut working, &target, v),
                        None => remove(&mut working, &target),
                    }
                }
                (_, 1 | 2) => remove(&mut working, &target),
                _ => false,
            };
            repaired.insert(target_key);
            if !done || problems.len() > 1000 {
                // The table cannot be repaired further: report what was found.
                return Err(problems);
            }
        };
        if let Err(text) = config.validate() {
            for line in text.lines() {
                if repaired.iter().any(|k| mentions_key(line, k)) {
                    continue;
                }
                let key = leading_key(line);
                // The first key the message names that a layer set; else the named file.
                let source = std::iter::once(key.as_str())
                    .chain(mentioned_keys(line))
                    .map(|k| self.source_of(k))
                    .find(|s| **s != Source::Default)
                    .cloned()
                    .unwrap_or_else(|| Source::File(self.path.clone()));
                problems.push(Problem {
                    source,
                    key,
                    message: line.to_string(),
                });
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    /// [`resolve`](Self::resolve), its problems as one [`TrainError::Config`] against the
    /// named file, or, when every problem came from a `--set`, as a [`TrainError::Set`] that
    /// does not blame the file.
    pub fn into_config(self) -> Result<RunConfig, TrainError> {
        self.resolve().map_err(|problems| {
            if problems.iter().all(|p| matches!(p.source, Source::Set(_))) {
                TrainError::Set(format!(
                    "--set (not {}): {}",
                    self.path.display(),
                    problems_message(&problems)
                ))
            } else {
                TrainError::Config {
                    path: self.path.clone(),
                    message: problems_message(&problems),
                }
            }
        })
    }

    /// Who is to blame for a key missing from `table_key`: the last layer that set the table,
    /// or the named file.
    fn source_of_missing(&self, table_key: &str) -> Source {
        match self.source_of(table_key) {
            Source::Default => Source::File(self.path.clone()),
            s => s.clone(),
        }
    }

    /// Turns one deserialization error into a problem and the repair that gets past it.
    fn diagnose(
        &self,
        working: &Table,
        placeholder: &Value,
        segments: &[Segment],
        inner: &str,
    ) -> Diagnosis {
        // An array is repaired whole: cut the path at its first index.
        let keys: Vec<String> = segments
            .iter()
            .map_while(|s| match s {
                Segment::Key(k) => Some(k.clone()),
                Segment::Index(_) => None,
            })
            .collect();
        let key = join(&keys);
        // `optimizer.betas = [0.9, "a"]: element [1]` for a problem inside an array.
        let element = segments[keys.len().min(segments.len())..]
            .first()
            .map(|_| format!(": element {}", display_path(&segments[keys.len()..])))
            .unwrap_or_default();
        let value = get_table(working, &keys).map(short_value);
        let shown = |v: &Option<String>| match v {
            Some(v) => format!("{key} = {v}{element}"),
            None => format!("{key}{element}"),
        };
        if let Some(rest) = inner.strip_prefix("unknown field ") {
            let table = join(&keys[..keys.len().saturating_sub(1)]);
            let mut valid = backticked(rest.split_once("expected").map_or("", |(_, e)| e));
            if table.is_empty() {
                valid.insert(0, EXTENDS_KEY.to_string());
            }
            let name = keys.last().cloned().unwrap_or_default();
            let hint = closest(&name, &valid)
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            let within = if table.is_empty() {
                "valid top-level keys".to_string()
            } else {
                format!("valid keys in [{table}]")
            };
            let list = if valid.is_empty() {
                "none".to_string()
            } else {
                valid.join(", ")
            };
            return Diagnosis {
                message: format!("{key}: unknown key{hint}; {within}: {list}"),
                key,
                repair: Repair::Remove(keys),
            };
        }
        if let Some(rest) = inner.strip_prefix("missing field ") {
            let field = backticked(rest).into_iter().next().unwrap_or_default();
            let mut path = keys.clone();
            path.push(field);
            let full = join(&path);
            let what = match get(placeholder, &path) {
                Some(Value::Table(_)) => format!("missing; add a [{full}] table"),
                _ => "missing; this key is required".to_string(),
            };
            return Diagnosis {
                key: full.clone(),
                message: format!("{full}: {what}"),
                repair: Repair::Insert(path),
            };
        }
        let in_schema = get(placeholder, &keys).is_some();
        let repair = if in_schema {
            Repair::Replace(keys.clone())
        } else {
            // An entry of a free-form map (`region_weights`, `lr_multipliers`).
            Repair::Remove(keys.clone())
        };
        if let Some(rest) = inner.strip_prefix("unknown variant ") {
            let allowed = rest.split_once("expected").map_or("", |(_, e)| e);
            return Diagnosis {
                message: format!(
                    "{}: expected {}",
                    shown(&value),
                    one_of(&backticked(allowed))
                ),
                key,
                repair,
            };
        }
        let expected = if inner.starts_with("invalid length") {
            match get(placeholder, &keys) {
                Some(Value::Array(a)) => Some(format!("an array of {} values", a.len())),
                _ => None,
            }
        } else {
            None
        };
        let expected = expected.or_else(|| {
            // An enum given a non-string: ask the schema for its variants with a probe string.
            match get(placeholder, &keys) {
                Some(Value::String(_)) => enum_variants(working, &keys).map(|v| one_of(&v)),
                _ => None,
            }
        });
        let expected = expected.or_else(|| {
            inner
                .split_once(", expected ")
                .map(|(_, e)| describe_expected(e))
        });
        let message = match expected {
            Some(e) => format!("{}: expected {e}", shown(&value)),
            None => format!("{}: {inner}", shown(&value)),
        };
        Diagnosis {
            key,
            message,
            repair,
        }
    }
}

struct Diagnosis {
    key: String,
    message: String,
    repair: Repair,
}

enum Repair {
    /// Remove the key (unknown, or a bad entry of a free-form map).
    Remove(Vec<String>),
    /// Replace the value with the placeholder's.
    Replace(Vec<String>),
    /// Insert the placeholder's value for a missing required key.
    Insert(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|s| match s {
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Unknown => None,
        })
        .collect()
}

/// Reads `text` (the file `path`) and the files it extends, child first, into `out`.
/// `visiting` holds the canonical paths of the files on the way here.
fn read_chain(
    text: &str,
    path: &Path,
    visiting: &mut Vec<(PathBuf, PathBuf)>,
    out: &mut Vec<(PathBuf, Table)>,
) -> Result<(), TrainError> {
    let config_error = |message: String| TrainError::Config {
        path: path.to_path_buf(),
        message,
    };
    let mut table: Table = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
    let parent = match table.remove(EXTENDS_KEY) {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        Some(v) => {
            return Err(config_error(format!(
                "{EXTENDS_KEY} = {}: give the path of the parent config as a string, relative \
                 to this file, e.g. extends = \"base.toml\"",
                short_value(&v)
            )))
        }
    };
    // Canonical when the file exists; the built-in configs have no file.
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    visiting.push((canonical, path.to_path_buf()));
    out.push((path.to_path_buf(), table));
    let Some(parent) = parent else {
        return Ok(());
    };
    let parent_path = path.parent().unwrap_or(Path::new("")).join(&parent);
    let parent_text = read_config_file(&parent_path).map_err(|e| {
        config_error(format!(
            "{EXTENDS_KEY} = {parent:?}: cannot read {}: {e}",
            parent_path.display()
        ))
    })?;
    let parent_canonical =
        std::fs::canonicalize(&parent_path).unwrap_or_else(|_| parent_path.clone());
    if let Some(start) = visiting.iter().position(|(c, _)| *c == parent_canonical) {
        let mut cycle: Vec<String> = visiting[start..]
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        cycle.push(parent_path.display().to_string());
        return Err(config_error(format!(
            "{EXTENDS_KEY} cycle: {}",
            cycle.join(" -> ")
        )));
    }
    read_chain(&parent_text, &parent_path, visiting, out)
}

/// Merges `layer` into `into`; records in `origin` that layer `source` set each key it gives.
fn merge(
    into: &mut Table,
    layer: Table,
    source: usize,
    prefix: &str,
    origin: &mut BTreeMap<String, usize>,
) {
    for (k, v) in layer {
        let key = child_key(prefix, &k);
        match (into.get_mut(&k), v) {
            (Some(Value::Table(dst)), Value::Table(src)) => {
                origin.insert(key.clone(), source);
                merge(dst, src, source, &key, origin);
            }
            (_, v) => {
                let below = format!("{key}.");
                origin.retain(|p, _| *p != key && !p.starts_with(&below));
                record(&v, &key, source, origin);
                into.insert(k, v);
            }
        }
    }
}

fn record(v: &Value, key: &str, source: usize, origin: &mut BTreeMap<String, usize>) {
    origin.insert(key.to_string(), source);
    if let Value::Table(t) = v {
        for (k, v) in t {
            record(v, &child_key(key, k), source, origin);
        }
    }
}

/// Parses `--set KEY=VALUE` into a one-key layer: KEY is a dotted TOML key path
/// (`optimizer.lr_multipliers.backbone`), VALUE a TOML value (`0.002`, `true`, `"adamw"`,
/// `[0.9, 0.99]`, `{ decay = 0.999 }`) or, when it does not parse as one, a string (so
/// `optimizer.kind=sgd` works). Blanks around KEY and VALUE are ignored.
pub fn parse_set(arg: &str) -> Result<Table, String> {
    let bad =
        |why: &str| format!("--set {arg:?}: {why}; give KEY=VALUE, e.g. --set train.lr=0.002");
    let (key, value) = arg.split_once('=').ok_or_else(|| bad("no '='"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(bad("the key is empty"));
    }
    // TOML parses the key path itself (bare or quoted segments).
    let probe: Table = toml::from_str(&format!("{key} = 0"))
        .map_err(|_| bad(&format!("{key:?} is not a key path such as train.lr")))?;
    let mut path = Vec::new();
    let mut t = &probe;
    loop {
        let (k, v) = t.iter().next().ok_or_else(|| bad("the key is empty"))?;
        path.push(k.clone());
        match v {
            Value::Table(inner) if t.len() == 1 => t = inner,
            _ => break,
        }
    }
    if path.first().map(String::as_str) == Some(EXTENDS_KEY) {
        return Err(format!(
            "--set {arg:?}: {EXTENDS_KEY} can only be given in a config file"
        ));
    }
    let value = parse_value(value);
    let mut layer = Table::new();
    let mut v = value;
    for k in path.iter().skip(1).rev() {
        let mut t = Table::new();
        t.insert(k.clone(), v);
        v = Value::Table(t);
    }
    layer.insert(path[0].clone(), v);
    Ok(layer)
}

/// A `--set` VALUE: a TOML value, or else the text (without surrounding blanks) as a string.
fn parse_value(text: &str) -> Value {
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        if let Ok(mut t) = toml::from_str::<Table>(&format!("v = {trimmed}")) {
            if t.len() == 1 {
                if let Some(v) = t.remove("v") {
                    return v;
                }
            }
        }
    }
    Value::String(trimmed.to_string())
}

/// A run config whose every value is valid and every optional table present: the values a
/// repaired key takes while the rest of the config is checked.
fn placeholder() -> RunConfig {
    RunConfig {
        name: "placeholder".into(),
        kernel_cache: None,
        runs_dir: "runs".into(),
        site: SiteConfig {
            region: "DE".into(),
            name: "placeholder".into(),
            trust_store: None,
            allow_unsigned: None,
            key: None,
        },
        model: ModelConfig {
            size: ModelSize::Nano,
            input: InputSize {
                width: 640,
                height: 384,
            },
            tasks: Tasks::default(),
        },
        data: DataConfig {
            datasets: vec!["placeholder".into()],
            region_weights: BTreeMap::new(),
            integrity: IntegrityPolicy::default(),
            prefetch_batches: 4,
            workers: 0,
            augment: AugmentConfig::default(),
        },
        train: TrainConfig {
            steps: 1_000_000,
            batch_size: 1,
            grad_accumulation: 1,
            seed: 0,
            lr: 0.001,
            init: Some("placeholder.safetensors".into()),
            ema: Some(EmaConfig {
                decay: 0.9999,
                warmup_steps: 2000,
            }),
            max_nonfinite_steps: 5,
            precision: Precision::F32,
            conv: ConvKernels::Auto,
        },
        optimizer: OptimizerConfig {
            grad_clip: Some(10.0),
            ..OptimizerConfig::default()
        },
        schedule: ScheduleConfig::default(),
        checkpoint: CheckpointConfig::default(),
        validation: ValidationConfig::default(),
        logging: LoggingConfig::default(),
        loss: LossWeights::default(),
        eval: EvalConfig::default(),
        finetune: Some(FinetuneConfig {
            base: Some("placeholder.safetensors".into()),
            profile: "DE".into(),
            freeze: FreezePolicy::Nothing,
            freeze_norm_statistics: true,
            distillation: Some(DistillationConfig { weight: 1.0 }),
            l2sp: Some(0.0),
        }),
    }
}

/// The variants of the enum at `keys`, found by deserializing a probe string there.
fn enum_variants(working: &Table, keys: &[String]) -> Option<Vec<String>> {
    let mut probe = working.clone();
    set(&mut probe, keys, Value::String("\u{1}not a variant".into()));
    let err = serde_path_to_error::deserialize::<_, RunConfig>(Value::Table(probe)).err()?;
    let same_place =
        path_segments(err.path()) == keys.iter().cloned().map(Segment::Key).collect::<Vec<_>>();
    let inner = first_line(&err.inner().to_string());
    let rest = inner.strip_prefix("unknown variant ")?;
    let variants = backticked(rest.split_once("expected")?.1);
    (same_place && !variants.is_empty()).then_some(variants)
}

/// Serde's name of an expected type, in the words of a config file.
fn describe_expected(e: &str) -> String {
    match e {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number >= 0".into(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "path string" => "a path (a string)".into(),
        "a sequence" => "an array".into(),
        "a map" | "map" => "a table".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.into(),
    }
}

/// `"a"`, `"a" or "b"`, `one of "a", "b", "c"`.
fn one_of(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

/// The `name`s of every `` `name` `` in `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The valid name closest to a misspelt one, if it is close.
fn closest<'a>(name: &str, valid: &'a [String]) -> Option<&'a str> {
    valid
        .iter()
        .map(|v| (edit_distance(name, v), v))
        .filter(|&(d, v)| d <= 2.max(v.len() / 4) && d < v.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, v)| v.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// A value as TOML, cut short when long.
fn short_value(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// A key as written in a dotted path: bare when it can be, quoted otherwise.
fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn child_key(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        quote_key(k)
    } else {
        format!("{prefix}.{}", quote_key(k))
    }
}

fn join(keys: &[String]) -> String {
    keys.iter().fold(String::new(), |acc, k| child_key(&acc, k))
}

fn display_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => out = child_key(&out, k),
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The key path a validation message starts with (`train.lr = 5: ...` -> `train.lr`).
fn leading_key(line: &str) -> String {
    line.split([' ', ':', '=']).next().unwrap_or("").to_string()
}

/// Whether `line` names `key`, or a table of it below the top level (`model.input` for
/// `model.input.width`), as a whole key path.
fn mentions_key(line: &str, key: &str) -> bool {
    let mut candidates = vec![key];
    let mut k = key;
    while let Some(dot) = k.rfind('.') {
        k = &k[..dot];
        if k.contains('.') {
            candidates.push(k);
        }
    }
    candidates.iter().any(|c| {
        line.match_indices(c).any(|(i, _)| {
            !line[..i].ends_with(is_key_char) && !line[i + c.len()..].starts_with(is_key_char)
        })
    })
}

fn is_key_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.')
}

/// The dotted key paths a validation message names, in order.
fn mentioned_keys(line: &str) -> Vec<&str> {
    line.split(|c: char| !is_key_char(c))
        .filter(|t| t.contains('.') && t.starts_with(|c: char| c.is_ascii_alphabetic()))
        .map(|t| t.trim_end_matches('.'))
        .collect()
}

fn get<'a>(v: &'a Value, keys: &[String]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |v, k| v.as_table()?.get(k))
}

fn get_table<'a>(t: &'a Table, keys: &[String]) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    rest.iter()
        .try_fold(t.get(first)?, |v, k| v.as_table()?.get(k))
}

/// Sets the value at `keys`, creating tables on the way (replacing non-tables).
fn set(t: &mut Table, keys: &[String], value: Value) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut t = t;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("just made a table");
    }
    t.insert(last.clone(), value);
    true
}

fn remove(t: &mut Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut t = t;
    for k in parents {
        match t.get_mut(k).and_then(Value::as_table_mut) {
            Some(inner) => t = inner,
            None => return false,
        }
    }
    t.remove(last).is_some()
}

/// Reading a run config is this module's job; `RunConfig` itself only holds and checks values.
impl RunConfig {
    /// Reads a config file and the files it `extends`, and resolves it: every unknown key,
    /// wrong type and invalid value is reported in one [`TrainError::Config`], one per line,
    /// each with its key path and the file it came from.
    pub fn load(path: &Path) -> Result<RunConfig, TrainError> {
        Self::load_layered(path, &[])
    }

    /// As [`load`](Self::load), then applies `sets` (`KEY=VALUE`, see
    /// [`parse_set`](crate::config_source::parse_set)) over the file chain; problems from a
    /// `--set` name it.
    pub fn load_layered(path: &Path, sets: &[String]) -> Result<RunConfig, TrainError> {
        LayeredConfig::load(path, sets)?.into_config()
    }

    /// Parses config text; `path` names it in errors, and a relative `extends` is read from
    /// its directory.
    pub fn parse(text: &str, path: &Path) -> Result<RunConfig, TrainError> {
        LayeredConfig::from_text(text, path, &[])?.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OptimizerKind, ScheduleKind};

    const BASE: &str = r#"
name = "base"
[site]
region = "DE"
name = "lab"
[model]
size = "nano"
input = { width = 64, height = 64 }
[data]
datasets = ["a", "b"]
[data.augment]
scale = 0.2
translate = 0.05
[train]
steps = 100
batch_size = 2
seed = 1
lr = 0.01
[optimizer]
betas = [0.9, 0.99]
lr_multipliers = { backbone = 0.5, neck = 0.7 }
[schedule]
warmup_steps = 10
"#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }

    fn sets(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn load(path: &Path, args: &[&str]) -> Result<RunConfig, String> {
        RunConfig::load_layered(path, &sets(args)).map_err(|e| e.to_string())
    }

    #[test]
    fn extends_merges_child_over_parent() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", BASE);
        let child = write(
            dir.path(),
            "child.toml",
            r#"
extends = "base.toml"
name = "child"
[data]
datasets = ["c"]
[data.augment]
scale = 0.3
[train]
lr = 0.002
[optimizer]
lr_multipliers = { backbone = 0.1 }
"#,
        );
        let c = load(&child, &[]).unwrap();
        // Scalars: the child's.
        assert_eq!(c.name, "child");
        assert_eq!(c.train.lr, 0.002);
        // Nested tables merge key by key: the parent's other keys stay.
        assert_eq!(c.train.steps, 100);
        assert_eq!(c.data.augment.scale, 0.3);
        assert_eq!(c.data.augment.translate, 0.05);
        assert_eq!(c.site.region, "DE");
        assert_eq!(c.optimizer.betas, [0.9, 0.99]);
        assert_eq!(
            c.optimizer.lr_multipliers,
            BTreeMap::from([("backbone".to_string(), 0.1), ("neck".to_string(), 0.7)])
        );
        // Arrays: replaced whole.
        assert_eq!(c.data.datasets, vec![PathBuf::from("c")]);
        // Sources.
        let l = LayeredConfig::load(&child, &[]).unwrap();
        assert_eq!(
            l.layers(),
            &[
                Source::File(dir.path().join("base.toml")),
                Source::File(child.clone())
            ]
        );
        assert_eq!(l.source_of("train.lr"), &Source::File(child.clone()));
        assert_eq!(
            l.source_of("train.steps"),
            &Source::File(dir.path().join("base.toml"))
        );
        assert_eq!(l.source_of("logging.every"), &Source::Default);
        assert!(!l.table().contains_key(EXTENDS_KEY));
    }

    #[test]
    fn extends_refuses_devices_directories_and_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        let huge = dir.path().join("huge.toml");
        std::fs::write(&huge, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        for (parent, want) in [
            ("/dev/zero", "not a regular file"),
            (".", "not a regular file"),
            ("huge.toml", "larger than 1 MiB"),
        ] {
            let top = write(dir.path(), "top.toml", &format!("extends = {parent:?}\n"));
            let err = LayeredConfig::load(&top, &[]).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("extends"),
                "{parent}: {err}"
            );
        }
        let err = LayeredConfig::load(Path::new("/dev/zero"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("not a regular file"),
            "{err}"
        );
    }

    #[test]
    fn extends_is_relative_to_the_file_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "shared/base.toml", BASE);
        write(
            dir.path(),
            "shared/mid.toml",
            "extends = \"base.toml\"\n[train]\nsteps = 50\n",
        );
        let top = write(
            dir.path(),
            "runs/de/top.toml",
            "extends = \"../../shared/mid.toml\"\nname = \"top\"\n",
        );
        let c = load(&top, &[]).unwrap();
        assert_eq!(
            (c.name.as_str(), c.train.steps, c.train.lr),
            ("top", 50, 0.01)
        );
        let layers = LayeredConfig::load(&top, &[]).unwrap();
        assert_eq!(layers.layers().len(), 3);
    }

    #[test]
    fn extends_cycle_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", "extends = \"b.toml\"\nname = \"a\"\n");
        write(dir.path(), "b.toml", "extends = \"c.toml\"\n");
        write(dir.path(), "c.toml", "extends = \"a.toml\"\n");
        let e = load(&a, &[]).unwrap_err();
        assert!(e.contains("extends cycle"), "{e}");
        let a_ = a.display().to_string();
        let b_ = dir.path().join("b.toml").display().to_string();
        let c_ = dir.path().join("c.toml").display().to_string();
        let a2 = dir.path().join("a.toml").display().to_string();
        assert!(e.contains(&format!("{a_} -> {b_} -> {c_} -> {a2}")), "{e}");
        // A file extending itself.
        let s = write(dir.path(), "self.toml", "extends = \"self.toml\"\n");
        let e = load(&s, &[]).unwrap_err();
        assert!(e.contains("extends cycle"), "{e}");
    }

    #[test]
    fn missing_parent_names_the_file_that_extends_it() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "mid.toml", "extends = \"gone.toml\"\n");
        let top = write(dir.path(), "top.toml", "extends = \"mid.toml\"\n");
        let e = load(&top, &[]).unwrap_err();
        let mid = dir.path().join("mid.toml").display().to_string();
        assert!(e.starts_with(&format!("config {mid}:")), "{e}");
        assert!(e.contains("gone.toml"), "{e}");
        assert!(e.contains("cannot read"), "{e}");
        // extends must be a string.
        let bad = write(dir.path(), "bad.toml", "extends = 3\n");
        let e = load(&bad, &[]).unwrap_err();
        assert!(e.contains("extends = 3"), "{e}");
    }

    #[test]
    fn set_parses_values_and_creates_tables() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", BASE);
        let c = load(
            &base,
            &[
                "train.lr=0.002",
                "name=\"quoted\"",
                "optimizer.kind=sgd",
                "optimizer.betas=[0.8, 0.95]",
                "train.ema={ decay = 0.999 }",
                "optimizer.lr_multipliers.detection_head=0.3",
                "schedule.kind = step",
                "data.augment.flip=mirror-traffic-side",
                "data.region_weights.DE=1",
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 0.002);
        assert_eq!(c.name, "quoted");
        assert_eq!(c.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(c.optimizer.betas, [0.8, 0.95]);
        let ema = c.train.ema.unwrap();
        assert_eq!((ema.decay, ema.warmup_steps), (0.999, 2000));
        // Merged into the file's map, not replacing it.
        assert_eq!(c.optimizer.lr_multipliers.len(), 3);
        assert_eq!(c.optimizer.lr_multipliers["detection_head"], 0.3);
        assert_eq!(c.schedule.kind, ScheduleKind::Step);
        assert_eq!(
            c.data.augment.flip,
            percept_data::FlipPolicy::MirrorTrafficSide
        );
        // An intermediate table no layer had.
        assert_eq!(c.data.region_weights["DE"], 1.0);

        let l = LayeredConfig::load(&base, &sets(&["train.lr=0.002"])).unwrap();
        assert_eq!(
            l.source_of("train.lr"),
            &Source::Set("train.lr=0.002".into())
        );

        assert_eq!(
            parse_set("a.b.c={ x = [1, 2] }").unwrap().to_string(),
            "[a.b.c]\nx = [1, 2]\n"
        );
        assert_eq!(parse_set("a=").unwrap()["a"], Value::String("".into()));
        assert_eq!(
            parse_set("a=x = 1").unwrap()["a"],
            Value::String("x = 1".into())
        );
        // A value that smuggles in a second key stays a string.
        assert_eq!(
            parse_set("a=1\nb = 2").unwrap()["a"],
            Value::String("1\nb = 2".into())
        );
        assert_eq!(
            parse_set("\"odd.key\"=1").unwrap()["odd.key"],
            Value::Integer(1)
        );
    }

    #[test]
    fn malformed_set_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", BASE);
        let e = load(&base, &["train.lr", "=3", "a..b=1"]).unwrap_err();
        assert!(e.contains("--set \"train.lr\": no '='"), "{e}");
        assert!(e.contains("--set \"=3\": the key is empty"), "{e}");
        assert!(e.contains("--set \"a..b=1\""), "{e}");
        let e = load(&base, &["extends=x.toml"]).unwrap_err();
        assert!(e.contains("only be given in a config file"), "{e}");
    }

    /// `config check` used to accept a prefix that `train` then refused: reading a config now
    /// runs training's check on the network the config describes.
    #[test]
    fn lr_multiplier_prefixes_are_checked_against_the_network() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", BASE);
        let e = load(&base, &["optimizer.lr_multipliers.head=0.3"]).unwrap_err();
        assert!(
            e.contains(
                "--set optimizer.lr_multipliers.head=0.3: optimizer.lr_multipliers.head: no \
                 parameter's path starts with \"head\"; paths are dotted module names such as \
                 \"backbone.stem.conv.weight\", and the top-level modules are backbone, neck, \
                 detection_head, drivable_head, lane_head"
            ),
            "{e}"
        );
        // The same prefix is what building the optimiser refuses.
        let c = load(&base, &[]).unwrap();
        let mut optimizer = c.optimizer.clone();
        optimizer.lr_multipliers.insert("head".into(), 0.3);
        let paths = [
            "backbone.stem.conv.weight",
            "neck.up.weight",
            "detection_head.cls.weight",
        ];
        assert_eq!(
            crate::lr_multipliers::unmatched_lr_prefixes(&paths, &optimizer.lr_multipliers),
            [
                "optimizer.lr_multipliers.head: no parameter's path starts with \"head\"; paths \
              are dotted module names such as \"backbone.stem.conv.weight\", and the top-level \
              modules are backbone, neck, detection_head"
            ]
        );
        // Switching a task off removes its head's parameters from what a prefix may match.
        let e = load(
            &base,
            &[
                "model.tasks={ detection = true, drivable = true, lanes = false }",
                "optimizer.lr_multipliers.lane_head=2",
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("optimizer.lr_multipliers.lane_head: no parameter"),
            "{e}"
        );
    }

    #[test]
    fn set_problems_are_not_blamed_on_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", BASE);
        let e = load(&base, &["train.lr=5"]).unwrap_err();
        assert_eq!(
            e,
            format!(
                "--set (not {}): 1 problem:\n  --set train.lr=5: train.lr = 5: give a value in \
                 (0, 1]",
                base.display()
            )
        );
        let e = load(&base, &["train.lr"]).unwrap_err();
        assert_eq!(
            e,
            "--set \"train.lr\": no '='; give KEY=VALUE, e.g. --set train.lr=0.002"
        );
        // A problem of the file's own among them: the file is named, each line its source.
        let bad = write(
            dir.path(),
            "bad.toml",
            &BASE.replace("seed = 1", "seed = -1"),
        );
        let e = load(&bad, &["train.lr=5"]).unwrap_err();
        assert!(
            e.starts_with(&format!("config {}: 2 problems:", bad.display())),
            "{e}"
        );
    }

    #[test]
    fn every_problem_at_once_with_key_and_source() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base.toml",
            &BASE.replace("seed = 1", "seed = 1\nsteps_per_epoch = 4"),
        );
        let child = write(
            dir.path(),
            "child.toml",
            r#"
extends = "base.toml"
[data.augment]
mosiac_probability = 0.5
[train]
batch_size = "two"
[optimizer]
weight_decay = -1.0
"#,
        );
        let e = load(&child, &["train.lr=5"]).unwrap_err();
        let base = dir.path().join("base.toml").display().to_string();
        let child = child.display().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 6, "{e}");
        assert_eq!(lines[0], format!("config {child}: 5 problems:"));
        for expected in [
            format!(
                "  {child}: data.augment.mosiac_probability: unknown key (did you mean \
                 `mosaic_probability`?); valid keys in [data.augment]: scale, translate, hue, \
                 saturation, value, flip, flip_probability, mosaic_probability, min_box_side"
            ),
            format!("  {base}: train.steps_per_epoch: unknown key"),
            format!("  {child}: train.batch_size = \"two\": expected a whole number >= 0"),
            "  --set train.lr=5: train.lr = 5: give a value in (0, 1]".to_string(),
            format!("  {child}: optimizer.weight_decay = -1: give a value >= 0"),
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(&expected)),
                "missing {expected:?} in\n{e}"
            );
        }
    }

    #[test]
    fn enum_problems_list_the_allowed_values() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "base.toml", BASE);
        let e = load(
            &base,
            &[
                "optimizer.kind=adam",
                "schedule.kind=3",
                "checkpoint.best_metric=map",
            ],
        )
        .unwrap_err();
        assert!(
            e.contains("--set optimizer.kind=adam: optimizer.kind = \"adam\": expected one of \"adamw\", \"sgd\""),
            "{e}"
        );
        assert!(
            e.contains("schedule.kind = 3: expected one of \"cosine\", \"step\", \"constant\""),
            "{e}"
        );
        assert!(
            e.contains("expected one of \"mean\", \"map50\", \"map50_95\", \"drivable_miou\", \"lane_iou\""),
            "{e}"
        );
    }

    #[test]
    fn missing_required_keys_and_repaired_values() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "base.toml",
            &BASE
                .replace("steps = 100\n", "")
                .replace("[site]\nregion = \"DE\"\nname = \"lab\"\n", ""),
        );
        let e = load(
            &base,
            &[
                "data.region_weights.DE=\"lots\"",
                "optimizer.betas=[0.9, 0.99, 0.999]",
                "model.input.width=\"wide\"",
            ],
        )
        .unwrap_err();
        let b = base.display().to_string();
        assert!(
            e.contains(&format!("{b}: site: missing; add a [site] table")),
            "{e}"
        );
        assert!(
            e.contains(&format!("{b}: train.steps: missing; this key is required")),
            "{e}"
        );
        assert!(
            e.contains("data.region_weights.DE = \"lots\": expected a number"),
            "{e}"
        );
        assert!(
            e.contains("optimizer.betas = [0.9, 0.99, 0.999]: expected an array of 2 values"),
            "{e}"
        );
        assert!(
            e.contains("model.input.width = \"wide\": expected a whole number >= 0"),
            "{e}"
        );
        // No message about the placeholders put in their place (steps vs warm-up, input size).
        assert!(!e.contains("give fewer than train.steps"), "{e}");
        assert!(!e.contains("model.input:"), "{e}");
        assert_eq!(e.lines().count(), 6, "{e}");
    }

    #[test]
    fn parse_keeps_working_for_single_texts() {
        let c = RunConfig::parse(BASE, Path::new("inline.toml")).unwrap();
        assert_eq!(c.data.datasets.len(), 2);
        let e = RunConfig::parse(
            &BASE.replace("lr = 0.01", "lr = 0.0"),
            Path::new("inline.toml"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "config inline.toml: 1 problem:\n  inline.toml: train.lr = 0: give a value in (0, 1]"
        );
    }

    #[test]
    fn shipped_configs_load_and_validate() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let smoke = RunConfig::load(&configs.join("smoke.toml")).unwrap();
        assert_eq!((smoke.name.as_str(), smoke.train.steps), ("smoke", 800));
        let base = RunConfig::load(&configs.join("base.toml")).unwrap();
        assert_eq!(base.model.size, ModelSize::Small);
        assert_eq!(
            (base.model.input.width, base.model.input.height),
            (640, 384)
        );
        assert_eq!((base.train.batch_size, base.train.lr), (32, 0.002));
        assert_eq!(base.schedule.warmup_steps, 1500);
        assert!(base.train.ema.is_some());
        assert_eq!(
            (base.checkpoint.every, base.checkpoint.keep_last),
            (2000, 3)
        );
        assert_eq!(
            (base.validation.every, base.checkpoint.keep_best),
            (2000, 1)
        );
        let jp_path = configs.join("finetune-jp.toml");
        let jp = RunConfig::load(&jp_path).unwrap();
        // Overridden.
        assert_eq!(jp.name, "finetune-jp");
        assert_eq!(jp.site.region, "JP");
        assert_eq!(jp.train.lr, 0.0005);
        assert_eq!(jp.train.steps, 30000);
        assert_eq!(jp.data.datasets, vec![PathBuf::from("data/drive-jp")]);
        assert_eq!(jp.optimizer.lr_multipliers["backbone"], 0.1);
        // Merged: the child's ema table adds to the parent's.
        let ema = jp.train.ema.unwrap();
        assert_eq!((ema.decay, ema.warmup_steps), (0.9999, 500));
        // Inherited.
        assert_eq!(jp.model, base.model);
        assert_eq!(jp.train.batch_size, 32);
        assert_eq!(jp.optimizer.betas, base.optimizer.betas);
        assert_eq!(jp.data.augment.scale, base.data.augment.scale);
        assert_eq!(jp.checkpoint.keep_best, 1);
        let l = LayeredConfig::load(&jp_path, &[]).unwrap();
        assert_eq!(l.source_of("train.lr"), &Source::File(jp_path.clone()));
        assert_eq!(
            l.source_of("train.batch_size"),
            &Source::File(configs.join("base.toml"))
        );
    }

    #[test]
    fn key_mentions() {
        assert!(mentions_key("train.steps = 1: x", "train.steps"));
        assert!(mentions_key(
            "schedule.warmup_steps = 1: give fewer than train.steps = 1",
            "train.steps"
        ));
        assert!(!mentions_key("train.steps_x = 1", "train.steps"));
        assert!(mentions_key("model.input: bad", "model.input.width"));
        assert!(!mentions_key("model.tasks: off", "model.input.width"));
        assert_eq!(leading_key("data.datasets is empty"), "data.datasets");
        assert_eq!(closest("stepz", &sets(&["steps", "seed"])), Some("steps"));
        assert_eq!(closest("zzzz", &sets(&["steps", "seed"])), None);
    }
}
