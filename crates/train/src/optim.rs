//! The optimiser of a run: burn's AdamW or SGD with momentum, one instance per parameter
//! group, with a global gradient-norm clip and a finiteness check in front.
//!
//! Parameter groups: burn's optimisers apply one weight decay and one learning rate to every
//! parameter they are given. Weight-decay exclusions (1-D parameters: norm scales and shifts,
//! biases) and per-module learning-rate multipliers are both a matter of giving each optimiser
//! only its group's gradients ([`GradientsParams`] split by [`ParamId`]); a parameter without a
//! gradient in a step is left untouched by burn's optimiser adaptor.
//!
//! Clipping is over the global norm of all gradients together (PyTorch's `clip_grad_norm_`);
//! burn 0.21's `GradientClipping::Norm` clips each parameter's norm on its own, which changes the
//! update's direction. The global norm is computed anyway, to detect non-finite gradients.

use std::collections::{BTreeMap, HashMap};

use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
pub use percept_model::params::{list_params, ParamInfo};
use percept_model::PerceptionNet;

use crate::checkpoint::decode_record;
use crate::config::{OptimizerConfig, OptimizerKind};
use crate::lr_multipliers::{matches_prefix, unmatched_lr_prefixes};
use crate::TrainError;

/// Parameters that share an optimiser instance.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// `decay` or `no_decay`, prefixed by the multiplier's module prefix when there is one
    /// (`backbone/no_decay`).
    pub name: String,
    pub weight_decay: bool,
    pub lr_factor: f64,
    pub params: Vec<ParamId>,
    /// Scalars in the group.
    pub elements: usize,
}

/// Splits parameters into groups by weight decay and learning-rate multiplier. A multiplier
/// prefix that matches no parameter is an error listing the top-level modules.
pub fn param_groups(
    params: &[ParamInfo],
    config: &OptimizerConfig,
) -> Result<Vec<ParamGroup>, TrainError> {
    let paths: Vec<&str> = params.iter().map(|p| p.path.as_str()).collect();
    if let Some(problem) = unmatched_lr_prefixes(&paths, &config.lr_multipliers)
        .into_iter()
        .next()
    {
        return Err(TrainError::Invalid(problem));
    }
    let mut groups: BTreeMap<(String, bool), ParamGroup> = BTreeMap::new();
    for p in params {
        let multiplier = config
            .lr_multipliers
            .iter()
            .filter(|(prefix, _)| matches_prefix(&p.path, prefix))
            .max_by_key(|(prefix, _)| prefix.len());
        let decay = config.decay_norms_and_biases || p.dims.len() > 1;
        let (prefix, lr_factor) = match multiplier {
            Some((prefix, m)) => (prefix.clone(), *m),
            None => (String::new(), 1.0),
        };
        let kind = if decay { "decay" } else { "no_decay" };
        let name = if prefix.is_empty() {
            kind.to_string()
        } else {
            format!("{prefix}/{kind}")
        };
        let group = groups.entry((prefix, decay)).or_insert_with(|| ParamGroup {
            name,
            weight_decay: decay,
            lr_factor,
            params: Vec::new(),
            elements: 0,
        });
        group.params.push(p.id);
        group.elements += p.dims.iter().product::<usize>();
    }
    Ok(groups.into_values().collect())
}

enum Rule<B: AutodiffBackend> {
    AdamW(OptimizerAdaptor<AdamW, PerceptionNet<B>, B>),
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, PerceptionNet<B>, B>),
}

impl<B: AutodiffBackend> Rule<B> {
    fn new(config: &OptimizerConfig, weight_decay: f32) -> Self {
        match config.kind {
            OptimizerKind::AdamW => Rule::AdamW(
                AdamWConfig::new()
                    .with_beta_1(config.betas[0])
                    .with_beta_2(config.betas[1])
                    .with_epsilon(config.epsilon)
                    .with_weight_decay(weight_decay)
                    .init(),
            ),
            OptimizerKind::Sgd => Rule::Sgd(
                SgdConfig::new()
                    .with_weight_decay((weight_decay > 0.0).then_some(WeightDecayConfig {
                        penalty: weight_decay,
                    }))
                    .with_momentum((config.momentum > 0.0).then_some(MomentumConfig {
                        momentum: config.momentum,
                        dampening: 0.0,
                        nesterov: config.nesterov,
                    }))
                    .init(),
            ),
        }
    }

    fn step(&mut self, lr: f64, net: PerceptionNet<B>, grads: GradientsParams) -> PerceptionNet<B> {
        match self {
            Rule::AdamW(o) => o.step(lr, net, grads),
            Rule::Sgd(o) => o.step(lr, net, grads),
        }
    }

    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let result = match self {
            Rule::AdamW(o) => recorder.record(o.to_record(), ()),
            Rule::Sgd(o) => recorder.record(o.to_record(), ()),
        };
        result.map_err(|e| e.to_string())
    }

    fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> Result<Self, String> {
        Ok(match self {
            Rule::AdamW(o) => Rule::AdamW(o.load_record(decode_record::<B, _>(&bytes, device)?)),
            Rule::Sgd(o) => Rule::Sgd(o.load_record(decode_record::<B, _>(&bytes, device)?)),
        })
    }
}

