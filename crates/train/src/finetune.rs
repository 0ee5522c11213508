//! Country fine-tuning: a run that starts from a base model (the global one, or another
//! country's) and adapts it to one country's roads with that country's frames only.
//!
//! - [`FinetuneBase`] opens the base named by `[finetune]`, refuses an architecture that
//!   differs from the config's (naming every difference), and maps the base's classes onto the
//!   country profile's ([`percept_data::ClassMapping`]).
//! - [`FinetuneBase::student`] loads the base's weights into the new network: everything but
//!   the detection head's class outputs as is; their rows by class: a kept class copies its
//!   row, a merged class starts from the mean of its sources' weights with the bias of "any
//!   source present" (`logit(1 - prod(1 - sigmoid(b)))`), a new class keeps its fresh init, a
//!   dropped class goes.
//! - [`FinetuneTerms`] holds what each step needs to keep the global skills without foreign
//!   data: the frozen base as a distillation teacher
//!   ([`percept_model::distillation_loss`]) and the base weights for L2-SP.
//!
//! Forgetting is the known failure of sequential fine-tuning ("catastrophic forgetting" across
//! Cityscapes -> BDD100K -> IDD in MDIL, Garg et al., WACV 2022); the usual cure, replaying the
//! earlier data, is what a residency-bound site may not do. Distillation (Li & Hoiem, "Learning
//! without Forgetting", 2016) and L2-SP (Li et al., ICML 2018) need nothing but the base
//! weights, which may travel.

use std::collections::HashMap;
use std::path::PathBuf;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorData;
use percept_data::{ClassMapping, ClassOrigin, CountryProfile};
use percept_eval::model_file::{
    check_weights, load_model, read_model_card, BaseLink, FinetuneRecord, ModelCard, Provenance,
};
use percept_model::params::{list_params, param_values};
use percept_model::{FrozenNorms, PerceptionNet};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::config::{FinetuneConfig, FreezePolicy, RunConfig};
use crate::TrainError;

/// Suffix of the detection head's class-output tensors (one per level): their rows are classes.
const CLASS_ROWS: [&str; 2] = ["cls_out.weight", "cls_out.bias"];

fn is_class_rows(path: &str) -> bool {
    CLASS_ROWS.iter().any(|s| path.ends_with(s))
}

/// The base model of a fine-tune, checked against the run's config and mapped onto its
/// country's classes.
#[derive(Debug, Clone)]
pub struct FinetuneBase {
    pub path: PathBuf,
    /// blake3 of the base file.
    pub hash: String,
    pub card: ModelCard,
    pub profile: CountryProfile,
    /// blake3 of the profile as resolved (its JSON): formatting and comments do not count.
    pub profile_hash: String,
    pub mapping: ClassMapping,
}

impl FinetuneBase {
    /// Opens `config.finetune.base` with `profile` (resolved by the caller from
    /// `finetune.profile`). Every difference between the base's architecture and the config is
    /// named in one error.
    pub fn open(config: &RunConfig, profile: CountryProfile) -> Result<Self, TrainError> {
        let f = finetune_config(config)?;
        let path = f.base.clone().ok_or_else(|| {
            TrainError::Invalid(
                "finetune.base is not set: give the base model with `percept finetune --base \
                 MODEL` (or finetune.base in the config)"
                    .into(),
            )
        })?;
        let bytes = std::fs::read(&path).map_err(|e| {
            TrainError::Invalid(format!(
                "base model {} (finetune.base, --base): {e}; give a percept checkpoint or \
                 export",
                path.display()
            ))
        })?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        drop(bytes);
        let card = read_model_card(&path)?;
        let mut differences = Vec::new();
        let base = &card.architecture;
        if base.size != config.model.size {
            differences.push(format!(
                "model.size: the base is {}, the config says {}",
                base.size.name(),
                config.model.size.name()
            ));
        }
        for (task, b, c) in [
            (
                "detection",
                base.tasks.detection,
                config.model.tasks.detection,
            ),
            ("drivable", base.tasks.drivable, config.model.tasks.drivable),
            ("lanes", base.tasks.lanes, config.model.tasks.lanes),
        ] {
            if b != c {
                let on = |x: bool| if x { "on" } else { "off" };
                differences.push(format!(
                    "model.tasks.{task}: {} in the base, {} in the config",
                    on(b),
                    on(c)
                ));
            }
        }
        if !differences.is_empty() {
            return Err(TrainError::Invalid(format!(
                "base model {} does not fit the config's architecture; a fine-tune keeps the \
                 base's architecture (only the class list may change, through the profile):\n  \
                 {}",
                path.display(),
                differences.join("\n  ")
            )));
        }
        if profile.code != config.site.region {
            tracing::warn!(
                "profile {} is for another country than the site's region {}",
                profile.code,
                config.site.region
            );
        }
        let (w, h) = (profile.input.width as usize, profile.input.height as usize);
        if (w, h) != (config.model.input.width, config.model.input.height) {
            tracing::info!(
                "profile {} suggests a {w}x{h} input ({}); the config trains at {}x{}",
                profile.code,
                profile.input.why,
                config.model.input.width,
                config.model.input.height
            );
        }
        let mapping = profile.mapping(&card.classes)?;
        Ok(FinetuneBase {
            path,
            hash,
            card,
            profile_hash: blake3::hash(
                &serde_json::to_vec(&profile).expect("a profile serialises"),
            )
            .to_hex()
            .to_string(),
            profile,
            mapping,
        })
    }

