//! The multi-task perception network and its configuration.

use std::sync::Mutex;

use burn::module::ModuleMapper;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneConfig};
use crate::batch_norm::{enter_part, NetPart};
use crate::detection_head::{DetectionHead, DetectionHeadConfig, DetectionOutput};
use crate::inference_graph::{GraphBuilder, InferenceGraph, OutputKind};
use crate::neck::{Neck, NeckConfig};
use crate::segmentation_head::{SegmentationHead, SegmentationHeadConfig};
use crate::ModelError;

/// Model sizes: width and depth multipliers over a YOLOv8-style base of
/// channels `[64, 128, 256, 512, 1024]` and CSP depths `[3, 6, 6, 3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelSize {
    Nano,
    Small,
    Medium,
}

impl ModelSize {
    pub const ALL: [ModelSize; 3] = [ModelSize::Nano, ModelSize::Small, ModelSize::Medium];

    /// `(width, depth)` multipliers.
    pub fn multipliers(self) -> (f64, f64) {
        match self {
            ModelSize::Nano => (0.25, 0.34),
            ModelSize::Small => (0.375, 0.34),
            ModelSize::Medium => (0.4375, 0.67),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelSize::Nano => "nano",
            ModelSize::Small => "small",
            ModelSize::Medium => "medium",
        }
    }
}

/// Which tasks the network is built for; a task switched off has no head and no loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tasks {
    pub detection: bool,
    pub drivable: bool,
    pub lanes: bool,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks {
            detection: true,
            drivable: true,
            lanes: true,
        }
    }
}

/// Architecture of a [`PerceptionNet`]; stored in every checkpoint and export so the network
/// can be rebuilt from the file alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceptionNetConfig {
    pub size: ModelSize,
    pub num_classes: usize,
    #[serde(default)]
    pub tasks: Tasks,
}

/// Outputs of a forward pass.
#[derive(Debug, Clone)]
pub struct PerceptionOutput<B: Backend> {
    /// Detection outputs, when the detection task is on.
    pub detection: Option<DetectionOutput<B>>,
    /// Drivable-area logits `[batch, 1, height, width]`.
    pub drivable: Option<Tensor<B, 4>>,
    /// Lane-line logits `[batch, 1, height, width]`.
    pub lanes: Option<Tensor<B, 4>>,
}

/// Anything that maps normalised images to [`PerceptionOutput`]s: the network itself, or an
/// exported graph run by another runtime (ONNX Runtime), so evaluation and prediction judge
/// both the same way.
pub trait PerceptionModel<B: Backend> {
    /// `images: [batch, 3, height, width]`, normalised -> [`PerceptionOutput`].
    fn perceive(&self, images: Tensor<B, 4>) -> PerceptionOutput<B>;
}

impl<B: Backend> PerceptionModel<B> for PerceptionNet<B> {
    fn perceive(&self, images: Tensor<B, 4>) -> PerceptionOutput<B> {
        self.forward(images)
    }
}

/// Multi-task network: CSP backbone, FPN/PAN neck, anchor-free detection head, drivable-area
/// and lane-line heads. Input `[batch, 3, height, width]`, normalised, both sides multiples of 32.
#[derive(Module, Debug)]
pub struct PerceptionNet<B: Backend> {
    backbone: Backbone<B>,
    neck: Neck<B>,
    detection_head: Option<DetectionHead<B>>,
    drivable_head: Option<SegmentationHead<B>>,
    lane_head: Option<SegmentationHead<B>>,
}

/// A mapper that changes nothing: mapping takes each parameter's value, which draws it.
struct DrawParameters;

impl<B: Backend> ModuleMapper<B> for DrawParameters {}

/// Sizes of the parts of a network, derived from its config.
struct Parts {
    backbone: BackboneConfig,
    neck: NeckConfig,
    detection: DetectionHeadConfig,
    segmentation: SegmentationHeadConfig,
}

fn scaled(base: usize, m: f64) -> usize {
    // Round to a multiple of 8 (kernels like aligned channel counts), at least 8.
    (((base as f64 * m) / 8.0).round() as usize * 8).max(8)
}

impl PerceptionNetConfig {
    pub fn new(size: ModelSize, num_classes: usize) -> Self {
        PerceptionNetConfig {
            size,
            num_classes,
            tasks: Tasks::default(),
        }
    }