/// What the check before an update found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheck {
    /// Global L2 norm of the gradients before clipping.
    pub norm: f32,
    /// Loss and gradient norm are finite: the update may be applied.
    pub finite: bool,
}

/// The run's optimiser: one burn optimiser per [`ParamGroup`].
pub struct RunOptimizer<B: AutodiffBackend> {
    groups: Vec<(ParamGroup, Rule<B>)>,
    group_of: HashMap<ParamId, usize>,
    grad_clip: Option<f32>,
}

impl<B: AutodiffBackend> RunOptimizer<B> {
    pub fn new(net: &PerceptionNet<B>, config: &OptimizerConfig) -> Result<Self, TrainError> {
        let groups = param_groups(&list_params(net), config)?;
        let mut group_of = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for id in &g.params {
                group_of.insert(*id, i);
            }
        }
        let groups = groups
            .into_iter()
            .map(|g| {
                let decay = if g.weight_decay {
                    config.weight_decay
                } else {
                    0.0
                };
                (g, Rule::new(config, decay))
            })
            .collect();
        Ok(RunOptimizer {
            groups,
            group_of,
            grad_clip: config.grad_clip,
        })
    }

    pub fn groups(&self) -> impl Iterator<Item = &ParamGroup> {
        self.groups.iter().map(|(g, _)| g)
    }

    /// Reads the loss values and the gradients' global norm with one device-to-host transfer;
    /// when the loss (`losses[0]`) and the norm are finite and the norm exceeds `grad_clip`,
    /// scales the gradients down to it. Returns the loss values too.
    pub fn check_and_clip(
        &self,
        net: &PerceptionNet<B>,
        grads: &mut GradientsParams,
        losses: Tensor<B::InnerBackend, 1>,
    ) -> (Vec<f32>, GradCheck) {
        let mut norm = SquaredNorm::<B> { grads, total: None };
        net.visit(&mut norm);
        let device = losses.device();
        let sq = norm.total.unwrap_or_else(|| Tensor::zeros([1], &device));
        let mut values: Vec<f32> = Tensor::cat(vec![losses, sq], 0)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 data");
        let norm = values.pop().expect("the norm").sqrt();
        let finite = values[0].is_finite() && norm.is_finite();
        if finite {
            if let Some(max) = self.grad_clip {
                if norm > max {
                    // PyTorch's clip_grad_norm_ factor, with its epsilon.
                    let factor = max / (norm + 1e-6);
                    net.visit(&mut ScaleGrads { grads, factor });
                }
            }
        }
        (values, GradCheck { norm, finite })
    }

    /// Applies one update: each group's optimiser gets its group's gradients and
    /// `lr * lr_factor`.
    pub fn step(
        &mut self,
        lr: f64,
        mut net: PerceptionNet<B>,
        mut grads: GradientsParams,
    ) -> PerceptionNet<B> {
        let mut split: Vec<GradientsParams> =
            self.groups.iter().map(|_| GradientsParams::new()).collect();
        net.visit(&mut SplitGrads {
            grads: &mut grads,
            group_of: &self.group_of,
            split: &mut split,
        });
        for ((group, rule), grads) in self.groups.iter_mut().zip(split) {
            if grads.is_empty() {
                continue;
            }
            net = rule.step(lr * group.lr_factor, net, grads);
        }
        net
    }

    /// Each group's optimiser state (moments, momentum), serialised by burn's recorder at full
    /// precision, by group name.
    pub fn to_bytes(&self) -> Result<Vec<(String, Vec<u8>)>, TrainError> {
        self.groups
            .iter()
            .map(|(g, rule)| {
                rule.to_bytes()
                    .map(|b| (g.name.clone(), b))
                    .map_err(|e| TrainError::Invalid(format!("optimizer state of {}: {e}", g.name)))
            })
            .collect()
    }

    /// Restores the state written by [`Self::to_bytes`]; every group must be present.
    pub fn load_bytes(
        mut self,
        mut states: BTreeMap<String, Vec<u8>>,
        device: &B::Device,
    ) -> Result<Self, String> {
        let mut groups = Vec::new();
        for (g, rule) in self.groups.drain(..) {
            let bytes = states
                .remove(&g.name)
                .ok_or_else(|| format!("no optimizer state for parameter group {}", g.name))?;
            let rule = rule
                .load_bytes(bytes, device)
                .map_err(|e| format!("optimizer state of {}: {e}", g.name))?;
            groups.push((g, rule));
        }
        if let Some(extra) = states.keys().next() {
            return Err(format!(
                "optimizer state for parameter group {extra}, which this config does not have"
            ));
        }
        self.groups = groups;
        Ok(self)
    }
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

struct SplitGrads<'a> {
    grads: &'a mut GradientsParams,
    group_of: &'a HashMap<ParamId, usize>,
    split: &'a mut [GradientsParams],
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let (Some(g), Some(&i)) = (
            self.grads.remove::<B::InnerBackend, D>(param.id),
            self.group_of.get(&param.id),
        ) {
            self.split[i].register::<B::InnerBackend, D>(param.id, g);
        }
    }
}