    /// A resumed fine-tune must have this base: the distillation teacher and the L2-SP
    /// anchor are the weights the run started from. `saved` is the provenance of the
    /// checkpoint it resumes from.
    pub fn check_resumed(&self, saved: &Provenance) -> Result<(), TrainError> {
        if saved.base_checkpoint.as_deref() != Some(self.hash.as_str()) {
            return Err(TrainError::Invalid(format!(
                "base model {} (blake3 {}) is not the one this run started from (blake3 {}): \
                 resume with the same file; nothing was changed",
                self.path.display(),
                &self.hash[..12],
                saved
                    .base_checkpoint
                    .as_deref()
                    .and_then(|h| h.get(..12))
                    .unwrap_or("none")
            )));
        }
        Ok(())
    }

    /// The run's datasets must be labelled in the profile's class list.
    pub fn check_classes(&self, data_classes: &[String]) -> Result<(), TrainError> {
        let wanted = self.mapping.class_names();
        if data_classes != wanted.as_slice() {
            return Err(TrainError::Invalid(format!(
                "the datasets' classes are [{}] but profile {} lists [{}]: fine-tune on data \
                 labelled in the country's class list (`percept synth --country {}` makes \
                 such data), or fix the profile's [[classes]]",
                data_classes.join(", "),
                self.profile.code,
                wanted.join(", "),
                self.profile.code
            )));
        }
        Ok(())
    }

    /// What the run's provenance records about the fine-tune.
    pub fn record(&self, f: &FinetuneConfig) -> FinetuneRecord {
        FinetuneRecord {
            profile: self.profile.code.clone(),
            profile_hash: self.profile_hash.clone(),
            class_mapping: self.mapping.clone(),
            freeze: f.freeze.name().into(),
            freeze_norm_statistics: f.freeze_norm_statistics && f.freeze != FreezePolicy::Nothing,
            distillation: f.distillation.map(|d| d.weight),
            l2sp: f.l2sp,
        }
    }

    /// The link to the base in the run's provenance.
    pub fn link(&self) -> BaseLink {
        BaseLink::of(&self.card)
    }

    /// For each of the run's classes, the base classes it comes from (empty: new).
    pub fn sources(&self) -> Vec<Vec<usize>> {
        self.mapping
            .classes
            .iter()
            .map(|(_, origin)| match origin {
                ClassOrigin::Kept(g) => vec![*g],
                ClassOrigin::Merged(g) => g.clone(),
                ClassOrigin::New => Vec::new(),
            })
            .collect()
    }