    /// Checks the config; the message names the key and what would be valid.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.num_classes == 0 && self.tasks.detection {
            return Err(ModelError::Config(
                "model.num_classes is 0 but detection is on: give at least one class".into(),
            ));
        }
        if !(self.tasks.detection || self.tasks.drivable || self.tasks.lanes) {
            return Err(ModelError::Config(
                "every task is off (model.tasks): turn on detection, drivable or lanes".into(),
            ));
        }
        Ok(())
    }

    fn parts(&self) -> Parts {
        let (wm, dm) = self.size.multipliers();
        let widths = [64, 128, 256, 512, 1024].map(|c| scaled(c, wm));
        let depths = [3, 6, 6, 3].map(|d| ((d as f64 * dm).round() as usize).max(1));
        let hidden = widths[2].max(32);
        Parts {
            backbone: BackboneConfig::new(widths, depths),
            neck: NeckConfig::new([widths[2], widths[3], widths[4]], depths[0]),
            detection: DetectionHeadConfig::new(
                [widths[2], widths[3], widths[4]],
                hidden,
                self.num_classes,
            ),
            segmentation: SegmentationHeadConfig::new(widths[2], widths[1], widths[2] / 2),
        }
    }

    /// A network with freshly drawn weights, every parameter drawn now.
    ///
    /// burn draws parameters lazily, at first use, and a clone of a module not yet used draws
    /// its own values: without this, a network recorded or copied before its first forward
    /// (replicas, the backend comparisons, EMA) would not be the network that then trains.
    pub fn init<B: Backend>(&self, device: &B::Device) -> PerceptionNet<B> {
        let parts = self.parts();
        PerceptionNet {
            backbone: parts.backbone.init(device),
            neck: parts.neck.init(device),
            detection_head: self.tasks.detection.then(|| parts.detection.init(device)),
            drivable_head: self.tasks.drivable.then(|| parts.segmentation.init(device)),
            lane_head: self.tasks.lanes.then(|| parts.segmentation.init(device)),
        }
        .map(&mut DrawParameters)
    }

    /// [`init`](Self::init) with the weights drawn from `seed`: the same seed, the same network.
    ///
    /// burn draws initial weights from the backend's process-wide RNG, so seeding and drawing
    /// happen under one process-wide lock: two networks initialised at once in one process
    /// (parallel tests, a bench beside a run) would otherwise interleave their draws.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> PerceptionNet<B> {
        static BACKEND_RNG: Mutex<()> = Mutex::new(());
        let _drawing = BACKEND_RNG
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        B::seed(device, seed);
        self.init(device)
    }

    /// Floating-point operations (2 per multiply-accumulate) of the convolutions for one image
    /// of `[height, width]`, in GFLOPs.
    pub fn gflops(&self, height: usize, width: usize) -> f64 {
        let parts = self.parts();
        let hw = [height, width];
        let mut macs = parts.backbone.macs(hw) + parts.neck.macs(hw);
        if self.tasks.detection {
            macs += parts.detection.macs(hw);
        }
        let seg_heads = self.tasks.drivable as u64 + self.tasks.lanes as u64;
        macs += seg_heads * parts.segmentation.macs(hw);
        2.0 * macs as f64 / 1e9
    }
}

/// Checks that an input size is usable: both sides positive multiples of 32.
pub fn check_input_size(height: usize, width: usize) -> Result<(), ModelError> {
    if height == 0 || width == 0 || !height.is_multiple_of(32) || !width.is_multiple_of(32) {
        return Err(ModelError::Config(format!(
            "input size {width}x{height} (width x height) is not usable: both sides must be \
             positive multiples of 32, e.g. 640x384 or 320x192"
        )));
    }
    Ok(())
}

impl<B: Backend> PerceptionNet<B> {
    /// Stops the gradients of the backbone's (and the neck's) parameters (burn's `no_grad`):
    /// autodiff tracks nothing in front of the first trainable layer, so a frozen backbone
    /// also saves its backward pass. Their batch-norm statistics are frozen separately, per
    /// forward pass ([`crate::batch_norm::freeze_norm_statistics`]).
    pub fn freeze(mut self, backbone: bool, neck: bool) -> Self {
        if backbone {
            self.backbone = self.backbone.no_grad();
        }
        if neck {
            self.neck = self.neck.no_grad();
        }
        self
    }

    /// Whether every batch norm still holds its initial running statistics (mean 0, variance
    /// 1): the network has never run on data in training mode.
    pub fn batch_norms_at_init(&self) -> bool {
        crate::params::param_values(self)
            .into_iter()
            .all(|(info, data)| {
                let initial = if info.path.ends_with("running_mean") {
                    0.0
                } else if info.path.ends_with("running_var") {
                    1.0
                } else {
                    return true;
                };
                data.convert::<f32>()
                    .to_vec::<f32>()
                    .is_ok_and(|v| v.iter().all(|x| *x == initial))
            })
    }

    /// `images: [batch, 3, height, width]` -> [`PerceptionOutput`].
    pub fn forward(&self, images: Tensor<B, 4>) -> PerceptionOutput<B> {
        let features = {
            let _part = enter_part(NetPart::Backbone);
            self.backbone.forward(images)
        };
        let neck = {
            let _part = enter_part(NetPart::Neck);
            self.neck.forward(&features)
        };
        let segment =
            |head: &SegmentationHead<B>| head.forward(neck.p3.clone(), features.s4.clone());
        PerceptionOutput {
            detection: self.detection_head.as_ref().map(|h| h.forward(&neck)),
            drivable: self.drivable_head.as_ref().map(segment),
            lanes: self.lane_head.as_ref().map(segment),
        }
    }
}

