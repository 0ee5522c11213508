//! The model file: safetensors weights plus a model card in the safetensors metadata, so an
//! inference stack needs nothing else. Checkpoints and exports share the format.
//!
//! Metadata keys: `percept.model_card` (JSON of [`ModelCard`]), plus burn's own `format`,
//! `producer` and `version`. Tensor names are the module paths of [`PerceptionNet`]
//! (e.g. `backbone.stem.conv.weight`), f32, in PyTorch's `[out, in, kh, kw]` layout.
//!
//! Every load goes through [`check_weights`] before burn sees a byte: burn trusts a tensor's
//! dtype, and a file of f16 weights made it panic, one of i32 or u8 weights crash with SIGSEGV.
//!
//! Reading and checking the card, the weight check and loading are percept-infer's (one copy,
//! which a deployed model loads through too); this module adds the full card (provenance,
//! evaluation settings), writing model files, partial loads and provenance chains.

use std::path::Path;

use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use percept_infer::{card_from_bytes, read_file as read, Card};
use percept_model::{DecodeOptions, PerceptionNet, PerceptionNetConfig};
use serde::{Deserialize, Serialize};

use crate::metrics::MetricResolution;
use crate::EvalError;
use percept_data::write_atomic;

pub use percept_infer::{
    check_weights, CheckedWeights, InputSize, Normalization, MODEL_CARD_KEY, MODEL_FORMAT,
};

/// A dataset that contributed to the weights, by manifest hash; never sample data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRef {
    pub name: String,
    pub region: String,
    pub manifest_hash: String,
    /// Fingerprint of the trusted data steward's key whose signature on the manifest the
    /// site's guard verified; absent when unsigned or not checked (no trust store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub site_region: String,
    pub site_name: String,
    pub datasets: Vec<DatasetRef>,
    /// Regions whose data trained the weights, sorted, unique.
    pub regions: Vec<String>,
    /// blake3 of the resolved run config.
    pub config_hash: String,
    /// blake3 of the checkpoint a fine-tune started from.
    pub base_checkpoint: Option<String>,
    pub steps: usize,
    /// Head of the run's audit log when the weights were written: ties the file to the log
    /// that records which data trained it (`percept audit verify` checks it).
    #[serde(default)]
    pub audit_head: Option<percept_data::AuditHead>,
    /// Fingerprint of the site key that signs the run's audit log (`site.key`); absent when
    /// the log is unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_key: Option<String>,
    pub percept_version: String,
    /// The model this run started from (`train.init` or `percept finetune --base`), nested
    /// whole: a fine-tune's provenance reaches back to the first global run. The base file's
    /// blake3 is `base_checkpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<BaseLink>>,
    /// What made this run a country fine-tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneRecord>,
    /// An INT8 export's calibration: where the ranges were measured and the ranges themselves
    /// (the only thing of the calibration frames that leaves the site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationRecord>,
}

/// How an INT8 export was calibrated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizationRecord {
    /// The calibration dataset, by manifest hash, as the site's guard cleared it.
    pub dataset: DatasetRef,
    pub split: String,
    pub frames: usize,
    /// `max` or `percentile:P` of `|x|`.
    pub method: String,
    /// Each convolution's input range (`max |x|` kept; the scale is range / 127), by node.
    pub ranges: Vec<(String, f32)>,
}

impl Provenance {
    /// blake3 of the provenance as serialised (JSON, fields in declaration order).
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("provenance serialises");
        blake3::hash(&json).to_hex().to_string()
    }
}

/// One link of a provenance chain: the base model's card, as far as it says where the weights
/// came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseLink {
    /// [`Provenance::digest`] of `provenance` when the link was made: an edited link no
    /// longer matches it.
    pub provenance_hash: String,
    pub architecture: PerceptionNetConfig,
    pub classes: Vec<String>,
    pub provenance: Provenance,
}