    /// `net` (freshly initialised for the country's classes) with the base's weights, class
    /// rows mapped (see the module docs).
    pub fn student<B: Backend>(
        &self,
        net: PerceptionNet<B>,
    ) -> Result<PerceptionNet<B>, TrainError> {
        let bad = |message: String| TrainError::ModelFile {
            path: self.path.clone(),
            message,
        };
        let bytes = std::fs::read(&self.path).map_err(|e| TrainError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        if blake3::hash(&bytes).to_hex().as_str() != self.hash {
            return Err(bad(
                "the file changed while the fine-tune was starting".into()
            ));
        }
        let bytes = check_weights(bytes, &self.path)
            .map_err(percept_eval::EvalError::from)?
            .bytes;
        let fresh = class_rows_of(&net);
        let mapped = map_class_rows(&bytes, &fresh, &self.mapping).map_err(bad)?;
        let mut net = net;
        let mut store = SafetensorsStore::from_bytes(Some(mapped));
        let result = net
            .load_from(&mut store)
            .map_err(|e| bad(format!("could not load its weights: {e}")))?;
        if !result.errors.is_empty() || !result.missing.is_empty() {
            return Err(bad(format!(
                "its weights do not fit the network: errors {:?}, missing {:?}",
                result.errors, result.missing
            )));
        }
        Ok(net)
    }
}

fn finetune_config(config: &RunConfig) -> Result<&FinetuneConfig, TrainError> {
    config
        .finetune
        .as_ref()
        .ok_or_else(|| TrainError::Invalid("the config has no [finetune] table".into()))
}

/// The batch-norm parts a config freezes.
pub fn frozen_norms(config: &RunConfig) -> FrozenNorms {
    match &config.finetune {
        Some(f) if f.freeze_norm_statistics => FrozenNorms {
            backbone: f.freeze != FreezePolicy::Nothing,
            neck: f.freeze == FreezePolicy::BackboneAndNeck,
        },
        _ => FrozenNorms::default(),
    }
}

/// `net` with the parts the config freezes frozen (no gradients).
pub fn freeze<B: Backend>(net: PerceptionNet<B>, config: &RunConfig) -> PerceptionNet<B> {
    match &config.finetune {
        Some(f) => net.freeze(
            f.freeze != FreezePolicy::Nothing,
            f.freeze == FreezePolicy::BackboneAndNeck,
        ),
        None => net,
    }
}

/// A class-output tensor's values and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The detection head's class-output tensors of `net`, by path.
pub fn class_rows_of<B: Backend>(net: &PerceptionNet<B>) -> HashMap<String, Rows> {
    param_values(net)
        .into_iter()
        .filter(|(p, _)| is_class_rows(&p.path))
        .map(|(p, data)| {
            let values = data.convert::<f32>().to_vec().expect("f32 data");
            (
                p.path,
                Rows {
                    shape: p.dims,
                    values,
                },
            )
        })
        .collect()
}

/// A copy of the safetensors file `base` (all f32) whose class-output tensors are replaced by
/// the country's: rows mapped from the base's by `mapping`, new classes' rows from `fresh`.
pub fn map_class_rows(
    base: &[u8],
    fresh: &HashMap<String, Rows>,
    mapping: &ClassMapping,
) -> Result<Vec<u8>, String> {
    let file = safetensors::SafeTensors::deserialize(base)
        .map_err(|e| format!("not a safetensors file ({e})"))?;
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut replaced = 0;
    for (name, view) in file.tensors() {
        if !is_class_rows(&name) {
            owned.push((name, view.shape().to_vec(), view.data().to_vec()));
            continue;
        }
        let target = fresh
            .get(&name)
            .ok_or_else(|| format!("tensor {name} has no counterpart in the network"))?;
        let base_values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let base_rows = view.shape()[0];
        if base_rows != mapping.global.len() {
            return Err(format!(
                "tensor {name} has {base_rows} class rows but the base lists {} classes",
                mapping.global.len()
            ));
        }
        let width = base_values.len() / base_rows.max(1);
        let is_bias = name.ends_with("bias");
        let mut values = Vec::with_capacity(target.values.len());
        for (c, (_, origin)) in mapping.classes.iter().enumerate() {
            let row = |g: usize| &base_values[g * width..(g + 1) * width];
            match origin {
                ClassOrigin::Kept(g) => values.extend_from_slice(row(*g)),
                ClassOrigin::Merged(gs) if is_bias => {
                    // "Any source present": 1 - prod(1 - sigmoid(b)).
                    let absent: f64 = gs
                        .iter()
                        .map(|&g| 1.0 - 1.0 / (1.0 + (-(row(g)[0] as f64)).exp()))
                        .product();
                    let p = (1.0 - absent).clamp(1e-6, 1.0 - 1e-6);
                    values.push((p / (1.0 - p)).ln() as f32);
                }
                ClassOrigin::Merged(gs) => {
                    for k in 0..width {
                        let sum: f32 = gs.iter().map(|&g| row(g)[k]).sum();
                        values.push(sum / gs.len() as f32);
                    }
                }
                ClassOrigin::New => {
                    values.extend_from_slice(&target.values[c * width..(c + 1) * width])
                }
            }
        }
        let mut shape = view.shape().to_vec();
        shape[0] = mapping.classes.len();
        if shape != target.shape {
            return Err(format!(
                "tensor {name}: mapped shape {shape:?} but the network wants {:?}",
                target.shape
            ));
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name, shape, bytes));
        replaced += 1;
    }
    if replaced != fresh.len() {
        return Err(format!(
            "the base has {replaced} class-output tensors, the network {}",
            fresh.len()
        ));
    }
    let metadata = safetensors::SafeTensors::read_metadata(base)
        .ok()
        .and_then(|(_, m)| m.metadata().clone());
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| format!("tensor {name}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize(views, metadata).map_err(|e| e.to_string())
}

/// What a fine-tune's steps add to the task loss: distillation from the frozen base and the
/// L2-SP pull towards its weights.
pub struct FinetuneTerms<B: AutodiffBackend> {
    /// The base model on the training device, without autodiff, with its weight.
    pub teacher: Option<(PerceptionNet<B::InnerBackend>, f32)>,
    /// Per run class, the base classes it comes from.
    pub sources: Vec<Vec<usize>>,
    /// `alpha` and the base weights by the student's parameter ids.
    pub l2sp: Option<(f32, GradientsParams)>,
}

impl<B: AutodiffBackend> FinetuneTerms<B> {
    /// The terms `config.finetune` asks for, for `student` (its parameter ids, after any
    /// resume); `None` when it asks for neither.
    pub fn new(
        base: &FinetuneBase,
        config: &RunConfig,
        student: &PerceptionNet<B>,
        device: &B::Device,
    ) -> Result<Option<Self>, TrainError> {
        let f = finetune_config(config)?;
        if f.distillation.is_none() && f.l2sp.is_none() {
            return Ok(None);
        }
        let (teacher, _) = load_model::<B::InnerBackend>(&base.path, device)?;
        let l2sp = f.l2sp.map(|alpha| (alpha, anchors::<B>(&teacher, student)));
        Ok(Some(FinetuneTerms {
            teacher: f.distillation.map(|d| (teacher, d.weight)),
            sources: base.sources(),
            l2sp,
        }))
    }