impl<B: Backend> PerceptionNet<B> {
    /// The network for inputs of `[height, width]` as an [`InferenceGraph`] (batch norm folded
    /// into the convolutions), for exporters.
    pub fn inference_graph(
        &self,
        height: usize,
        width: usize,
    ) -> Result<InferenceGraph, ModelError> {
        check_input_size(height, width)?;
        let mut g = GraphBuilder::new(height, width);
        let features = self.backbone.trace(&mut g, InferenceGraph::INPUT);
        let [p3, p4, p5] = self.neck.trace(&mut g, &features);
        let mut outputs = Vec::new();
        if let Some(head) = &self.detection_head {
            let [logits, boxes, distances] = head.trace(&mut g, [p3, p4, p5]);
            outputs.push((OutputKind::ClassLogits, logits));
            outputs.push((OutputKind::BoxLogits, boxes));
            outputs.push((OutputKind::Distances, distances));
        }
        if let Some(head) = &self.drivable_head {
            outputs.push((
                OutputKind::Drivable,
                head.trace(&mut g, "drivable_head", p3, features.s4),
            ));
        }
        if let Some(head) = &self.lane_head {
            outputs.push((
                OutputKind::Lanes,
                head.trace(&mut g, "lane_head", p3, features.s4),
            ));
        }
        Ok(g.finish(outputs, height, width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection_head::{anchor_points, REG_BINS};
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn output_shapes_for_several_input_sizes() {
        let device = Default::default();
        let net = PerceptionNetConfig::new(ModelSize::Nano, 5).init::<Flex>(&device);
        for (h, w) in [(64, 64), (96, 160), (192, 128)] {
            let out = net.forward(Tensor::zeros([2, 3, h, w], &device));
            let det = out.detection.unwrap();
            let anchors = anchor_points(h, w).len();
            assert_eq!(
                anchors,
                (h / 8) * (w / 8) + (h / 16) * (w / 16) + (h / 32) * (w / 32)
            );
            assert_eq!(det.class_logits.dims(), [2, anchors, 5]);
            assert_eq!(det.box_logits.dims(), [2, anchors, 4 * REG_BINS]);
            assert_eq!(det.distances.dims(), [2, anchors, 4]);
            assert_eq!(out.drivable.unwrap().dims(), [2, 1, h, w]);
            assert_eq!(out.lanes.unwrap().dims(), [2, 1, h, w]);
        }
    }

    /// A clone taken before the first forward is the same network (burn's lazy parameters
    /// would give the clone weights of its own).
    #[test]
    fn a_fresh_network_and_its_clone_are_the_same_network() {
        let device = Default::default();
        let net = PerceptionNetConfig::new(ModelSize::Nano, 3).init::<Flex>(&device);
        let copy = net.clone();
        let x = Tensor::<Flex, 4>::random([1, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let a = net.forward(x.clone()).drivable.unwrap().into_data();
        let b = copy.forward(x).drivable.unwrap().into_data();
        assert_eq!(a, b);
        // And a second network is a different draw.
        let other = PerceptionNetConfig::new(ModelSize::Nano, 3).init::<Flex>(&device);
        let x = Tensor::<Flex, 4>::ones([1, 3, 64, 64], &device);
        let c = other.forward(x.clone()).drivable.unwrap().into_data();
        assert_ne!(net.forward(x).drivable.unwrap().into_data(), c);
    }

    #[test]
    fn switched_off_tasks_have_no_head() {
        let device = Default::default();
        let mut config = PerceptionNetConfig::new(ModelSize::Nano, 3);
        let full = config.init::<Flex>(&device).num_params();
        config.tasks.lanes = false;
        config.tasks.detection = false;
        let net = config.init::<Flex>(&device);
        assert!(net.num_params() < full);
        let out = net.forward(Tensor::zeros([1, 3, 64, 64], &device));
        assert!(out.detection.is_none() && out.lanes.is_none());
        assert_eq!(out.drivable.unwrap().dims(), [1, 1, 64, 64]);
        config.tasks.drivable = false;
        assert!(config.validate().is_err());
    }

    #[test]
    fn sizes_match_the_documented_table() {
        // The table in the crate docs (lib.rs): parameters (7 classes) and GFLOPs @ 640x384.
        let device = Default::default();
        let expected = [
            (ModelSize::Nano, 3.08, 6.27),
            (ModelSize::Small, 6.91, 14.04),
            (ModelSize::Medium, 12.62, 23.97),
        ];
        for (size, params_m, gflops) in expected {
            let config = PerceptionNetConfig::new(size, 7);
            let p = config.init::<Flex>(&device).num_params() as f64 / 1e6;
            let g = config.gflops(384, 640);
            assert!((p - params_m).abs() < 0.006, "{}: {p:.3} M", size.name());
            assert!((g - gflops).abs() < 0.006, "{}: {g:.3} GFLOPs", size.name());
        }
    }

    #[test]
    fn input_size_must_be_multiple_of_32() {
        assert!(check_input_size(384, 640).is_ok());
        let e = check_input_size(380, 640).unwrap_err().to_string();
        assert!(
            e.contains("640x380") && e.contains("multiples of 32"),
            "{e}"
        );
    }
}