impl BaseLink {
    /// The link to the model whose card is `card`.
    pub fn of(card: &ModelCard) -> Self {
        BaseLink {
            provenance_hash: card.provenance.digest(),
            architecture: card.architecture.clone(),
            classes: card.classes.clone(),
            provenance: card.provenance.clone(),
        }
    }

    /// The nested provenance still has the digest recorded when the link was made.
    pub fn verifies(&self) -> bool {
        self.provenance.digest() == self.provenance_hash
    }
}

/// A country fine-tune's settings, as far as they shape the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneRecord {
    /// The country profile's code (`JP`) and the blake3 of its text.
    pub profile: String,
    pub profile_hash: String,
    /// The base model's classes mapped to the country's.
    pub class_mapping: percept_data::ClassMapping,
    /// `none`, `backbone` or `backbone+neck`.
    pub freeze: String,
    /// Batch-norm statistics of the frozen parts kept at the base's.
    pub freeze_norm_statistics: bool,
    /// Weight of distillation from the frozen base, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<f32>,
    /// Weight of the L2-SP pull towards the base weights, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2sp: Option<f32>,
}

/// Everything an inference stack needs besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub format: String,
    pub architecture: PerceptionNetConfig,
    pub classes: Vec<String>,
    pub input: InputSize,
    pub normalization: Normalization,
    pub decode: DecodeOptions,
    /// Where `percept eval` computes metrics unless told otherwise (the run config's
    /// `eval.resolution`).
    #[serde(default)]
    pub eval_resolution: MetricResolution,
    pub provenance: Provenance,
}

