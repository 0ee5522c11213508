//! `percept-model`: the multi-task perception network of percept.
//!
//! One network, three tasks: multi-class 2D detection, drivable-area segmentation and
//! lane-line segmentation, in the spirit of YOLOP/HybridNets with a YOLOv8-style body.
//!
//! ```text
//! image [b, 3, h, w]
//!   -> Backbone (stem + 4 CSP stages + SPPF)       strides 4, 8, 16, 32
//!   -> Neck (FPN top-down + PAN bottom-up)          strides 8, 16, 32
//!   -> DetectionHead (anchor-free, decoupled)       [b, anchors, classes] + [b, anchors, 4 x 16]
//!   -> SegmentationHead x2 (stride 8 -> 1, with a stride-4 skip)
//!                                                  drivable [b, 1, h, w], lanes [b, 1, h, w]
//! ```
//!
//! Input sides must be multiples of 32. The default input is 640x384 (width x height).
//!
//! ## Sizes
//!
//! Width/depth multipliers over channels `[64, 128, 256, 512, 1024]` and depths `[3, 6, 6, 3]`.
//! Parameters with 7 classes (the synthetic set; 10 classes adds a few hundred), all three
//! heads; GFLOPs (2 x multiply-accumulates of the convolutions) per image. Both are computed by
//! `percept info` (and checked by this crate's tests):
//!
//! | size   | width x depth | parameters | GFLOPs @ 640x384 | GFLOPs @ 320x192 |
//! |--------|---------------|-----------:|-----------------:|-----------------:|
//! | nano   | 0.25 x 0.34   |     3.08 M |             6.27 |             1.57 |
//! | small  | 0.375 x 0.34  |     6.91 M |            14.04 |             3.51 |
//! | medium | 0.4375 x 0.67 |    12.62 M |            23.97 |             5.99 |
//!
//! For scale: YOLOP has 7.9 M parameters, HybridNets 12.8 M: `nano` is well under YOLOP,
//! `small` a little under it, `medium` about HybridNets.
//!
//! ## Detection
//!
//! Anchor points are the cell centres of the three levels ([`anchor_points`]). The head predicts
//! per-class logits (sigmoid, multi-label) and, per box edge, a distribution over
//! [`REG_BINS`] distances whose mean is the edge's distance. Targets are assigned by
//! [`assign_targets`] (task-aligned assignment ranked by the network's own predictions; see
//! [`assign`]); losses (quality-aware BCE, CIoU, distribution focal loss) are in [`loss`];
//! decoding and class-aware NMS (burn-vision) in [`decode`]. This is YOLOv8's detection
//! recipe; `benches/ultralytics/` compares the two side by side.

pub mod assign;
pub mod backbone;
pub mod batch_norm;
pub mod calibration;
pub mod conv2d;
pub mod conv_block;
pub mod conv_kernels;
pub mod csp_block;
pub mod decode;
pub mod dense;
pub mod detection_head;
pub mod distill;
#[cfg(feature = "flex")]
mod flex_backend;
pub mod im2col;
pub mod inference_graph;
pub mod loss;
pub mod neck;
pub mod network;
pub mod params;
pub mod precision;
pub mod segmentation_head;
pub mod sppf;

pub use assign::{assign_targets, DetectionTargets, ImageTargets, Predictions, TargetBox};
pub use batch_norm::{freeze_norm_statistics, FrozenNorms};
pub use calibration::{ActivationRanges, Calibrator, RangeMethod};
pub use conv_kernels::{use_conv_kernels, ConvKernels};
pub use decode::{decode_detections, DecodeOptions, ScoredBox};
pub use detection_head::{anchor_points, AnchorPoint, DetectionOutput, REG_BINS, STRIDES};
pub use distill::{distillation_loss, DistillationParts};
pub use inference_graph::{FoldedConv, InferenceGraph, Node, Op, OutputKind, ValueId};
pub use loss::{multitask_loss, LossParts, LossWeights, SegmentationTargets};
pub use network::{
    check_input_size, ModelSize, PerceptionModel, PerceptionNet, PerceptionNetConfig,
    PerceptionOutput, Tasks,
};
pub use precision::{autocast, Precision};

/// Errors of model configuration.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{0}")]
    Config(String),
}