    /// Adds L2-SP's gradient `alpha * (w - w0)` to `grads` for every anchored parameter that
    /// trains; returns the penalty `alpha / 2 * sum |w - w0|^2`.
    pub fn apply_l2sp(
        &self,
        net: &PerceptionNet<B>,
        grads: &mut GradientsParams,
    ) -> Option<Tensor<B::InnerBackend, 1>> {
        let (alpha, anchors) = self.l2sp.as_ref()?;
        let mut pull = L2Sp::<B> {
            alpha: *alpha,
            anchors,
            grads,
            penalty: None,
        };
        net.visit(&mut pull);
        pull.penalty.map(|p| p.mul_scalar(*alpha / 2.0))
    }
}

/// The base's weights by the student's parameter ids, for every parameter both have with the
/// same path and shape, except the class outputs (their rows mean other classes).
fn anchors<B: AutodiffBackend>(
    teacher: &PerceptionNet<B::InnerBackend>,
    student: &PerceptionNet<B>,
) -> GradientsParams {
    let mut base: HashMap<String, (Vec<usize>, TensorData)> = param_values(teacher)
        .into_iter()
        .filter(|(p, _)| !is_class_rows(&p.path))
        .map(|(p, data)| (p.path, (p.dims, data)))
        .collect();
    let by_id: HashMap<ParamId, TensorData> = list_params(student)
        .into_iter()
        .filter_map(|p| match base.remove(&p.path) {
            Some((dims, data)) if dims == p.dims => Some((p.id, data)),
            _ => None,
        })
        .collect();
    struct Register {
        by_id: HashMap<ParamId, TensorData>,
        out: GradientsParams,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Register {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(data) = self.by_id.remove(&param.id) {
                let device = param.val().device();
                self.out
                    .register::<B::InnerBackend, D>(param.id, Tensor::from_data(data, &device));
            }
        }
    }
    let mut register = Register {
        by_id,
        out: GradientsParams::new(),
    };
    student.visit(&mut register);
    register.out
}

struct L2Sp<'a, B: AutodiffBackend> {
    alpha: f32,
    anchors: &'a GradientsParams,
    grads: &'a mut GradientsParams,
    penalty: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for L2Sp<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(anchor) = self.anchors.get::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let value = param.val();
        if !value.is_require_grad() {
            // Frozen: it never moves from the base.
            return;
        }
        let diff = value.inner() - anchor;
        let sq = diff.clone().square().sum();
        self.penalty = Some(match self.penalty.take() {
            Some(p) => p + sq,
            None => sq,
        });
        let pull = diff.mul_scalar(self.alpha);
        let grad = match self.grads.remove::<B::InnerBackend, D>(param.id) {
            Some(g) => g + pull,
            None => pull,
        };
        self.grads.register::<B::InnerBackend, D>(param.id, grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(shape: Vec<usize>, values: Vec<f32>) -> Rows {
        Rows { shape, values }
    }

    #[test]
    fn class_rows_are_copied_merged_or_fresh() {
        // A base with 3 classes (a, b, c), 2 inputs per row, plus one other tensor.
        let weight: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let bias: Vec<f32> = vec![0.0, (1.0f32 / 3.0).ln(), -2.0];
        let other: Vec<f32> = vec![7.0, 8.0];
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (wb, bb, ob) = (bytes(&weight), bytes(&bias), bytes(&other));
        let base = safetensors::serialize(
            vec![
                (
                    "h.cls_out.weight",
                    TensorView::new(Dtype::F32, vec![3, 2], &wb).unwrap(),
                ),
                (
                    "h.cls_out.bias",
                    TensorView::new(Dtype::F32, vec![3], &bb).unwrap(),
                ),
                (
                    "h.other",
                    TensorView::new(Dtype::F32, vec![2], &ob).unwrap(),
                ),
            ],
            None,
        )
        .unwrap();
        // Country: c kept, a + b merged, one new class.
        let mapping = ClassMapping {
            global: vec!["a".into(), "b".into(), "c".into()],
            classes: vec![
                ("c".into(), ClassOrigin::Kept(2)),
                ("ab".into(), ClassOrigin::Merged(vec![0, 1])),
                ("new".into(), ClassOrigin::New),
            ],
            dropped: vec![],
        };
        let fresh = HashMap::from([
            (
                "h.cls_out.weight".to_string(),
                rows(vec![3, 2], vec![-1.0; 6]),
            ),
            ("h.cls_out.bias".to_string(), rows(vec![3], vec![-9.0; 3])),
        ]);
        let out = map_class_rows(&base, &fresh, &mapping).unwrap();
        let file = safetensors::SafeTensors::deserialize(&out).unwrap();
        let read = |n: &str| -> Vec<f32> {
            file.tensor(n)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        assert_eq!(
            read("h.cls_out.weight"),
            vec![5.0, 6.0, 2.0, 3.0, -1.0, -1.0]
        );
        let b = read("h.cls_out.bias");
        assert_eq!(b[0], -2.0);
        // sigmoid(0) = 0.5, sigmoid(ln 1/3) = 0.25: any present = 1 - 0.5 * 0.75 = 0.625.
        assert!((b[1] - (0.625f32 / 0.375).ln()).abs() < 1e-6, "{}", b[1]);
        assert_eq!(b[2], -9.0);
        assert_eq!(read("h.other"), other);
        assert_eq!(file.tensor("h.cls_out.weight").unwrap().shape(), &[3, 2]);
    }
}