impl Card for ModelCard {
    fn format(&self) -> &str {
        &self.format
    }
    fn architecture(&self) -> &PerceptionNetConfig {
        &self.architecture
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn input(&self) -> &InputSize {
        &self.input
    }
    fn normalization(&self) -> &Normalization {
        &self.normalization
    }
    fn decode(&self) -> &DecodeOptions {
        &self.decode
    }
}

/// Writes `net` and `card` to `path` atomically; returns the file's blake3.
pub fn save_model<B: Backend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    path: &Path,
) -> Result<String, EvalError> {
    let bytes = model_bytes(net, card, path)?;
    write_atomic(path, &bytes)?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// The bytes of the model file of `net` and `card` ([`save_model`] writes them; an export
/// writes them itself, to check them before they replace anything); `path` names the file in
/// errors.
pub fn model_bytes<B: Backend>(
    net: &PerceptionNet<B>,
    card: &ModelCard,
    path: &Path,
) -> Result<Vec<u8>, EvalError> {
    let card_json = serde_json::to_string(card).expect("a model card serialises");
    let mut store = SafetensorsStore::from_bytes(None).metadata(MODEL_CARD_KEY, card_json);
    net.save_into(&mut store)
        .map_err(|e| EvalError::ModelFile {
            path: path.to_path_buf(),
            message: format!("could not serialise the weights: {e}"),
        })?;
    store.get_bytes().map_err(|e| EvalError::ModelFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads the model card of a model file without loading the weights.
pub fn read_model_card(path: &Path) -> Result<ModelCard, EvalError> {
    Ok(percept_infer::read_card(path)?)
}

/// The model card `json` of the model `path` (an ONNX export carries the same JSON in its
/// metadata), checked as a model file's card is.
pub fn card_from_json(json: &str, path: &Path) -> Result<ModelCard, EvalError> {
    Ok(percept_infer::card_from_json(json, path)?)
}

/// Loads a model file: builds the network from its card and loads every weight (a missing or
/// extra tensor, or a shape mismatch, is an error).
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(PerceptionNet<B>, ModelCard), EvalError> {
    Ok(percept_infer::load_net(path, device)?)
}

/// What [`load_matching`] loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// The file's blake3.
    pub hash: String,
    pub card: ModelCard,
    /// Tensors loaded (name and shape matched).
    pub loaded: usize,
    /// Tensors of the network left at their initial values (no tensor of that name and shape
    /// in the file).
    pub kept: Vec<String>,
}

/// Loads every tensor of model file `path` whose name and shape match one of `net`'s; the rest
/// of `net` is left as it is. At least one tensor must match.
pub fn load_matching<B: Backend>(
    net: PerceptionNet<B>,
    path: &Path,
) -> Result<(PerceptionNet<B>, InitReport), EvalError> {
    let bytes = read(path)?;
    let card: ModelCard = card_from_bytes(&bytes, path)?;
    let bad = |message: String| EvalError::ModelFile {
        path: path.to_path_buf(),
        message,
    };
    // The hash is of the file as given, not of its f32 conversion.
    let hash = blake3::hash(&bytes).to_hex().to_string();
    let bytes = check_weights(bytes, path)?.bytes;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let shapes: std::collections::HashMap<String, Vec<usize>> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    let mut matched = Vec::new();
    let mut kept = Vec::new();
    for p in percept_model::params::list_params(&net) {
        if shapes.get(&p.path) == Some(&p.dims) {
            matched.push(p.path);
        } else {
            kept.push(p.path);
        }
    }
    if matched.is_empty() {
        return Err(bad(format!(
            "no tensor has the name and shape of one of this network's (the file holds a {} \
             network): give a percept model of the run's model.size",
            card.architecture.size.name()
        )));
    }
    let loaded = matched.len();
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_full_paths(matched)
        .allow_partial(true);
    let mut net = net;
    let result = net
        .load_from(&mut store)
        .map_err(|e| bad(format!("could not load its weights: {e}")))?;
    if !result.errors.is_empty() {
        return Err(bad(format!(
            "could not load its weights: {:?}",
            result.errors
        )));
    }
    Ok((
        net,
        InitReport {
            hash,
            card,
            loaded,
            kept,
        },
    ))
}

/// Hex digits of a hash shown where a short form is enough to tell hashes apart (datasets'
/// manifests, configs, profiles); files' hashes are shown whole, to compare with `b3sum`.
const SHORT_HASH: usize = 16;

fn short(hash: &str) -> &str {
    hash.get(..SHORT_HASH).unwrap_or(hash)
}

/// The tasks a network is built for, in words.
fn network_text(arch: &PerceptionNetConfig) -> String {
    let tasks: Vec<&str> = [
        (arch.tasks.detection, "detection"),
        (arch.tasks.drivable, "drivable"),
        (arch.tasks.lanes, "lanes"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    format!("{}, tasks: {}", arch.size.name(), tasks.join(", "))
}

/// One model of a provenance chain: the file itself (link 1) or a base nested in the link
/// before it.
#[derive(Debug, Clone, Copy)]
pub struct ChainLink<'a> {
    /// 1 for the file itself, 2 for its base, and so on back to the first global run.
    pub number: usize,
    pub architecture: &'a PerceptionNetConfig,
    pub classes: &'a [String],
    pub provenance: &'a Provenance,
    /// How the link was recorded in link `number - 1`; `None` for the file itself.
    pub recorded: Option<&'a BaseLink>,
}

impl ChainLink<'_> {
    /// Why this link does not verify (its nested provenance no longer has the digest recorded
    /// when it was linked), or `None` when it does (or is the file itself).
    pub fn break_text(&self) -> Option<String> {
        let link = self.recorded?;
        let digest = link.provenance.digest();
        (digest != link.provenance_hash).then(|| {
            format!(
                "link {} -> {}: DOES NOT VERIFY: the nested provenance was edited after it was \
                 recorded (digest {} != recorded {})",
                self.number,
                self.number - 1,
                short(&digest),
                short(&link.provenance_hash)
            )
        })
    }
}

/// The provenance chain of `card`, newest first: the file itself, its base, the base's base,
/// ..., the first global run.
pub fn provenance_chain(card: &ModelCard) -> Vec<ChainLink<'_>> {
    let mut chain = vec![ChainLink {
        number: 1,
        architecture: &card.architecture,
        classes: &card.classes,
        provenance: &card.provenance,
        recorded: None,
    }];
    let mut next = card.provenance.base.as_deref();
    while let Some(link) = next {
        chain.push(ChainLink {
            number: chain.len() + 1,
            architecture: &link.architecture,
            classes: &link.classes,
            provenance: &link.provenance,
            recorded: Some(link),
        });
        next = link.provenance.base.as_deref();
    }
    chain
}

/// Every link of `card`'s provenance chain that does not verify, as [`ChainLink::break_text`]
/// words it; empty when the chain holds.
pub fn chain_breaks(card: &ModelCard) -> Vec<String> {
    provenance_chain(card)
        .iter()
        .filter_map(ChainLink::break_text)
        .collect()
}

/// Checks that `base` is the file the fine-tune of `card` started from: its blake3 is the
/// recorded `base_checkpoint` and, when the base's provenance was nested, its card's
/// provenance has the digest recorded in the link. Returns what was established, in words;
/// a mismatch is an error naming `base` and both values.
pub fn check_base_file(card: &ModelCard, base: &Path) -> Result<String, EvalError> {
    let bad = |message: String| EvalError::ModelFile {
        path: base.to_path_buf(),
        message,
    };
    let recorded = card.provenance.base_checkpoint.as_deref().ok_or_else(|| {
        bad("the model records no base (it was not started from another model)".into())
    })?;
    let bytes = read(base)?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    if hash != recorded {
        return Err(bad(format!(
            "not the model's base: its blake3 is {hash}, the model records {recorded}"
        )));
    }
    let Some(link) = card.provenance.base.as_deref() else {
        return Ok(format!(
            "base {}: blake3 {hash} matches (the model nests no provenance of its base to \
             compare)",
            base.display()
        ));
    };
    let base_card: ModelCard = card_from_bytes(&bytes, base)?;
    let digest = base_card.provenance.digest();
    if digest != link.provenance_hash {
        return Err(bad(format!(
            "its blake3 matches but its card's provenance digest is {digest}, the link records \
             {}",
            link.provenance_hash
        )));
    }
    if link.provenance != base_card.provenance {
        return Err(bad(
            "its blake3 and provenance digest match the link, but the provenance nested in \
             the model differs from the base's card: the nested copy was edited"
                .into(),
        ));
    }
    Ok(format!(
        "base {}: blake3 {hash} and provenance digest {} match link 2",
        base.display(),
        short(&digest)
    ))
}

/// The card as `percept inspect` prints it: what the network is, then where its weights came
/// from as a chain of links, newest first: link 1 is the file itself, link 2 the model it was
/// fine-tuned from, and so on back to the first global run. Each link names its site, regions,
/// datasets (name, region, manifest hash), config hash, steps, the keys that vouch for its
/// data and its run, the fine-tune settings when it was one, and the base file's hash. A link
/// that does not verify says so ([`chain_breaks`] lists the same).
pub fn describe_card(card: &ModelCard) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: String| out.push_str(&format!("{label:<12}{text}\n"));
    line("format", card.format.clone());
    line("network", network_text(&card.architecture));
    line(
        "classes",
        format!("{}: {}", card.classes.len(), card.classes.join(", ")),
    );
    line(
        "input",
        format!(
            "{}x{}, RGB mean {:?}, std {:?}, letterbox pad {}",
            card.input.width,
            card.input.height,
            card.normalization.mean,
            card.normalization.std,
            card.normalization.pad_value
        ),
    );
    line(
        "decode",
        format!(
            "score >= {}, NMS IoU {}, top {} before NMS, at most {} detections",
            card.decode.score_threshold,
            card.decode.iou_threshold,
            card.decode.pre_nms_top_k,
            card.decode.max_detections
        ),
    );
    let chain = provenance_chain(card);
    out.push_str(&format!(
        "provenance  {} link{}, newest first (link 1 is this file{})\n",
        chain.len(),
        if chain.len() == 1 { "" } else { "s" },
        if chain.len() > 1 {
            format!(", link {} the first run", chain.len())
        } else {
            String::new()
        }
    ));
    for link in &chain {
        describe_link(link, &mut out);
    }
    out
}

/// One link's block of [`describe_card`].
fn describe_link(link: &ChainLink, out: &mut String) {
    let p = link.provenance;
    let heading = match (link.recorded, link.break_text()) {
        (None, _) => "link 1 (this file)".to_string(),
        (Some(_), Some(broken)) => broken,
        (Some(recorded), None) => format!(
            "link {} -> {}: verifies (provenance digest {})",
            link.number,
            link.number - 1,
            short(&recorded.provenance_hash)
        ),
    };
    out.push_str(&heading);
    out.push('\n');
    let mut line = |label: &str, text: String| out.push_str(&format!("  {label:<12}{text}\n"));
    line(
        "trained at",
        format!(
            "site `{}` in {}, {} steps, percept {}",
            p.site_name, p.site_region, p.steps, p.percept_version
        ),
    );
    if link.recorded.is_some() {
        line("network", network_text(link.architecture));
        line(
            "classes",
            format!("{}: {}", link.classes.len(), link.classes.join(", ")),
        );
    }
    line("regions", p.regions.join(", "));
    if p.datasets.is_empty() {
        line("datasets", "none recorded".into());
    }
    for d in &p.datasets {
        line(
            "dataset",
            format!(
                "`{}` ({}), manifest blake3 {}, {}",
                d.name,
                d.region,
                short(&d.manifest_hash),
                match &d.signed_by {
                    Some(k) => format!("signed by trusted steward key {k}"),
                    None => "no verified steward signature".into(),
                }
            ),
        );
    }
    line("config", format!("blake3 {}", short(&p.config_hash)));
    line(
        "audit log",
        match &p.audit_head {
            Some(h) => format!("head at entry {}, hash {}", h.entries, short(&h.hash)),
            None => "no head recorded".into(),
        },
    );
    line(
        "site key",
        match &p.site_key {
            Some(k) => format!("{k} (signs the run's audit log)"),
            None => "none: the run's audit log is unsigned".into(),
        },
    );
    if let Some(f) = &p.finetune {
        let mut settings = vec![
            format!("profile {} (blake3 {})", f.profile, short(&f.profile_hash)),
            format!(
                "freeze {}{}",
                f.freeze,
                if f.freeze_norm_statistics {
                    " (norm statistics kept)"
                } else {
                    ""
                }
            ),
        ];
        if let Some(w) = f.distillation {
            settings.push(format!("distillation weight {w}"));
        }
        if let Some(w) = f.l2sp {
            settings.push(format!("L2-SP weight {w}"));
        }
        line("fine-tune", settings.join(", "));
        for (i, mapping) in f.class_mapping.describe().into_iter().enumerate() {
            line(if i == 0 { "class map" } else { "" }, mapping);
        }
    }
    if let Some(q) = &p.quantization {
        line(
            "int8 ranges",
            format!(
                "{} of {} convolution inputs from {} {} frames of `{}` ({}), manifest blake3 {}",
                q.method,
                q.ranges.len(),
                q.frames,
                q.split,
                q.dataset.name,
                q.dataset.region,
                short(&q.dataset.manifest_hash)
            ),
        );
    }
    match (&p.base_checkpoint, &p.base) {
        (Some(hash), Some(_)) => line(
            "base file",
            format!("blake3 {hash} (link {})", link.number + 1),
        ),
        (Some(hash), None) => line(
            "base file",
            format!("blake3 {hash} (its provenance was not recorded)"),
        ),
        (None, Some(_)) => line(
            "base file",
            format!("no hash recorded (link {})", link.number + 1),
        ),
        (None, None) => line("base file", "none recorded".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use burn::backend::Flex;
    use burn::tensor::{bf16, f16};
    use percept_model::ModelSize;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    use super::*;

    type B = Flex;

    /// Every tensor of a file by name: shape and f32 values.
    type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

    /// A nano card (from JSON: fields added later with defaults need no change here).
    fn card() -> ModelCard {
        serde_json::from_value(serde_json::json!({
            "format": MODEL_FORMAT,
            "architecture": PerceptionNetConfig::new(ModelSize::Nano, 2),
            "classes": ["car", "person"],
            "input": { "width": 64, "height": 64 },
            "normalization": Normalization::default(),
            "decode": DecodeOptions::default(),
            "provenance": {
                "site_region": "DE",
                "site_name": "lab",
                "datasets": [],
                "regions": ["DE"],
                "config_hash": "0".repeat(64),
                "base_checkpoint": null,
                "steps": 0,
                "percept_version": "test",
            },
        }))
        .unwrap()
    }

    /// A nano network (seeded) saved as a model file in `dir`.
    fn saved(dir: &Path) -> PathBuf {
        let net = card().architecture.init_seeded::<B>(7, &Default::default());
        let path = dir.join("model.safetensors");
        save_model(&net, &card(), &path).unwrap();
        path
    }

    /// Every tensor of a safetensors file as f32 values (the file must be all f32).
    fn read_f32(path: &Path) -> Tensors {
        let bytes = std::fs::read(path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        file.tensors()
            .into_iter()
            .map(|(name, view)| {
                assert_eq!(view.dtype(), Dtype::F32, "{name}");
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, (view.shape().to_vec(), values))
            })
            .collect()
    }

    /// Writes `from`'s tensors to `to`, each as `encode` gives it (dtype and bytes from the
    /// f32 values) or unchanged (`None`), with the same metadata.
    fn rewrite(from: &Path, to: &Path, encode: impl Fn(&str, &[f32]) -> Option<(Dtype, Vec<u8>)>) {
        let tensors = read_f32(from);
        let bytes = std::fs::read(from).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let encoded: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
            .iter()
            .map(|(name, (shape, values))| {
                let (dtype, data) = encode(name, values).unwrap_or_else(|| {
                    (
                        Dtype::F32,
                        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )
                });
                (name.clone(), shape.clone(), dtype, data)
            })
            .collect();
        let views = encoded.iter().map(|(name, shape, dtype, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        });
        let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
        std::fs::write(to, out).unwrap();
    }

    fn first_param() -> String {
        let net = card().architecture.init::<B>(&Default::default());
        percept_model::params::list_params(&net)[0].path.clone()
    }

    /// Loads `path` with both loaders and saves what each loaded; returns the tensors.
    fn load_both(path: &Path, dir: &Path) -> [Tensors; 2] {
        let device = Default::default();
        let (net, _) = load_model::<B>(path, &device).unwrap();
        let a = dir.join("a.safetensors");
        save_model(&net, &card(), &a).unwrap();
        let fresh = card().architecture.init_seeded::<B>(99, &device);
        let (net, report) = load_matching(fresh, path).unwrap();
        assert!(report.kept.is_empty(), "{:?}", report.kept);
        let b = dir.join("b.safetensors");
        save_model(&net, &card(), &b).unwrap();
        [read_f32(&a), read_f32(&b)]
    }

    fn both_errors(path: &Path) -> [String; 2] {
        let device = Default::default();
        let a = load_model::<B>(path, &device).unwrap_err().to_string();
        let fresh = card().architecture.init::<B>(&device);
        let b = load_matching(fresh, path).unwrap_err().to_string();
        [a, b]
    }

    #[test]
    fn f16_weights_load_as_f32() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let half = dir.path().join("f16.safetensors");
        rewrite(&original, &half, |_, values| {
            let bytes = values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect();
            Some((Dtype::F16, bytes))
        });
        let checked = check_weights(std::fs::read(&half).unwrap(), &half).unwrap();
        let want = read_f32(&original);
        assert_eq!(checked.converted.len(), want.len());
        assert!(checked.converted.iter().all(|(_, d)| *d == Dtype::F16));
        for loaded in load_both(&half, dir.path()) {
            assert_eq!(loaded.len(), want.len());
            for (name, (shape, values)) in &want {
                let rounded: Vec<f32> = values.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
                assert_eq!(loaded[name], (shape.clone(), rounded), "{name}");
            }
        }
    }

    #[test]
    fn bf16_and_f64_tensors_load_as_f32_beside_f32_ones() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let first = first_param();
        let mixed = dir.path().join("mixed.safetensors");
        // One bf16 tensor, the running means f64 (exact), the rest f32.
        rewrite(&original, &mixed, |name, values| {
            if name == first {
                let b = values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes());
                Some((Dtype::BF16, b.collect()))
            } else if name.ends_with("running_mean") {
                let b = values.iter().flat_map(|v| f64::from(*v).to_le_bytes());
                Some((Dtype::F64, b.collect()))
            } else {
                None
            }
        });
        let checked = check_weights(std::fs::read(&mixed).unwrap(), &mixed).unwrap();
        let want = read_f32(&original);
        let running_means = want.keys().filter(|n| n.ends_with("running_mean")).count();
        assert!(running_means > 0);
        assert_eq!(checked.converted.len(), 1 + running_means);
        assert!(checked.converted.contains(&(first.clone(), Dtype::BF16)));
        for loaded in load_both(&mixed, dir.path()) {
            for (name, (shape, values)) in &want {
                let expect: Vec<f32> = if *name == first {
                    values.iter().map(|v| bf16::from_f32(*v).to_f32()).collect()
                } else {
                    values.clone()
                };
                assert_eq!(loaded[name], (shape.clone(), expect), "{name}");
            }
        }
        // An all-f32 file is passed on as it is.
        let bytes = std::fs::read(&original).unwrap();
        let checked = check_weights(bytes.clone(), &original).unwrap();
        assert_eq!((checked.bytes, checked.converted), (bytes, Vec::new()));
    }

    #[test]
    fn integer_and_bool_tensors_are_refused_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let first = first_param();
        for (dtype, width) in [
            (Dtype::I32, 4),
            (Dtype::U8, 1),
            (Dtype::I64, 8),
            (Dtype::BOOL, 1),
        ] {
            let path = dir.path().join(format!("{dtype:?}.safetensors"));
            rewrite(&original, &path, |name, values| {
                (name == first).then(|| (dtype, vec![0u8; values.len() * width]))
            });
            let want = format!(
                "model file {}: tensor `{first}` is {dtype:?}; model weights are F32 (F16, \
                 BF16 and F64 are converted to F32)",
                path.display()
            );
            assert_eq!(both_errors(&path), [want.clone(), want]);
        }
    }

    /// An encoder for [`rewrite`]: tensor `first` with its leading values replaced by `bad`,
    /// as `dtype` (F32 or F16).
    fn poisoned(
        first: String,
        bad: Vec<f32>,
        dtype: Dtype,
    ) -> impl Fn(&str, &[f32]) -> Option<(Dtype, Vec<u8>)> {
        move |name, values| {
            (name == first).then(|| {
                let mut values = values.to_vec();
                values[..bad.len()].copy_from_slice(&bad);
                let bytes = match dtype {
                    Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    Dtype::F16 => values
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    _ => unreachable!("F32 or F16"),
                };
                (dtype, bytes)
            })
        }
    }

    #[test]
    fn nonfinite_weights_are_refused_with_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let first = first_param();
        let n = read_f32(&original)[&first].1.len();
        let nan_inf = dir.path().join("nan.safetensors");
        rewrite(
            &original,
            &nan_inf,
            poisoned(
                first.clone(),
                vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
                Dtype::F32,
            ),
        );
        let want = format!(
            "model file {}: tensor `{}` holds 3 NaN or infinite value(s) of {n}: the weights \
             are unusable (a diverged run?); use an earlier checkpoint",
            nan_inf.display(),
            first_param()
        );
        assert_eq!(both_errors(&nan_inf), [want.clone(), want]);

        let half_inf = dir.path().join("f16-inf.safetensors");
        rewrite(
            &original,
            &half_inf,
            poisoned(first.clone(), vec![f32::INFINITY], Dtype::F16),
        );
        let want = format!(
            "model file {}: tensor `{}` holds 1 NaN or infinite value(s) of {n}: the weights \
             are unusable (a diverged run?); use an earlier checkpoint",
            half_inf.display(),
            first_param()
        );
        assert_eq!(both_errors(&half_inf), [want.clone(), want]);

        let first = first_param();
        let wide = dir.path().join("f64-wide.safetensors");
        rewrite(&original, &wide, |name, values| {
            (name == first).then(|| {
                let mut values: Vec<f64> = values.iter().map(|v| f64::from(*v)).collect();
                values[0] = 1e300;
                values[1] = f64::NAN;
                (
                    Dtype::F64,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
        });
        let want = format!(
            "model file {}: tensor `{first}` holds 2 NaN, infinite or beyond f32's range \
             value(s) of {n}: the weights are unusable (a diverged run?); use an earlier \
             checkpoint",
            wide.display()
        );
        assert_eq!(both_errors(&wide), [want.clone(), want]);
    }

    #[test]
    fn a_tensor_shorter_than_its_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let bytes = std::fs::read(&original).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        // Drop the last 4 data bytes and shorten the tensor ending there by 4 bytes in the
        // header: its byte length no longer matches its shape.
        let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
        let end = bytes.len() - 8 - header_len;
        let edited = header.replace(&format!(",{end}]"), &format!(",{}]", end - 4));
        assert_ne!(edited, header);
        let edited = format!("{edited:<header_len$}");
        let mut short = bytes[..8].to_vec();
        short.extend_from_slice(edited.as_bytes());
        short.extend_from_slice(&bytes[8 + header_len..bytes.len() - 4]);
        let path = dir.path().join("short.safetensors");
        std::fs::write(&path, short).unwrap();
        let err = both_errors(&path);
        assert!(
            err[0].starts_with(&format!(
                "model file {}: not a safetensors file (",
                path.display()
            )),
            "{}",
            err[0]
        );
        assert_eq!(err[0], err[1]);
    }

    #[test]
    fn a_card_whose_class_count_or_input_size_could_not_be_real_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let original = saved(dir.path());
        let bytes = std::fs::read(&original).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let with_card = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
            let mut card = serde_json::to_value(card()).unwrap();
            edit(&mut card);
            let meta = HashMap::from([(MODEL_CARD_KEY.to_string(), card.to_string())]);
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                safetensors::serialize(file.tensors(), Some(meta)).unwrap(),
            )
            .unwrap();
            path
        };
        let classes = with_card("classes.safetensors", &|c| {
            c["architecture"]["num_classes"] = 1_000_000_000_000u64.into();
        });
        let input = with_card("input.safetensors", &|c| {
            c["input"] = serde_json::json!({ "width": 1 << 20, "height": 1 << 20 });
        });
        let device = Default::default();
        assert_eq!(
            load_model::<B>(&classes, &device).unwrap_err().to_string(),
            format!(
                "model file {}: the model card lists 2 classes but its architecture has \
                 num_classes = 1000000000000",
                classes.display()
            )
        );
        assert_eq!(
            read_model_card(&input).unwrap_err().to_string(),
            format!(
                "model file {}: the model card's input size 1048576x1048576 is over 33554432 \
                 pixels",
                input.display()
            )
        );
    }
}
